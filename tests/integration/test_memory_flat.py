"""The migration worker's memory stays flat as the input grows.

The worker reads, converts and writes one batch at a time, so its Python heap peak is set by
the batch size, not by the number of rows. Migrating 4x as many rows must not move the peak
by more than 1.5x; a worker that held every row, DEK or envelope of the run would need ~4x.
Measured with ``tracemalloc`` (Python allocations only), on SQLite with the local provider.
"""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import heimdall_kms
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import Target, open_store
from tests.legacy_data import legacy_envelope

MASTER_HEX = "ab" * 32
TABLE = "customers"
BATCH = 250
SMALL, LARGE = 2_000, 8_000
MAX_GROWTH = 1.5  # peak(LARGE) / peak(SMALL); a worker holding the whole run would be ~4x


def plaintext(i: int) -> str:
    return f"{i:03d}-12-{i % 10000:04d}"


@dataclass
class Run:
    rows: int
    peak: int  # bytes of Python heap, highest point during run_migration
    completed: int
    failures: int
    db: Path
    workdir: Path


def settings_for(workdir: Path) -> Settings:
    LocalKeyring(workdir / "keyring.json").ensure_key("heimdall-pii")
    return Settings.from_env(
        {
            "HMD_ENCRYPTION_MODE": "hybrid",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(workdir / "keyring.json"),
            "HMD_PII_MASTER_KEY": MASTER_HEX,
        }
    )


def fill_sqlite(db: Path, rows: int) -> None:
    """``customers (id, ssn)`` with ``rows`` legacy env-key envelopes (pycryptodome-made)."""
    with sqlite3.connect(db) as connection:
        connection.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, ssn TEXT)")
        connection.executemany(
            f"INSERT INTO {TABLE} VALUES (?, ?)",
            ((i, legacy_envelope(MASTER_HEX, plaintext(i))) for i in range(1, rows + 1)),
        )
    connection.close()


def measured_migration(workdir: Path, rows: int) -> Run:
    """Fill a table, build the Crypto, then trace only the migration itself."""
    workdir.mkdir()
    db = workdir / "app.db"
    fill_sqlite(db, rows)
    settings = settings_for(workdir)
    crypto = heimdall_kms.from_settings(
        settings, audit=FileAuditSink(workdir / "audit.log"), default_actor="memory-test"
    )
    store = open_store(f"sqlite:///{db}", Target(TABLE, "ssn"))
    try:
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            report = run_migration(crypto, [store], MigrationOptions(batch_size=BATCH))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
        crypto.close()
    if report.stop_error is not None:
        raise report.stop_error
    return Run(rows, peak, report.totals.completed, report.failure_count, db, workdir)


def assert_all_migrated(run: Run) -> None:
    with sqlite3.connect(run.db) as connection:
        stored = dict(connection.execute(f"SELECT id, ssn FROM {TABLE} ORDER BY id").fetchall())
    connection.close()
    assert sorted(stored) == list(range(1, run.rows + 1))
    for row_id, value in stored.items():
        envelope = parse(value)
        assert isinstance(envelope, KmsV1Envelope), row_id
        assert envelope.context == {"table": TABLE, "field": "ssn", "record": str(row_id)}
    # Spot-check the content at both ends of the table, through a kms-only Crypto.
    kms_only = Settings.from_env(
        {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(run.workdir / "keyring.json"),
        }
    )
    audit = FileAuditSink(run.workdir / "verify-audit.log")
    with heimdall_kms.from_settings(kms_only, audit=audit) as crypto:
        for row_id in (1, run.rows // 2, run.rows):
            opened = crypto.decrypt(
                stored[row_id], actor="t", reason="verify", context={"record": str(row_id)}
            )
            assert opened == plaintext(row_id)


def test_migration_memory_stays_flat_as_input_grows(tmp_path: Path) -> None:
    # Warm-up: first-use imports, caches and the like must not inflate the SMALL measurement
    # (which would make the ratio look flatter than it is).
    measured_migration(tmp_path / "warmup", 2 * BATCH + 10)

    small = measured_migration(tmp_path / "small", SMALL)
    large = measured_migration(tmp_path / "large", LARGE)
    ratio = large.peak / small.peak
    print(
        f"\ntracemalloc peak during migrate, batch {BATCH}: "
        f"{SMALL:,} rows {small.peak / 1024:,.0f} KiB, "
        f"{LARGE:,} rows {large.peak / 1024:,.0f} KiB, ratio {ratio:.2f}"
    )

    for run in (small, large):
        assert run.completed == run.rows
        assert run.failures == 0
        assert_all_migrated(run)
    assert ratio < MAX_GROWTH, (
        f"peak grew {ratio:.2f}x for {LARGE // SMALL}x the rows "
        f"({small.peak:,} -> {large.peak:,} bytes): the worker holds data across batches"
    )
