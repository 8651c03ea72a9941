"""A batch's audit sync and commit run behind the next batch's conversion (jobs/commit_behind.py):
a commit that fails still leaves that batch and every later one as they were, and the run's
counts say only what was committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import heimdall_kms
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.audit.verify import verify
from heimdall_kms.config import Settings
from heimdall_kms.errors import StoreError
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.store import Batch, FieldStore, Match, Target, open_store
from tests.integration.dbtables import UserTable, hybrid_local_env
from tests.legacy_data import legacy_envelope

MASTER_HEX = "cd" * 32


class _FailingCommit:
    """A batch whose commit fails (as a lost connection would), after rolling it back."""

    def __init__(self, inner: Batch) -> None:
        self.inner = inner
        self.rows, self.end, self.missed = inner.rows, inner.end, inner.missed

    def swap(self, swaps: Any, run_id: str | None) -> list[bool]:
        return self.inner.swap(swaps, run_id)

    def commit(self) -> None:
        self.inner.roll_back()
        raise StoreError("the commit failed")

    def roll_back(self) -> None:
        self.inner.roll_back()


class _Store:
    """The real store; its ``fail_at``-th batch cannot commit."""

    def __init__(self, inner: FieldStore, fail_at: int) -> None:
        self.inner, self.fail_at, self.opened = inner, fail_at, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open_batch(
        self, after: object | None, limit: int, match: Match, upto: object | None = None
    ) -> Batch:
        self.opened += 1
        batch = self.inner.open_batch(after, limit, match, upto)
        return _FailingCommit(batch) if self.opened == self.fail_at else batch


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)


def _migrate(table: UserTable, env: dict[str, str], fail_at: int) -> tuple[Any, _Store]:
    settings = Settings.from_env(env)
    crypto = heimdall_kms.from_settings(
        settings, audit=FileAuditSink(Path(env["HMD_AUDIT_LOG"])), default_actor="t"
    )
    store = _Store(open_store(table.url, Target(table.table, "ssn")), fail_at)
    with crypto:
        report = run_migration(crypto, [store], MigrationOptions(batch_size=10))  # type: ignore[list-item]
    store.inner.close()
    return report, store


class TestACommitThatFails:
    @pytest.mark.parametrize("table", ["sqlite", "postgres-text"], indirect=True)
    def test_its_batch_and_the_next_are_left_as_they_were(
        self, table: UserTable, env: dict[str, str]
    ) -> None:
        table.insert((i, legacy_envelope(MASTER_HEX, f"{i:09d}")) for i in range(1, 51))
        report, store = _migrate(table, env, fail_at=3)
        assert isinstance(report.stop_error, StoreError)
        # Batches 1 and 2 committed; 3 failed to commit while 4 was converted: neither kept.
        assert store.opened == 4
        assert (report.totals.examined, report.totals.completed) == (20, 20)
        stored = table.values()
        migrated = {i for i, value in stored.items() if '"kms_v1"' in (value or "")}
        assert migrated == set(range(1, 21))
        assert len(table.journal()) == 20
        # The chain is whole, and the run's outcome says what was committed.
        log = Path(env["HMD_AUDIT_LOG"])
        assert verify(log).checkpoint == "matches"
        events = [json.loads(line) for line in log.read_text().splitlines()]
        outcome = [e for e in events if e["event_type"] == "job.run"][-1]
        assert outcome["details"]["completed"] == 20

    @pytest.mark.parametrize("table", ["sqlite"], indirect=True)
    def test_a_rerun_finishes_the_rest(self, table: UserTable, env: dict[str, str]) -> None:
        table.insert((i, legacy_envelope(MASTER_HEX, f"{i:09d}")) for i in range(1, 51))
        _migrate(table, env, fail_at=2)
        report, _ = _migrate(table, env, fail_at=0)
        assert report.stop_error is None
        assert report.totals.completed == 40
        assert all('"kms_v1"' in (value or "") for value in table.values().values())
