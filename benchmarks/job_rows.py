"""Migration and rewrap rows for the throughput benchmark: rows/s and peak RSS, one process.

Each measurement runs in a fresh child process (``spawn``) that migrates a table of legacy
env-key envelopes to ``kms_v1`` through OpenBao, rotates the key, rewraps every value, and
reports its rates and its own peak resident set (``VmHWM``). The table is filled beforehand by
the parent, streamed in chunks, so the child's peak is the jobs' alone (plus the interpreter
and its imports). Used by ``benchmarks/throughput_bench.py``.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from heimdall_kms.audit import open_sink
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import EncryptionMode, Settings
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobReport
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from heimdall_kms.testing import TRANSIT_KEY, CountingSession

__all__ = ["JobRates", "fill_postgres", "fill_sqlite", "measure_jobs"]

TABLE = "heimdall_bench_jobs"  # not `bench`: other benchmarks may share the database
_CHUNK = 10_000


@dataclass(frozen=True)
class JobRates:
    store: str
    rows: int
    migrate: float  # rows/s
    rewrap: float  # rows/s
    http_per_row: float
    peak_rss_mib: float
    # encrypt_many of 2,000 values, batch per call, in the same process around the jobs: the
    # jobs' ratios are taken against it, since a shared machine drifts between the rows.
    encrypt_many: float


def legacy_chunks(settings: Settings, rows: int, workdir: Path) -> Iterator[list[str]]:
    """Legacy env-key envelopes of ``f"{i:09d}"``, ``_CHUNK`` at a time."""
    legacy = Settings(
        mode=EncryptionMode.LEGACY,
        legacy_keys=settings.legacy_keys,
        audit_log=str(workdir / "seed-audit.log"),
    )
    with Crypto(legacy, kms=None, audit=open_sink(legacy.audit_log)) as crypto:
        for start in range(0, rows, _CHUNK):
            stop = min(rows, start + _CHUNK)
            sealed = crypto.encrypt_many((f"{i:09d}", {}) for i in range(start, stop))
            yield [e.to_json() for e in sealed]


def fill_sqlite(path: Path, settings: Settings, rows: int, workdir: Path) -> str:
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, ssn TEXT)")
        row_id = 0
        for chunk in legacy_chunks(settings, rows, workdir):
            db.executemany(
                f"INSERT INTO {TABLE} VALUES (?, ?)",
                enumerate(chunk, row_id + 1),
            )
            row_id += len(chunk)
    return f"sqlite:///{path}"


def fill_postgres(url: str, settings: Settings, rows: int, workdir: Path) -> str | None:
    """The table on PostgreSQL (dropped first, with its journal rows); None if unreachable."""
    import psycopg  # noqa: PLC0415 - the postgres extra, only for this row

    try:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {TABLE}")
            db.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, ssn TEXT)")
            if db.execute("SELECT to_regclass('heimdall_kms_journal')").fetchone()[0]:
                db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [TABLE])
            row_id = 0
            with db.cursor().copy(f"COPY {TABLE} (id, ssn) FROM STDIN") as copy:
                for chunk in legacy_chunks(settings, rows, workdir):
                    for value in chunk:
                        row_id += 1
                        copy.write_row((row_id, value))
    except psycopg.OperationalError as exc:
        print(f"(PostgreSQL rows skipped: {str(exc).splitlines()[0]})")
        return None
    return url


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _child(
    env: dict[str, str], url: str, rows: int, batch: int, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-jobs-"))
    settings = Settings.from_env({**env, "HMD_AUDIT_LOG": str(workdir / "audit.log")})
    session = CountingSession()
    import hvac  # noqa: PLC0415

    client = hvac.Client(url=env["HMD_VAULT_ADDR"], token=env["HMD_VAULT_TOKEN"], session=session)
    kms = VaultTransitProvider(client, TRANSIT_KEY, batch_size=batch)
    audit = FileAuditSink(workdir / "audit.log")
    store = open_store(url, Target(TABLE, "ssn"))
    with Crypto(settings, kms=kms, audit=audit, default_actor="bench") as crypto:

        def rate(job: str, run: Callable[[], JobReport]) -> float:
            started = time.perf_counter()
            report = run()
            seconds = time.perf_counter() - started
            if report.stop_error is not None or report.totals.completed != rows:
                raise AssertionError(f"{job} did not complete: {report.stop_error}")
            return rows / seconds

        options = MigrationOptions(batch_size=batch)
        sealing = [encrypt_many_rate(crypto, batch)]
        sent = session.requests
        migrate = rate("migrate", lambda: run_migration(crypto, [store], options))
        sent = session.requests - sent
        kms.rotate()
        sealing.append(encrypt_many_rate(crypto, batch))
        sent -= session.requests
        rewrap = rate(
            "rewrap", lambda: run_reencrypt(crypto, [store], ReencryptOptions(batch_size=batch))
        )
        sent += session.requests
        sealing.append(encrypt_many_rate(crypto, batch))
    store.close()
    out.put((migrate, rewrap, sent / (2 * rows), _peak_rss_mib(), sorted(sealing)[1]))


def encrypt_many_rate(crypto: Crypto, batch: int, values: int = 2000, passes: int = 3) -> float:
    """values/s of encrypt_many, ``batch`` values per call (the median of ``passes``)."""
    items = [
        (f"{i:09d}", {"table": "bench", "field": "ssn", "record": str(i)}) for i in range(values)
    ]
    chunks = [items[i : i + batch] for i in range(0, values, batch)]
    crypto.encrypt_many(chunks[0][:1])
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        for chunk in chunks:
            crypto.encrypt_many(chunk)
        seconds.append(time.perf_counter() - started)
    return values / sorted(seconds)[passes // 2]


def measure_jobs(name: str, env: dict[str, str], url: str, rows: int, batch: int) -> JobRates:
    """Migrate then rewrap the filled table in a fresh process; its rates and peak RSS."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    child = context.Process(target=_child, args=(env, url, rows, batch, out))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise AssertionError(f"{name}: the job process failed (exit {child.exitcode})")
    migrate, rewrap, http_per_row, rss, sealing = out.get(timeout=10)
    return JobRates(name, rows, migrate, rewrap, http_per_row, rss, sealing)
