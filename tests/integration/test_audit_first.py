"""No change before its audit event (issue 15 item 5): with an unwritable audit log, every
lifecycle command exits 74 and NOTHING changed in the KMS, the table or the journal."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

import heimdall_kms
from heimdall_kms.audit import (
    AuditEvent,
    EventType,
    FileAuditSink,
    MemoryAuditSink,
    Result,
    audited,
)
from heimdall_kms.audit.query import dangling
from heimdall_kms.cli import main
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import AuditWriteError
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable
from tests.integration.sealed_table import sealed_table

ROWS = 30
EXE = str(Path(sys.executable).with_name("heimdall-kms"))
RUN = "run-prepared"


@dataclass
class World:
    """A key at v2 with every value still at v1, a table and a working audit log."""

    env: dict[str, str]
    url: str
    db: Path
    log: Path

    def targets(self) -> list[str]:
        return ["--database", self.url, "--table", "t", "--column", "v"]

    def snapshot(self) -> tuple[object, ...]:
        """Everything a command could change: the key's versions, the table, the journal."""
        kms = load_provider(Settings.from_env(self.env))
        try:
            info = kms.describe()
        finally:
            kms.close()
        with sqlite3.connect(self.db) as db:
            rows = db.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            journal = db.execute(
                "SELECT name FROM sqlite_master WHERE name = 'heimdall_kms_journal'"
            ).fetchall()
            if journal:
                journal = db.execute(
                    "SELECT run_id, row_key, old_value, new_value FROM heimdall_kms_journal "
                    "ORDER BY run_id, row_key"
                ).fetchall()
        return (info.latest_version, info.min_decryption_version, rows, journal)


@pytest.fixture(params=["local", "vault"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    with sealed_table(request.param, tmp_path, monkeypatch, rows=ROWS, prefix="value-") as t:
        yield World(t.env, t.url, t.db, t.log)


def _rewrapped_with_journal(world: World) -> None:
    """Rotate, rewrap under a known run id (journaled), so retire/rollback/purge have work."""
    assert main(["rotate"]) == 0
    assert main(["reencrypt", *world.targets(), "--run-id", RUN]) == 0


def _rotated(world: World) -> None:
    assert main(["rotate"]) == 0


# Each command, the state it needs (made with a working log), and its arguments.
COMMANDS: dict[str, tuple[Callable[[World], None], Callable[[World], list[str]]]] = {
    "rotate": (lambda w: None, lambda w: ["rotate"]),
    "retire": (_rewrapped_with_journal, lambda w: ["retire", "--below-version", "2", *w.targets()]),
    "reencrypt-rewrap": (_rotated, lambda w: ["reencrypt", *w.targets()]),
    "reencrypt-full": (_rotated, lambda w: ["reencrypt", "--mode", "full", *w.targets()]),
    "migrate-rollback": (
        _rewrapped_with_journal,
        lambda w: ["migrate", *w.targets(), "--rollback", RUN],
    ),
    "journal-purge": (
        _rewrapped_with_journal,
        lambda w: ["journal", "purge", *w.targets(), "--older-than-days", "0"],
    ),
}


def _cut_off(world: World, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The log's last line was cut off mid-write (a crash, or a full disk earlier)."""
    with world.log.open("ab") as handle:
        handle.write(b'{"seq": 999, "event_type": "crypto.dec')
    return world.log


def _full_disk(world: World, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every write fails with ENOSPC, as on a full disk."""
    monkeypatch.setenv("HMD_AUDIT_LOG", "/dev/full")
    return Path("/dev/full")


class TestNothingChangesWithoutItsAuditEvent:
    @pytest.mark.parametrize("broken", [_cut_off, _full_disk], ids=["cut-off", "full-disk"])
    @pytest.mark.parametrize("command", sorted(COMMANDS))
    def test_unwritable_log_changes_nothing(
        self,
        world: World,
        command: str,
        broken: Callable[[World, pytest.MonkeyPatch], Path],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Exit 74 with a one-line error, and the KMS, table and journal are as they were."""
        prepare, arguments = COMMANDS[command]
        prepare(world)
        before = world.snapshot()
        log = broken(world, monkeypatch)
        log_bytes = log.read_bytes() if log.is_file() else b""
        capsys.readouterr()
        assert main(arguments(world)) == 74
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "audit log" in err and "Traceback" not in err
        assert world.snapshot() == before
        if log.is_file():
            assert log.read_bytes() == log_bytes


class _FailOn(MemoryAuditSink):
    """Accepts events until one of ``kind`` arrives, then fails as a full disk would."""

    def __init__(self, kind: EventType) -> None:
        super().__init__()
        self.kind = kind

    def emit(self, events: Sequence[AuditEvent]) -> None:
        batch = list(events)
        if any(e.event_type is self.kind for e in batch):
            raise AuditWriteError("cannot write audit log: No space left on device")
        super().emit(batch)


class TestBatchEventBeforeCommit:
    def test_a_batch_whose_event_fails_is_rolled_back(self, world: World) -> None:
        """The intent is written, the first batch's event is not: no row, no journal entry."""
        _rotated(world)
        before = world.snapshot()
        sink = _FailOn(EventType.REENCRYPT_BATCH)
        store = open_store(world.url, Target("t", "v"))
        try:
            with heimdall_kms.from_env(world.env, audit=sink) as crypto:
                report = run_reencrypt(crypto, [store], ReencryptOptions(batch_size=10))
        finally:
            store.close()
        assert isinstance(report.stop_error, AuditWriteError)
        assert world.snapshot() == before
        runs = [e for e in sink.events if e.event_type is EventType.JOB_RUN]
        assert [e.result for e in runs] == [Result.INTENT, Result.FAILURE]
        assert runs[-1].error_type == "audit_write"


def _events(log: Path) -> list[dict[str, Any]]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [json.loads(line) for line in lines if line.endswith("}")]


class TestDanglingIntents:
    def test_a_kill_between_intent_and_outcome_is_listed(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A process that dies mid-change leaves an intent `audit query --dangling` shows."""
        log = tmp_path / "audit.log"
        sink = FileAuditSink(log)
        done = AuditEvent(EventType.KEY_ROTATE, "ops", "r-done", Result.SUCCESS)
        killed = AuditEvent(EventType.KEY_RETIRE, "ops", "r-killed", Result.SUCCESS)
        with audited(sink, done):
            pass
        with pytest.raises(KeyboardInterrupt), audited(sink, killed):
            raise KeyboardInterrupt  # what a SIGKILL looks like to the log: no outcome
        sink.close()
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert [e["result"] for e in events] == ["intent", "success", "intent"]
        assert [e["request_id"] for e in dangling(events)] == ["r-killed"]
        assert main(["audit", "query", str(log), "--dangling"]) == 0
        shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [(e["event_type"], e["request_id"]) for e in shown] == [("key.retire", "r-killed")]
        assert main(["audit", "query", str(log), "--result", "intent", "--count"]) == 0
        assert capsys.readouterr().out.strip() == "2"

    def test_a_sigkilled_rollback_leaves_its_intent_and_no_change(
        self,
        tmp_path: Path,
        postgres_url: str,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """SIGKILL while the rollback waits for its rows: the intent is there, nothing moved,
        and a rerun's outcome does not hide the killed attempt (PostgreSQL row locks)."""
        log = tmp_path / "audit.log"
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
            "HMD_AUDIT_LOG": str(log),
        }
        LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        try:
            with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
                sealed = crypto.encrypt_many(
                    [
                        (f"v{i}", {"table": table.table, "field": "ssn", "record": str(i)})
                        for i in range(ROWS)
                    ]
                )
            table.insert((i, e.to_json()) for i, e in enumerate(sealed))
            targets = ["--database", table.url, "--table", table.table, "--column", "ssn"]
            assert main(["rotate"]) == 0
            assert main(["reencrypt", *targets, "--run-id", RUN]) == 0
            before = table.values()
            self._kill_while_blocked(table, env, [*targets, "--rollback", RUN], log)
            assert table.values() == before
            capsys.readouterr()
            assert main(["audit", "query", str(log), "--dangling"]) == 0
            (killed,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert (killed["event_type"], killed["request_id"]) == ("reencrypt.rollback", RUN)
            assert main(["migrate", *targets, "--rollback", RUN]) == 0
            assert table.values() != before  # the rerun restored the v1 values
            capsys.readouterr()
            assert main(["audit", "query", str(log), "--dangling"]) == 0
            shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert shown == [killed]
        finally:
            table.drop()

    @staticmethod
    def _kill_while_blocked(
        table: UserTable, env: dict[str, str], args: list[str], log: Path
    ) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
        with psycopg.connect(table.url) as blocker:
            # The rows are locked: the rollback records its intent, then waits to write.
            blocker.execute(f"SELECT id FROM {table.table} FOR UPDATE").fetchall()
            process = subprocess.Popen(
                [EXE, "migrate", *args],
                env={**base, **env},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 30
            while not any(
                e["event_type"] == "reencrypt.rollback" and e["result"] == "intent"
                for e in _events(log)
            ):
                assert process.poll() is None, "the rollback ended before its intent was seen"
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.3)  # let it reach the locked rows
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            blocker.rollback()

    def test_outcomes_pair_by_attempt_id(self) -> None:
        """Two attempts under one request id (a rollback run twice): the killed one is left."""
        base = {"event_type": "reencrypt.rollback", "request_id": "run-1"}
        killed = {**base, "result": "intent", "details": {"attempt": "a1"}}
        rerun = {**base, "result": "intent", "details": {"attempt": "a2"}}
        done = {**base, "result": "success", "details": {"attempt": "a2"}}
        assert dangling([killed, rerun, done]) == [killed]
        assert dangling([rerun, done, killed]) == [killed]
        # Events without attempt ids: an outcome answers the latest open intent.
        old = {**base, "result": "intent"}
        assert dangling([old, old, {**base, "result": "success"}]) == [old]
