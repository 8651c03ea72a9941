"""Signed checkpoints: what is signed, and hostile checkpoint lines (issue 24)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from heimdall_kms import primitives
from heimdall_kms.audit import FileAuditSink
from heimdall_kms.audit.anchored import AnchoredVerdict, verify_anchored
from heimdall_kms.audit.checkpoint import (
    VersionedSigner,
    checkpoints_path,
    new_checkpoint,
    parse_checkpoint,
)
from heimdall_kms.audit.checkpointer import Checkpointer, CheckpointPolicy
from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.signers import LocalSigner
from heimdall_kms.providers.local import LocalKeyring


@pytest.fixture
def signer(tmp_path: Path) -> LocalSigner:
    return LocalSigner(LocalKeyring(tmp_path / "keyring.json"), "audit-sign")


class TestEd25519:
    def test_a_signature_verifies_only_for_its_message_and_key(self) -> None:
        seed, other = bytes(range(32)), bytes(32)
        signature = primitives.sign_ed25519(seed, b"head")
        assert primitives.verify_ed25519(seed, b"head", signature)
        assert not primitives.verify_ed25519(seed, b"heae", signature)
        assert not primitives.verify_ed25519(other, b"head", signature)


class TestCheckpoint:
    def test_every_member_but_the_signature_is_signed(self, signer: LocalSigner) -> None:
        checkpoint = new_checkpoint("host:/log", 7, "ab" * 32, signer)
        assert signer.verify_many([(checkpoint.message(), checkpoint.signature)]) == [True]
        for change in ({"seq": 8}, {"hash": "cd" * 32}, {"log_id": "other"}, {"pid": 1}):
            moved = replace(checkpoint, **change)  # type: ignore[arg-type]
            assert signer.verify_many([(moved.message(), moved.signature)]) == [False]
        assert parse_checkpoint(checkpoint.to_json()) == checkpoint

    @pytest.mark.parametrize(
        "text",
        [
            "[]",
            "[" * 100_000 + "]" * 100_000,
            '{"format": "heimdall-audit-checkpoint/1"}',
            "not json",
        ],
    )
    def test_a_line_that_is_no_checkpoint_is_refused(self, text: str) -> None:
        with pytest.raises(ValueError, match=r"not a heimdall audit checkpoint|Expecting"):
            parse_checkpoint(text)

    @pytest.mark.parametrize(
        "change",
        [{"seq": True}, {"seq": "7"}, {"time": "2026-12-01T10:00:00"}, {"time": "yesterday"}],
    )
    def test_wrong_types_and_naive_times_are_refused(
        self, signer: LocalSigner, change: dict[str, object]
    ) -> None:
        document = json.loads(new_checkpoint("l", 1, "ab" * 32, signer).to_json())
        document.update(change)
        with pytest.raises(ValueError, match=r"checkpoint|isoformat|Invalid"):
            parse_checkpoint(json.dumps(document))


class TestHostileSidecar:
    def test_garbage_in_the_checkpoint_file_is_tampering_not_a_traceback(
        self, tmp_path: Path, signer: LocalSigner
    ) -> None:
        log = tmp_path / "audit.log"
        sink = FileAuditSink(log)
        sink.emit([AuditEvent(EventType.KEY_ROTATE, "ops", "r1", Result.SUCCESS)])
        sink.close()
        good = new_checkpoint("l", 1, json.loads(log.read_text())["hash"], signer)
        forged = json.loads(good.to_json()) | {"time": "2026-12-01T10:00:00"}
        checkpoints_path(log).write_text(good.to_json() + "\n" + json.dumps(forged) + "\n")
        result = verify_anchored(log, signer=signer, log_id="l", anchor_rows=[])
        assert result.verdict is AnchoredVerdict.TAMPERED
        assert any("line 2: not a checkpoint" in problem for problem in result.problems)


class _Counting(VersionedSigner):
    """A real local signer that counts its signatures."""

    def __init__(self, inner: LocalSigner) -> None:
        self.inner = inner
        self.signed = 0

    @property
    def key_identifier(self) -> str:
        return self.inner.key_identifier

    def sign(self, message: bytes) -> str:
        self.signed += 1
        return self.inner.sign(message)

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        return self.inner.verify_many(items)


def _event() -> AuditEvent:
    return AuditEvent(EventType.KEY_ROTATE, "ops", "r1", Result.SUCCESS)


def _sidecar_seqs(log: Path) -> list[int]:
    path = checkpoints_path(log)
    return (
        [parse_checkpoint(line).seq for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )


class TestCheckpointCadence:
    def _sink(self, tmp: Path, signer: _Counting, **policy: float) -> FileAuditSink:
        log = tmp / "audit.log"
        checkpointer = Checkpointer(log, signer, CheckpointPolicy(log_id="l", **policy))  # type: ignore[arg-type]
        return FileAuditSink(log, checkpointer=checkpointer)

    def test_batches_cost_no_signature_until_the_interval_or_close(
        self, tmp_path: Path, signer: LocalSigner
    ) -> None:
        counting = _Counting(signer)
        sink = self._sink(tmp_path, counting, seconds=60, lines=1000)
        for _ in range(200):
            sink.emit([_event()])
        time.sleep(0.2)
        assert counting.signed == 0  # periodic, never per batch
        sink.close()
        assert counting.signed == 1 and _sidecar_seqs(sink.path) == [200]  # at close

    def test_every_n_lines(self, tmp_path: Path, signer: LocalSigner) -> None:
        counting = _Counting(signer)
        sink = self._sink(tmp_path, counting, seconds=60, lines=5)
        sink.emit([_event() for _ in range(5)])
        _wait_for(lambda: _sidecar_seqs(sink.path) == [5])
        sink.close()

    def test_every_interval_when_lines_were_written(
        self, tmp_path: Path, signer: LocalSigner
    ) -> None:
        counting = _Counting(signer)
        sink = self._sink(tmp_path, counting, seconds=0.3, lines=1000)
        sink.emit([_event()])
        _wait_for(lambda: _sidecar_seqs(sink.path) == [1])
        time.sleep(0.7)
        assert counting.signed == 1  # nothing new written: no new checkpoint
        sink.close()
        assert _sidecar_seqs(sink.path) == [1]


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
