"""``migrate --estimate`` and ``drill compromise`` project real targets against the 24 h SLA."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable, target_args
from tests.legacy_data import legacy_envelope
from tests.servers import OpenBao

MASTER_HEX = "ab" * 32


# The estimate reads what the census reads: SQLite and PostgreSQL text (the shared table fixture).
TABLES = pytest.mark.parametrize("table", ["sqlite", "postgres-text"], indirect=True)


@pytest.fixture(params=["local", pytest.param("vault", marks=pytest.mark.vault)])
def kms_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("HMD_", "VAULT_")):
            monkeypatch.delenv(name)
    if request.param == "local":
        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        values = {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json")}
    else:
        openbao: OpenBao = request.getfixturevalue("openbao")
        values = openbao.env()
    values |= {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def journaled_runs(table: UserTable) -> list[tuple[str, int, str]]:
    store = open_store(table.url, Target(table.table, "ssn", "id"))
    try:
        return store.runs() if store.has_journal() else []
    finally:
        store.close()


def snapshot(table: UserTable, audit_log: Path) -> tuple[dict[int, str | None], bytes | None]:
    audit = audit_log.read_bytes() if audit_log.exists() else None
    return table.values(), audit


class TestMigrateEstimate:
    @TABLES
    def test_names_every_target_with_its_count_and_changes_nothing(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table.insert([(i, legacy_envelope(MASTER_HEX, f"{i:03d}-12-0000")) for i in range(1, 41)])
        table.insert([(41, None), (42, "[REDACTED]"), (43, '{"ciphertext": "!!", "nonce": 1}')])
        before = snapshot(table, tmp_path / "audit.log")
        code = main(["migrate", *target_args(table), "--estimate", "--json"])
        found = json.loads(capsys.readouterr().out)
        assert code == 0
        assert found["targets"] == [
            {"target": f"{table.table}.ssn", "values": 40, "unclassified": 1}
        ]
        assert found["values"] == 40 and found["rate_per_second"] > 0
        assert found["within_sla"] is True
        assert snapshot(table, tmp_path / "audit.log") == before
        assert journaled_runs(table) == []  # a migration journals every run
        assert main(["migrate", *target_args(table), "--estimate"]) == 0
        text = capsys.readouterr().out
        assert f"{table.table}.ssn: 40 values (and 1 unparseable" in text
        assert "within the 24 h SLA" in text

    @TABLES
    def test_a_target_set_the_sla_cannot_hold_is_reported_over(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table.insert([(i, legacy_envelope(MASTER_HEX, f"{i:03d}-12-0000")) for i in range(1, 101)])
        before = snapshot(table, tmp_path / "audit.log")
        # At one value per 1,000 s (the ceiling asked for), 100 values take 100,000 s > 24 h.
        args = ["migrate", *target_args(table), "--estimate", "--rate-limit", "0.001"]
        assert main([*args, "--batch-size", "1"]) == 0
        text = capsys.readouterr().out
        assert f"{table.table}.ssn: 100 values" in text
        assert "OVER the 24 h SLA: add workers (see docs/performance.md)" in text
        assert snapshot(table, tmp_path / "audit.log") == before


class TestDrillProjection:
    @TABLES
    def test_projects_the_configured_targets_at_the_drills_rate(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        kms_only = {k: v for k, v in kms_env.items() if not k.startswith("HMD_PII_")}
        with heimdall_kms.from_env(
            {**kms_only, "HMD_ENCRYPTION_MODE": "kms"}, audit=MemoryAuditSink()
        ) as crypto:
            sealed = crypto.encrypt_many([(f"v{i}", {"record": str(i)}) for i in range(30)])
        table.insert([(i, e.to_json()) for i, e in enumerate(sealed)])
        table.insert([(100, legacy_envelope(MASTER_HEX, "000-00-0000"))])
        before = table.values()
        workdir = tmp_path / "drill"
        args = ["drill", "compromise", "--workdir", str(workdir), "--records", "60", "--json"]
        assert main([*args, *target_args(table)]) == 0
        report = json.loads(capsys.readouterr().out)
        projection = report["projection"]
        assert projection["targets"] == [
            {"target": f"{table.table}.ssn", "values": 30, "unclassified": 0}
        ]
        assert projection["within_sla"] is True and report["passed"] is True
        steps = {s["name"]: s for s in report["steps"]}
        full = steps["re-encrypt (full)"]
        assert projection["rate_per_second"] == round(60 / full["seconds"], 1)
        markdown = Path(report["report_files"][1]).read_text()
        assert "## Projection for the configured targets" in markdown
        assert table.values() == before

    def test_without_targets_there_is_no_projection(
        self, kms_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["drill", "compromise", "--workdir", str(tmp_path / "d"), "--records", "20"]
        assert main([*args, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["projection"] is None
