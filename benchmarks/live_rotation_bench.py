"""Rotation under live load: rotate, rewrap and retire while traffic runs, against OpenBao.

Starts its own OpenBao dev server, bootstraps the least-privilege roles
(`heimdall-kms vault bootstrap`), seals a SQLite table of values with the app role, and then
runs, concurrently:

* app threads — each with its own ``Crypto`` (AppRole ``app``) — encrypting a fresh value and
  decrypting it again, checking every answer;
* worker threads — each with its own ``Crypto`` (AppRole ``worker``) — decrypting random
  stored rows and checking each against the value that was sealed;

while the admin role (its own ``Crypto``) rotates the key, re-wraps the whole table
(``run_reencrypt --mode rewrap``) and retires the old version. It prints p50/p99 latency of the
traffic before, during and after, and the number of failed or wrong operations (must be 0).
Run from the repository root:

    python benchmarks/live_rotation_bench.py [--rows 20000] [--app-threads 4] [--worker-threads 4]

Before retiring, the admin waits ``--grace`` seconds after the rewrap: a reader that fetched a
row just before its rewrap committed still decrypts the old version for that long. In
production the gap between rewrap and retire is hours or days.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError, KeyVersionRetiredError
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.providers.vault.bootstrap import BootstrapOptions, apply, plan
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from heimdall_kms.testing import TRANSIT_KEY, OpenBao, start_openbao

TABLE, COLUMN = "customers", "ssn"
PHASES = ("before", "during", "after")


def ssn(row: int) -> str:
    return f"{row % 900 + 100:03d}-{row % 90 + 10:02d}-{row:04d}"


def context(row: int) -> dict[str, str]:
    return {"table": TABLE, "field": COLUMN, "record": str(row)}


def role_env(server: OpenBao, role: str) -> dict[str, str]:
    """kms mode through the role's real AppRole login, as a deployment of that role runs."""
    root = server.client()
    name = f"heimdall-kms-{role}"
    return server.env(
        HMD_VAULT_AUTH_METHOD="approle",
        HMD_VAULT_ROLE_ID=root.auth.approle.read_role_id(name)["data"]["role_id"],
        HMD_VAULT_SECRET_ID=root.auth.approle.generate_secret_id(name)["data"]["secret_id"],
        HMD_VAULT_TOKEN="",
    )


@dataclass
class Traffic:
    """Shared state of the traffic threads; every operation is timed and checked."""

    app_env: dict[str, str]
    worker_env: dict[str, str]
    db: Path
    rows: int
    phase: str = "before"
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: dict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: list[str] = field(default_factory=list)
    audited: int = 0

    def record(self, op: str, seconds: float) -> None:
        with self.lock:
            self.samples[(self.phase, op)].append(seconds)

    def fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(f"{self.phase}: {what}")

    def app(self, number: int) -> None:
        sink = MemoryAuditSink()
        with heimdall_kms.from_env(self.app_env, audit=sink, default_actor=f"app-{number}") as c:
            sent = 0
            while not self.stop.is_set():
                sent += 1
                value, ctx = f"live-{number}-{sent}", {"field": "ssn", "record": f"{number}-{sent}"}
                try:
                    started = time.perf_counter()
                    envelope = c.encrypt(value, context=ctx)
                    sealed = time.perf_counter()
                    back = c.decrypt(envelope, actor=f"app-{number}", reason="live", context=ctx)
                    self.record("encrypt", sealed - started)
                    self.record("decrypt", time.perf_counter() - sealed)
                except HeimdallKMSError as exc:
                    self.fail(f"app {type(exc).__name__}: {exc}")
                    continue
                if back != value:
                    self.fail("app decrypt returned another value")
            self._audited(len(sink.events))

    def worker(self, number: int) -> None:
        sink = MemoryAuditSink()
        pick = random.Random(number)  # choosing rows to read, not keys
        db = sqlite3.connect(self.db, timeout=30)
        with heimdall_kms.from_env(self.worker_env, audit=sink) as c:
            while not self.stop.is_set():
                row = pick.randint(1, self.rows)
                (stored,) = db.execute(
                    f"SELECT {COLUMN} FROM {TABLE} WHERE id = ?", (row,)
                ).fetchone()
                try:
                    started = time.perf_counter()
                    text = c.decrypt(
                        stored, actor=f"worker-{number}", reason="live", context=context(row)
                    )
                    self.record("decrypt", time.perf_counter() - started)
                except HeimdallKMSError as exc:
                    self.fail(f"worker row {row} {type(exc).__name__}: {exc}")
                    continue
                if text != ssn(row):
                    self.fail(f"worker row {row} decrypted to another value")
            self._audited(len(sink.events))
        db.close()

    def _audited(self, count: int) -> None:
        with self.lock:
            self.audited += count


@dataclass
class LiveResult:
    latency: dict[tuple[str, str], tuple[int, float, float]]  # (phase, op) -> (n, p50, p99) ms
    failures: list[str]
    steps: dict[str, float]  # rotate / rewrap / retire -> seconds
    versions: tuple[int, int]  # (old, new)
    rewrapped: int
    operations: int
    audited: int


def seed(server: OpenBao, db: Path, rows: int) -> list[str]:
    """The table, sealed by the app role under the current (old) version."""
    with heimdall_kms.from_env(role_env(server, "app"), audit=MemoryAuditSink()) as c:
        envelopes = c.encrypt_many((ssn(i), context(i)) for i in range(1, rows + 1))
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, {COLUMN} TEXT)")
        conn.executemany(
            f"INSERT INTO {TABLE} VALUES (?, ?)",
            ((i + 1, e.to_json()) for i, e in enumerate(envelopes)),
        )
    return [e.to_json() for e in envelopes[:10]]


def lifecycle(
    server: OpenBao, db: Path, *, batch_size: int, grace: float
) -> tuple[dict[str, float], tuple[int, int], int]:
    """Rotate, rewrap every stored value, retire the old version: all as the admin role."""
    env = role_env(server, "admin")
    audit = MemoryAuditSink()
    kms = load_provider(Settings.from_env(env))
    store = open_store(f"sqlite:///{db}", Target(TABLE, COLUMN))
    steps: dict[str, float] = {}
    try:
        started = time.perf_counter()
        rotated = rotate(kms, audit, actor="live-bench", if_due=False, cadence=timedelta(days=90))
        steps["rotate"] = time.perf_counter() - started
        started = time.perf_counter()
        with Crypto(Settings.from_env(env), kms=kms, audit=audit) as admin:
            report = run_reencrypt(
                admin, [store], ReencryptOptions(mode=ReencryptMode.REWRAP, batch_size=batch_size)
            )
            if report.stop_error is not None:
                raise report.stop_error
            steps["rewrap"] = time.perf_counter() - started
            time.sleep(grace)
            started = time.perf_counter()
            retire(kms, [store], audit, below_version=rotated.new_version, actor="live-bench")
            steps["retire"] = time.perf_counter() - started
    finally:
        store.close()
    if report.failure_count:
        raise RuntimeError(f"rewrap failed for {report.failure_count} rows")
    return steps, (rotated.old_version, rotated.new_version), report.totals.completed


def run_live_rotation(
    server: OpenBao,
    workdir: Path,
    *,
    rows: int = 2000,
    app_threads: int = 4,
    worker_threads: int = 2,
    before: float = 2.0,
    after: float = 2.0,
    batch_size: int = 250,
    grace: float = 0.5,
) -> LiveResult:
    """Bootstrap, seed, run the traffic, and rotate/rewrap/retire in the middle of it."""
    root = server.client()
    apply(root, plan(root, BootstrapOptions(key=TRANSIT_KEY)))
    db = workdir / "live.db"
    old_values = seed(server, db, rows)
    traffic = Traffic(role_env(server, "app"), role_env(server, "worker"), db, rows)
    threads = [threading.Thread(target=traffic.app, args=(i,)) for i in range(app_threads)]
    threads += [threading.Thread(target=traffic.worker, args=(i,)) for i in range(worker_threads)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(before)
        traffic.phase = "during"
        steps, versions, rewrapped = lifecycle(server, db, batch_size=batch_size, grace=grace)
        traffic.phase = "after"
        time.sleep(after)
    finally:
        traffic.stop.set()
        for thread in threads:
            thread.join()
    _check_old_version_is_retired(server, old_values, traffic)
    latency = {}
    for key, values in traffic.samples.items():
        ms = sorted(v * 1000 for v in values)
        latency[key] = (len(ms), statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.99))])
    operations = sum(len(v) for v in traffic.samples.values())
    return LiveResult(
        latency, traffic.failures, steps, versions, rewrapped, operations, traffic.audited
    )


def _check_old_version_is_retired(server: OpenBao, old: list[str], traffic: Traffic) -> None:
    with heimdall_kms.from_env(role_env(server, "app"), audit=MemoryAuditSink()) as c:
        outcomes = c.decrypt_outcomes(old, actor="bench", reason="retired?")
    if not all(isinstance(o, KeyVersionRetiredError) for o in outcomes):
        traffic.fail("a value wrapped under the retired version still decrypted")


def print_result(result: LiveResult) -> None:
    print(f"{'phase':<8}{'op':<9}{'ops':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for phase in PHASES:
        for op in ("encrypt", "decrypt"):
            n, p50, p99 = result.latency.get((phase, op), (0, float("nan"), float("nan")))
            print(f"{phase:<8}{op:<9}{n:>7}{p50:>9.1f}{p99:>9.1f}")
    old, new = result.versions
    rotate_ms, retire_ms = result.steps["rotate"] * 1000, result.steps["retire"] * 1000
    print(
        f"rotate v{old}->v{new} {rotate_ms:.0f} ms; rewrap {result.rewrapped} rows "
        f"{result.steps['rewrap']:.2f} s; retire below v{new} {retire_ms:.0f} ms"
    )
    print(f"operations {result.operations}, audit events {result.audited}")
    print(f"failed or wrong operations: {len(result.failures)}")
    for failure in result.failures[:20]:
        print(f"  {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--app-threads", type=int, default=4)
    parser.add_argument("--worker-threads", type=int, default=4)
    parser.add_argument("--before", type=float, default=5.0, help="seconds of traffic before")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of traffic after")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument(
        "--grace", type=float, default=0.5, help="seconds between rewrap and retire"
    )
    args = parser.parse_args()
    server = start_openbao()
    try:
        result = run_live_rotation(
            server,
            Path(tempfile.mkdtemp(prefix="heimdall-live-")),
            rows=args.rows,
            app_threads=args.app_threads,
            worker_threads=args.worker_threads,
            before=args.before,
            after=args.after,
            batch_size=args.batch_size,
            grace=args.grace,
        )
    finally:
        server.stop()
    print_result(result)
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
