"""`compliance report` gathers evidence that holds only when it really holds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from heimdall_kms.cli import main


@pytest.fixture
def drilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    for name in list(os.environ):
        if name.startswith("HMD_"):
            monkeypatch.delenv(name)
    assert main(["drill", "compromise", "--workdir", str(tmp_path), "--records", "50"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("HMD_KMS_PROVIDER", "local")
    monkeypatch.setenv("HMD_KMS_KEY_ID", "heimdall-drill")
    monkeypatch.setenv("HMD_LOCAL_KEYRING", str(tmp_path / "keyring.json"))
    monkeypatch.setenv("HMD_AUDIT_LOG", str(tmp_path / "audit.log"))
    return tmp_path


def report(workdir: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, object]:
    args = [
        "compliance",
        "report",
        "--database",
        f"sqlite:///{workdir / 'drill.db'}",
        "--table",
        "drill_customers",
        "--column",
        "ssn",
        "--json",
        *extra,
    ]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_every_control_is_supported_after_a_drill(
    drilled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = report(
        drilled, capsys, "--drill-reports", str(drilled), "--output", str(drilled / "evidence.md")
    )
    controls = doc["controls"]
    assert isinstance(controls, list)
    # Log protection against a compromised host needs the anchor (test_audit_anchor.py).
    anchored = "PCI DSS v4.0 10.3.2, 10.3.4 (v3.2.1 10.5)"
    assert all(row["supported"] for row in controls if row["control"] != anchored), controls
    assert [row["supported"] for row in controls if row["control"] == anchored] == [False]
    evidence = doc["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["audit_anchor"]["holds"] is False
    assert evidence["no_env_key_values"]["legacy"] == 0
    assert evidence["no_env_key_values"]["nested_envelope"] == 0
    assert evidence["rotation_history"]["count"] == 1
    assert evidence["audit_chain"]["result"] == "intact"
    assert "PCI DSS v4.0 3.7.4" in (drilled / "evidence.md").read_text()


def test_missing_or_broken_evidence_is_not_claimed(
    drilled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = drilled / "audit.log"
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:3] + lines[4:]))  # a removed line
    doc = report(drilled, capsys)  # and no drill reports given
    evidence = doc["evidence"]
    assert isinstance(evidence, dict)
    assert evidence["audit_chain"]["holds"] is False
    assert evidence["drill"]["holds"] is False
    supported = {row["control"]: row["supported"] for row in doc["controls"]}  # type: ignore[union-attr]
    assert supported["SOC 2 CC6.1"] is False
    assert supported["GDPR Article 32(1)(a), 32(1)(d)"] is False
