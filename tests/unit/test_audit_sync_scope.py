"""One audit sync per job batch (audit/sync_scope.py): lines at once, one sync, then the head."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.sink import FailureCountingSink, FileAuditSink, head_path
from heimdall_kms.audit.sync_scope import one_sync_per_batch
from heimdall_kms.audit.verify import verify
from heimdall_kms.config import Settings
from heimdall_kms.errors import AuditCrashError, AuditWriteError, KMSError
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import Target, open_store
from tests.legacy_data import legacy_envelope

MASTER_HEX = "ab" * 32


class Syncs:
    """Counts the process's real fdatasync calls (each still runs)."""

    def __init__(self) -> None:
        self.count = 0


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    counted, real = Syncs(), os.fdatasync

    def fdatasync(fd: int) -> None:
        counted.count += 1
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    return counted


def _event(n: int) -> AuditEvent:
    return AuditEvent(EventType.KEY_ROTATE, "ops", f"r{n}", Result.SUCCESS)


def _lines(log: Path) -> int:
    return len(log.read_bytes().splitlines())


class TestOneSyncPerBatch:
    def test_lines_are_written_at_once_and_synced_once_at_the_end(
        self, tmp_path: Path, syncs: Syncs
    ) -> None:
        log = tmp_path / "audit.log"
        sink = FileAuditSink(log)
        sink.emit([_event(0)])
        before = head_path(log).read_bytes()
        with one_sync_per_batch():
            for n in range(1, 4):
                sink.emit([_event(n)])
                assert _lines(log) == n + 1  # in the file: a crash of this process loses none
            assert syncs.count == 1  # the emit before the scope only
            # The checkpoint does not run ahead of what is on disk: it stays until the sync.
            assert head_path(log).read_bytes() == before
            with pytest.raises(AuditCrashError):
                verify(log)
        assert syncs.count == 2
        assert (verify(log).lines, verify(log).checkpoint) == (4, "matches")
        sink.close()

    def test_a_failing_block_is_still_synced_and_its_error_raised(
        self, tmp_path: Path, syncs: Syncs
    ) -> None:
        log = tmp_path / "audit.log"
        sink = FileAuditSink(log)

        def batch() -> None:
            with one_sync_per_batch():
                sink.emit([_event(1)])
                raise KMSError("the KMS failed after the batch's decrypts")

        with pytest.raises(KMSError):
            batch()
        assert syncs.count == 1
        assert (verify(log).lines, verify(log).checkpoint) == (1, "matches")
        sink.close()

    def test_outside_a_scope_every_emit_syncs(self, tmp_path: Path, syncs: Syncs) -> None:
        sink = FileAuditSink(tmp_path / "audit.log")
        for n in range(3):
            sink.emit([_event(n)])
        assert syncs.count == 3
        sink.close()

    def test_a_nested_scope_syncs_at_the_outermost_end(self, tmp_path: Path, syncs: Syncs) -> None:
        log = tmp_path / "audit.log"
        sink = FileAuditSink(log)
        with one_sync_per_batch():
            with one_sync_per_batch():
                sink.emit([_event(1)])
            assert syncs.count == 0
        assert syncs.count == 1
        assert (verify(log).lines, verify(log).checkpoint) == (1, "matches")
        sink.close()


class TestMigrationBatches:
    def test_a_batch_syncs_the_audit_log_once(self, tmp_path: Path, syncs: Syncs) -> None:
        """A migration batch writes decrypt, encrypt and batch events: one sync, not three."""
        db = tmp_path / "app.db"
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
            connection.executemany(
                "INSERT INTO customers VALUES (?, ?)",
                ((i, legacy_envelope(MASTER_HEX, f"{i:09d}")) for i in range(1, 101)),
            )
        connection.close()
        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        settings = Settings.from_env(
            {
                "HMD_ENCRYPTION_MODE": "hybrid",
                "HMD_KMS_PROVIDER": "local",
                "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
                "HMD_PII_MASTER_KEY": MASTER_HEX,
            }
        )
        log = tmp_path / "audit.log"
        crypto = heimdall_kms.from_settings(settings, audit=FileAuditSink(log), default_actor="t")
        store = open_store(f"sqlite:///{db}", Target("customers", "ssn"))
        with crypto:
            syncs.count = 0
            report = run_migration(crypto, [store], MigrationOptions(batch_size=25))
        store.close()
        assert report.totals.completed == 100
        # 4 batches, plus the run's intent and outcome (the SQLite commits are not fdatasync).
        assert syncs.count == 4 + 2
        assert verify(log).checkpoint == "matches"


class TestCountedFailures:
    def test_a_deferred_sync_that_fails_is_counted_and_raised(self, tmp_path: Path) -> None:
        """heimdall_audit_write_failures_total sees a batch's failed sync, as a failed emit."""
        failures: list[int] = []
        inner = FileAuditSink(tmp_path / "audit.log")
        sink = FailureCountingSink(inner, lambda: failures.append(1))

        def batch() -> None:
            with one_sync_per_batch():
                sink.emit([_event(1)])
                inner.close()  # the log goes away before the batch's sync

        with pytest.raises(AuditWriteError, match="closed"):
            batch()
        assert failures == [1]

    def test_a_deferred_sync_through_the_counter_syncs_once(
        self, tmp_path: Path, syncs: Syncs
    ) -> None:
        log = tmp_path / "audit.log"
        sink = FailureCountingSink(FileAuditSink(log), lambda: None)
        with one_sync_per_batch():
            sink.emit([_event(1)])
            sink.emit([_event(2)])
        assert syncs.count == 1
        assert (verify(log).lines, verify(log).checkpoint) == (2, "matches")
        sink.close()
