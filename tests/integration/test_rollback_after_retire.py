"""A rollback never restores values that need a retired key version (issue 18 item 6).

The reproduction: ``reencrypt --mode rewrap`` (run R), ``retire --below-version 2``, then
``migrate --rollback R`` said "restored 20 of 20" and left 20 values that no longer decrypt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.errors import IncompleteError, RefusedError
from tests.integration import test_full_reencrypt_keeps_nothing as full
from tests.integration.test_full_reencrypt_keeps_nothing import ROWS, Table

table = full.table  # the same fixture: 20 kms_v1 values of the local provider at v1


class TestRollbackAfterRetire:
    def test_a_rollback_that_needs_a_retired_version_is_refused_and_changes_nothing(
        self, table: Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["rotate"]) == 0
        assert main(["reencrypt", *table.targets(), "--run-id", "rw-1"]) == 0
        assert main(["retire", "--below-version", "2", *table.targets()]) == 0
        before = table.values()
        capsys.readouterr()
        assert main(["migrate", *table.targets(), "--rollback", "rw-1"]) == RefusedError.exit_code
        err = capsys.readouterr().err
        assert f"{ROWS} journaled values need key versions below 2" in err
        assert "min_decryption_version to 1" in err  # how to recover
        assert table.values() == before  # nothing restored
        assert len(table.journal()) == ROWS  # and the journal kept
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
        }
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            texts = crypto.decrypt_many(list(before.values()), actor="t", reason="check")
        assert texts == [f"ssn-{i}" for i in sorted(before)]  # every value still reads
        lines = (tmp_path / "audit.log").read_text().splitlines()
        refused = [json.loads(line) for line in lines if '"reencrypt.rollback"' in line]
        assert refused and refused[-1]["result"] == "failure"  # the refusal is audited

    def test_a_rollback_before_retire_still_restores(
        self, table: Table, capsys: pytest.CaptureFixture[str]
    ) -> None:
        original = table.values()
        assert main(["rotate"]) == 0
        assert main(["reencrypt", *table.targets(), "--run-id", "rw-1"]) == 0
        capsys.readouterr()
        assert main(["migrate", *table.targets(), "--rollback", "rw-1", "--json"]) == 0
        assert table.values() == original


class TestCensusCountsWhatIsUnreadable:
    """``status`` counts the values under a version the KMS no longer decrypts with, and the
    cut-over gate fails on them (after a forced retire, or a rollback done by hand)."""

    def test_values_under_a_retired_version_fail_the_gate(
        self, table: Table, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert main(["rotate"]) == 0
        assert main(["status", *table.targets(), "--fail-if-legacy"]) == 0  # v1 still reads
        assert main(["retire", "--below-version", "2", "--force", *table.targets()]) == 0
        capsys.readouterr()
        assert main(["status", *table.targets(), "--json"]) == 0  # a census only reports
        report = json.loads(capsys.readouterr().out)
        assert report["needing_retired_key_version"] == ROWS
        assert report["targets"][0]["needing_retired_key_version"] == ROWS
        code = main(["status", *table.targets(), "--fail-if-legacy"])
        assert code == IncompleteError.exit_code
        captured = capsys.readouterr()
        assert f"{ROWS} needing a retired key version remain" in captured.err
        assert f"unreadable): {ROWS}" in captured.out

    def test_without_a_kms_configured_nothing_is_claimed(
        self, table: Table, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("HMD_KMS_PROVIDER")
        monkeypatch.setenv("HMD_ENCRYPTION_MODE", "legacy")
        assert main(["status", *table.targets(), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["needing_retired_key_version"] is None
        assert main(["status", *table.targets()]) == 0  # the human report says so too
        assert "kms_v1 values not checked against a KMS" in capsys.readouterr().out

    def test_a_kms_that_cannot_be_asked_stops_the_gate(
        self, table: Table, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HMD_KMS_KEY_ID", "no-such-key")
        assert main(["status", *table.targets()]) == 0
        assert "key versions not checked against the KMS" in capsys.readouterr().err
        assert main(["status", *table.targets(), "--fail-if-legacy"]) != 0

    def test_a_provider_that_cannot_be_opened_is_reported_like_one_that_cannot_answer(
        self, table: Table, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HMD_LOCAL_KEYRING", str(Path(table.db).parent / "missing.json"))
        assert main(["status", *table.targets()]) == 0
        assert "key versions not checked against the KMS" in capsys.readouterr().err
        assert main(["status", *table.targets(), "--fail-if-legacy"]) != 0
