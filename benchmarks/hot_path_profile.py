"""Where the µs per value go: encrypt_many/decrypt_many against the raw batched wrap, and the
parts of a migration and a rewrap. Starts its own OpenBao dev server. Three commands:

    # a loop of 2,000-value passes (250 per call) for py-spy to sample, then its table:
    py-spy record --idle -r 400 -f raw -o enc.raw -- \\
        python benchmarks/hot_path_profile.py loop encrypt_many 15 > enc.raw.out
    python benchmarks/hot_path_profile.py parts enc.raw encrypt_many  # or decrypt_many, raw ...

    # wall time per part of migrate and rewrap (each part's functions timed, in one process):
    python benchmarks/hot_path_profile.py jobs [--rows 20000] [--postgres-url URL]

``loop`` prints its wall µs per value at the end; ``parts`` reads it from the sampled run's
output file ``<raw>.out`` if ``loop`` wrote one (``--us`` otherwise). With ``--idle``, samples
waiting on a socket or a disk sync count too, so the parts add up to the wall time. Numbers
depend on the machine and on what else runs on it; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from job_rows import TABLE, fill_postgres, fill_sqlite

from heimdall_kms import primitives
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.jobs import batch_job, migrate, reencrypt, value_job
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, _sql, open_store
from heimdall_kms.testing import TRANSIT_KEY, start_openbao

VALUES, BATCH = 2000, 250
ROOTS = {  # the function whose samples are the row's
    "encrypt_many": "Crypto.encrypt_many",
    "decrypt_many": "Crypto.decrypt_many",
    "raw": "raw_wrap",
    "raw_unwrap": "raw_unwrap",
}
# Checked from the innermost frame outwards; the first part that names a frame takes it.
PARTS = [
    ("audit: fdatasync, flock, fstat (syscalls)", r"^FileAuditSink\.\w+ \(heimdall_kms/audit/sink"),
    ("deadline timer", r"heimdall_kms/providers/deadline\.py"),
    ("waiting for OpenBao (socket read)", r"SocketIO\.readinto|recv_into"),
    ("audit: line JSON + SHA-256 chain", r"heimdall_kms/audit/lines\.py|audit/chain\.py"),
    ("audit: event objects", r"audit_scope\.py|crypto_events\.py|audit/events\.py"),
    ("audit: write, lock, checkpoint", r"heimdall_kms/audit/"),
    ("metrics", r"prometheus_client|heimdall_kms/metrics\.py"),
    ("Vault request/response JSON", r"json/(encoder|decoder)\.py|JSONDecoder|JSONEncoder"),
    ("HTTP client (requests, urllib3, http.client)", r"requests/|urllib3/|http/client\.py|socket"),
    ("AES-GCM seal/open", r"^(seal_each|open_each|open_|seal)\b.*primitives\.py"),
    ("DEKs and nonces", r"new_deks?\b|urandom"),
    ("envelope objects", r"heimdall_kms/envelope/"),
    ("context/plaintext checks, AAD encoding", r"inputs\.py|context_json\.py|envelope/context"),
    ("base64", r"base64\.py"),
]


def items() -> list[tuple[str, dict[str, str]]]:
    return [
        (f"{i:09d}", {"table": "bench", "field": "ssn", "record": str(i)}) for i in range(VALUES)
    ]


def chunks() -> list[list[tuple[str, dict[str, str]]]]:
    values = items()
    return [values[i : i + BATCH] for i in range(0, VALUES, BATCH)]


def loop(row: str, seconds: float) -> None:
    """Run one row's passes for ``seconds`` (for py-spy); print wall µs per value."""
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-profile-"))
    vault = start_openbao()
    try:
        settings = Settings.from_env(vault.env(HMD_AUDIT_LOG=str(workdir / "audit.log")))
        kms = VaultTransitProvider(vault.client(), TRANSIT_KEY, batch_size=BATCH)
        crypto = Crypto(
            settings, kms=kms, audit=FileAuditSink(workdir / "audit.log"), default_actor="b"
        )
        transit = vault.client().secrets.transit
        passes: dict[str, Callable[[], object]] = {}
        sealed = [crypto.encrypt_many(chunk) for chunk in chunks()]
        wrapped = [raw_wrap(transit, chunk) for chunk in chunks()]
        passes["encrypt_many"] = lambda: [crypto.encrypt_many(chunk) for chunk in chunks()]
        passes["decrypt_many"] = lambda: [
            crypto.decrypt_many(envs, actor="b", reason="profile") for envs in sealed
        ]
        passes["raw"] = lambda: [raw_wrap(transit, chunk) for chunk in chunks()]
        passes["raw_unwrap"] = lambda: [raw_unwrap(transit, w) for w in wrapped]
        run = passes[row]
        run()
        done, started, cpu = 0, time.perf_counter(), time.process_time()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            run()
            done += VALUES
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(f"{wall / done * 1e6:.2f} us/value wall, {cpu / done * 1e6:.2f} us/value CPU")
    finally:
        vault.stop()


def raw_wrap(transit: Any, chunk: list[tuple[str, dict[str, str]]]) -> list[Any]:
    """The raw batched wrap row of throughput_bench: local DEKs, AES-GCM, one batch_input."""
    import base64  # noqa: PLC0415

    deks = [primitives.new_dek() for _ in chunk]
    try:
        body = [{"plaintext": base64.b64encode(d).decode("ascii")} for d in deks]
        answer = transit.encrypt_data(TRANSIT_KEY, None, batch_input=body)
        keys = [r["ciphertext"] for r in answer["data"]["batch_results"]]
        return [
            (k, *primitives.seal(d, text.encode(), b""))
            for k, d, (text, _) in zip(keys, deks, chunk, strict=True)
        ]
    finally:
        for dek in deks:
            primitives.wipe(dek)


def raw_unwrap(transit: Any, sealed: list[Any]) -> list[str]:
    import base64  # noqa: PLC0415

    body = [{"ciphertext": k} for k, _, _ in sealed]
    answer = transit.decrypt_data(TRANSIT_KEY, None, batch_input=body)
    out = []
    for result, (_, ct, nonce) in zip(answer["data"]["batch_results"], sealed, strict=True):
        dek = bytearray(base64.b64decode(result["plaintext"]))
        out.append(primitives.open_(dek, nonce, ct, b"").decode())
        primitives.wipe(dek)
    return out


def parts(raw: Path, row: str, us: float) -> None:
    """The table of one py-spy raw file: µs per value and share of each part."""
    root = ROOTS[row]
    totals: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not any(root in frame for frame in frames):
            continue
        totals[_part(frames)] += int(count)
    samples = sum(totals.values())
    print(f"{row}: {samples} samples, {us:.2f} us/value wall")
    print(f"{'part':<52}{'us/value':>9}{'share':>8}")
    for name, count in totals.most_common():
        print(f"{name:<52}{us * count / samples:>9.2f}{100 * count / samples:>7.1f}%")


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in PARTS:
            if re.search(pattern, frame):
                return name
    return "other (facade and provider glue, thread hand-off)"


class Timers:
    """Wall time per wrapped function (the outer one counts its inner ones too)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter[str] = collections.Counter()

    def wrap(self, owner: Any, name: str, label: str | None = None) -> None:
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label or name] += time.perf_counter() - started

        setattr(owner, name, timed)


def timed_parts() -> Timers:
    """Wrap the parts of a job's batch in timers (this process only)."""
    timers = Timers()
    for owner, name in [
        (Crypto, "encrypt_many"),
        (Crypto, "decrypt_outcomes"),
        (Crypto, "rewrap_outcomes"),
        (FileAuditSink, "emit"),
        (FileAuditSink, "sync_deferred"),
        (_sql.SQLFieldStore, "_fetch"),
        (_sql.SQLFieldStore, "_missed"),
        (_sql.SQLFieldStore, "apply_swaps"),
        (batch_job.BatchJob, "_batch"),
        (migrate.MigrationJob, "convert"),
        (reencrypt.ReencryptJob, "convert"),
    ]:
        timers.wrap(owner, name)
    reader = value_job.reader_for

    def timed_reader(store: Any) -> Any:
        classify = reader(store)

        def timed(value: str | None) -> Any:
            started = time.perf_counter()
            try:
                return classify(value)
            finally:
                timers.seconds["classify"] += time.perf_counter() - started

        return timed

    value_job.reader_for = timed_reader  # type: ignore[assignment]
    return timers


def jobs(rows: int, postgres_url: str) -> None:
    timers = timed_parts()
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-profile-"))
    vault = start_openbao()
    try:
        env = vault.env(
            HMD_ENCRYPTION_MODE="hybrid",
            HMD_PII_MASTER_KEY=bytes(primitives.new_dek()).hex(),
            HMD_AUDIT_LOG=str(workdir / "audit.log"),
        )
        settings = Settings.from_env(env)
        kms = VaultTransitProvider(vault.client(), TRANSIT_KEY, batch_size=BATCH)
        crypto = Crypto(
            settings, kms=kms, audit=FileAuditSink(workdir / "audit.log"), default_actor="b"
        )
        for chunk in chunks():
            crypto.encrypt_many(chunk)
        timers.seconds.clear()
        started = time.perf_counter()
        for _ in range(5):
            for chunk in chunks():
                crypto.encrypt_many(chunk)
        per_value = (time.perf_counter() - started) / (5 * VALUES) * 1e6
        print(f"encrypt_many, {BATCH} per call: {per_value:.1f} us/value wall")
        urls = {"SQLite": fill_sqlite(workdir / "jobs.db", settings, rows, workdir)}
        if postgres_url:
            found = fill_postgres(postgres_url, settings, rows, workdir)
            if found is not None:
                urls["PostgreSQL"] = found
        for store_name, url in urls.items():
            store = open_store(url, Target(TABLE, "ssn"))
            options = MigrationOptions(batch_size=BATCH)
            one_job(
                timers,
                f"migrate on {store_name}",
                rows,
                functools.partial(run_migration, crypto, [store], options),
            )
            kms.rotate()
            again = ReencryptOptions(batch_size=BATCH)
            one_job(
                timers,
                f"rewrap on {store_name}",
                rows,
                functools.partial(run_reencrypt, crypto, [store], again),
            )
            store.close()
    finally:
        vault.stop()


def one_job(timers: Timers, name: str, rows: int, run: Callable[[], Any]) -> None:
    timers.seconds.clear()
    started = time.perf_counter()
    report = run()
    wall = (time.perf_counter() - started) / rows * 1e6
    if report.totals.completed != rows:
        raise AssertionError(f"{name} did not complete: {report.stop_error}")
    print(f"\n{name}, {rows:,} rows: {wall:.1f} us/row wall")
    for part, seconds in timers.seconds.most_common():
        print(f"  {part:<22}{seconds / rows * 1e6:>8.1f} us/row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("loop")
    one.add_argument("row", choices=sorted(ROOTS))
    one.add_argument("seconds", type=float)
    table = commands.add_parser("parts")
    table.add_argument("raw", type=Path)
    table.add_argument("row", choices=sorted(ROOTS))
    table.add_argument("--us", type=float, help="wall µs per value of the sampled run")
    job = commands.add_parser("jobs")
    job.add_argument("--rows", type=int, default=20_000)
    job.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.command == "loop":
        loop(args.row, args.seconds)
    elif args.command == "parts":
        out = args.raw.with_name(args.raw.name + ".out")
        us = args.us
        found = re.search(r"([\d.]+) us/value wall", out.read_text()) if out.exists() else None
        if us is None and found is not None:
            us = float(found.group(1))
        if us is None:
            sys.exit(f"give --us: no {out} with the sampled run's µs per value")
        parts(args.raw, args.row, us)
    else:
        jobs(args.rows, args.postgres_url)


if __name__ == "__main__":
    main()
