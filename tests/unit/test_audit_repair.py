"""``audit repair``: a log ending in a partial line is continued (the bytes kept aside, the
repair audited); a log that does not verify is refused and left byte for byte as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result


def event(n: int) -> AuditEvent:
    return AuditEvent(EventType.DECRYPT, "alice", f"req-{n}", Result.SUCCESS, reason="ticket")


def cli(
    args: list[str], env: dict[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    command = [sys.executable, "-c", "from heimdall_kms.cli import main; raise SystemExit(main())"]
    return subprocess.run(
        [*command, *args],
        input=stdin.decode(),
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    for start in range(0, 12, 4):  # three batches: seq 1..12
        sink.emit([event(n) for n in range(start, start + 4)])
    sink.close()
    return path


@pytest.fixture
def env(local_env: dict[str, str], log: Path) -> dict[str, str]:
    return {**local_env, "HMD_AUDIT_LOG": str(log)}


def half_a_line(log: Path) -> bytes:
    """What a full disk (or a kill mid-write) leaves: the first half of a next line."""
    whole = log.read_bytes().splitlines(keepends=True)[-1]
    half = whole[: len(whole) // 2]
    with log.open("ab") as handle:
        handle.write(half)
    return half


def sidecars(log: Path) -> list[Path]:
    return sorted(log.parent.glob(log.name + ".damaged-*"))


class TestRepairAPartialTail:
    def test_repair_lets_writers_continue(self, log: Path, env: dict[str, str]) -> None:
        half = half_a_line(log)
        assert cli(["encrypt", "--field", "ssn"], env, b"123-45-6789").returncode == 74
        done = cli(["audit", "repair", str(log), "--actor", "oncall", "--reason", "INC-7"])
        assert done.returncode == 0, done.stderr
        assert "the chain continues from seq 12" in done.stdout
        [sidecar] = sidecars(log)
        assert sidecar.read_bytes() == half
        assert sidecar.stat().st_mode & 0o777 == 0o600
        verified = cli(["audit", "verify", str(log), "--require-checkpoint", "--json"])
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["lines"] == 13
        last = json.loads(log.read_text().splitlines()[-1])
        assert (last["event_type"], last["actor"], last["reason"]) == (
            "audit.repair",
            "oncall",
            "INC-7",
        )
        assert last["details"] == {
            "bytes_moved": len(half),
            "sidecar": str(sidecar),
            "continues_from_seq": 12,
        }
        assert cli(["encrypt", "--field", "ssn"], env, b"123-45-6789").returncode == 0
        assert cli(["audit", "verify", str(log), "--require-checkpoint"]).returncode == 0

    def test_repair_continues_after_a_crash_tail(self, log: Path) -> None:
        # The checkpoint behind (a kill before it was written) and a partial line after.
        head = log.with_name(log.name + ".head")
        eighth = json.loads(log.read_text().splitlines()[7])["hash"]
        head.write_text(json.dumps({"seq": 8, "hash": eighth}).ljust(127) + "\n")
        half_a_line(log)
        assert cli(["audit", "repair", str(log)]).returncode == 0
        assert cli(["audit", "verify", str(log), "--require-checkpoint"]).returncode == 0

    def test_a_log_without_damage_has_nothing_to_repair(self, log: Path) -> None:
        before = log.read_bytes(), log.with_name(log.name + ".head").read_bytes()
        done = cli(["audit", "repair", str(log)])
        assert done.returncode == 0
        assert "nothing to repair" in done.stdout
        assert (log.read_bytes(), log.with_name(log.name + ".head").read_bytes()) == before
        assert sidecars(log) == []


class TestRepairRefusesTampering:
    @pytest.mark.parametrize("partial", [True, False], ids=["partial-tail", "no-tail"])
    def test_an_edited_middle_is_refused_and_nothing_changes(
        self, log: Path, partial: bool
    ) -> None:
        log.write_text(log.read_text().replace('"req-5"', '"req-9"'))
        if partial:
            half_a_line(log)
        head = log.with_name(log.name + ".head")
        before = log.read_bytes(), head.read_bytes()
        done = cli(["audit", "repair", str(log)])
        assert done.returncode == 5, done.stderr
        assert "line 6: content does not match its hash (edited)" in done.stderr
        assert (log.read_bytes(), head.read_bytes()) == before
        assert sidecars(log) == []

    def test_a_checkpoint_ahead_of_the_complete_lines_is_refused(self, log: Path) -> None:
        content = log.read_bytes().splitlines(keepends=True)
        log.write_bytes(b"".join(content[:10]) + content[10][:20])  # lines 11-12 cut
        before = log.read_bytes()
        done = cli(["audit", "repair", str(log)])
        assert done.returncode == 5
        assert "truncated" in done.stderr
        assert log.read_bytes() == before
        assert sidecars(log) == []
