"""Signed checkpoints: what is signed, and hostile checkpoint lines (issue 24)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from heimdall_kms import crypto
from heimdall_kms.audit import FileAuditSink
from heimdall_kms.audit.anchored import AnchoredVerdict, verify_anchored
from heimdall_kms.audit.checkpoint import (
    checkpoints_path,
    new_checkpoint,
    parse_checkpoint,
)
from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.signers import LocalSigner
from heimdall_kms.providers.local import LocalKeyring


@pytest.fixture
def signer(tmp_path: Path) -> LocalSigner:
    return LocalSigner(LocalKeyring(tmp_path / "keyring.json"), "audit-sign")


class TestEd25519:
    def test_a_signature_verifies_only_for_its_message_and_key(self) -> None:
        seed, other = bytes(range(32)), bytes(32)
        signature = crypto.sign_ed25519(seed, b"head")
        assert crypto.verify_ed25519(seed, b"head", signature)
        assert not crypto.verify_ed25519(seed, b"heae", signature)
        assert not crypto.verify_ed25519(other, b"head", signature)


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
