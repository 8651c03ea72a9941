"""The executable runbooks: compromise against OpenBao, rotation and migration locally."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heimdall_kms import primitives
from heimdall_kms.audit.verify import verify
from heimdall_kms.cli import main
from heimdall_kms.drill import environment
from tests.servers import OpenBao

EXE = str(Path(sys.executable).with_name("heimdall-kms"))


def clean_env(**extra: str) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))},
        **extra,
    }


@pytest.mark.vault
def test_compromise_drill_against_openbao(openbao: OpenBao, tmp_path: Path) -> None:
    before = set(openbao.client().secrets.transit.list_keys()["data"]["keys"])
    run = subprocess.run(
        [EXE, "drill", "compromise", "--workdir", str(tmp_path), "--records", "300", "--json"],
        env=clean_env(**openbao.env()),
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["passed"] is True
    assert report["provider"] == "vault"
    assert report["key"].startswith("heimdall-drill-")
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["rotate"]["details"] == {"old_version": 1, "new_version": 2}
    full = steps["re-encrypt (full)"]["details"]
    assert (full["re_encrypted"], full["failed"]) == (300, 0)
    # The replaced, compromised envelopes are kept nowhere a rollback could restore them from.
    assert steps["prove nothing restorable"]["details"] == {
        "journaled_by_the_run": 0,
        "journaled_compromised": 0,
    }
    assert steps["prove old DEKs refused"]["details"] == {
        "old_wrapped_deks": 300,
        "refused_by_kms": 300,
    }
    assert steps["prove every value decrypts"]["details"] == {"verified": 300}
    assert all(sla["met"] for sla in report["sla"])
    assert [sla["until"] for sla in report["sla"]] == ["rotate", "re-encrypt (full)"]
    radius = report["findings"]["blast_radius"]
    assert radius["by_actor"] == {"svc-reporting": 60, "analyst-eve": 60}
    assert radius["records_exposed"] == 60
    json_file, md_file = map(Path, report["report_files"])
    assert json.loads(json_file.read_text())["passed"] is True
    assert "| rotate | 4 h |" in md_file.read_text()
    verify(tmp_path / "audit.log", require_checkpoint=True)
    # The throwaway key is gone again; the real key was never touched.
    after = set(openbao.client().secrets.transit.list_keys()["data"]["keys"])
    assert after == before
    real = openbao.client().secrets.transit.read_key("heimdall-pii")["data"]
    assert real["min_decryption_version"] == 1


@pytest.mark.parametrize("kind", ["rotation", "migration", "compromise"])
def test_drills_on_the_local_provider(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("HMD_"):
            monkeypatch.delenv(name)
    assert main(["drill", kind, "--workdir", str(tmp_path), "--records", "120", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is True
    assert all(step["ok"] for step in report["steps"])
    assert "stopped_at" not in report["findings"]


def test_the_migration_drills_throwaway_env_key_is_wiped_when_it_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The key the drill's legacy values were sealed and opened under is zeros afterwards."""
    for name in list(os.environ):
        if name.startswith("HMD_"):
            monkeypatch.delenv(name)
    made: list[bytearray] = []

    def kept() -> bytearray:
        made.append(primitives.new_dek())
        return made[-1]

    monkeypatch.setattr(environment, "new_dek", kept)
    assert main(["drill", "migration", "--workdir", str(tmp_path), "--records", "40"]) == 0
    assert "reports:" in capsys.readouterr().out
    assert len(made) == 1 and made[0].count(0) == primitives.DEK_BYTES  # shows no key


def test_drills_refuse_cloud_providers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HMD_KMS_PROVIDER", "aws")
    monkeypatch.setenv("HMD_KMS_KEY_ID", "alias/x")
    assert main(["drill", "compromise", "--workdir", str(tmp_path)]) == 78
    assert "drills run against vault or local" in capsys.readouterr().err
