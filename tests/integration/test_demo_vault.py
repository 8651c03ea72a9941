"""``heimdall-kms demo`` through a live OpenBao with production settings (issue 15 item 1): it
works on a throwaway Transit key it creates and deletes, and never touches the configured key,
its versions, the configured audit log or database."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from heimdall_kms.demo import run_demo
from tests.servers import OpenBao, run_cli

pytestmark = pytest.mark.vault

SSN = "123-45-6789"


def _key_state(server: OpenBao) -> tuple[int, int]:
    data = server.client().secrets.transit.read_key("heimdall-pii")["data"]
    return int(data["latest_version"]), int(data["min_decryption_version"])


def _transit_keys(server: OpenBao) -> list[str]:
    return sorted(server.client().secrets.transit.list_keys()["data"]["keys"])


@pytest.fixture
def production(fresh_openbao: OpenBao, tmp_path: Path) -> dict[str, str]:
    return fresh_openbao.env(
        HMD_AUDIT_LOG=str(tmp_path / "prod-audit.log"),
        HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'prod.db'}",
    )


class TestDemoOnVault:
    def test_configured_key_and_audit_log_are_untouched(
        self, fresh_openbao: OpenBao, production: dict[str, str], tmp_path: Path
    ) -> None:
        sealed = run_cli(["encrypt", "--field", "ssn"], production, SSN)
        assert sealed.returncode == 0, sealed.stderr
        audit = Path(production["HMD_AUDIT_LOG"])
        audit_before = hashlib.sha256(audit.read_bytes()).hexdigest()
        key_before = _key_state(fresh_openbao)
        keys_before = _transit_keys(fresh_openbao)
        workdir = tmp_path / "demo"

        result = run_cli(["demo", "--workdir", str(workdir)], production)

        assert result.returncode == 0, result.stderr
        assert _key_state(fresh_openbao) == key_before
        assert hashlib.sha256(audit.read_bytes()).hexdigest() == audit_before
        assert not (tmp_path / "prod.db").exists()
        assert _transit_keys(fresh_openbao) == keys_before  # the throwaway key is gone
        out = result.stdout.decode()
        assert "throwaway Transit key transit/heimdall-demo-" in out
        assert "deleted the throwaway Transit key transit/heimdall-demo-" in out
        assert "local-keyring.json" not in out and not (workdir / "local-keyring.json").exists()
        opened = run_cli(["decrypt", "--actor", "a", "--reason", "r"], production, sealed.stdout)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.decode() == SSN

    def test_json_summary_names_the_throwaway_key_and_its_events(
        self, fresh_openbao: OpenBao, production: dict[str, str], tmp_path: Path
    ) -> None:
        workdir = tmp_path / "demo"
        result = run_cli(["demo", "--workdir", str(workdir), "--json"], production)
        assert result.returncode == 0, result.stderr
        summary = json.loads(result.stdout)
        assert summary["provider"] == "vault" and summary["throwaway_key"] is True
        assert summary["key_identifier"].startswith("heimdall-demo-")
        assert summary["after"] == {"kms_v1": 1980, "legacy": 0}
        assert summary["lifecycle"]["readable_after_retire"] is True
        assert summary["files"] == ["demo.db", "audit.log"]
        events = [json.loads(line) for line in (workdir / "audit.log").read_text().splitlines()]
        lifecycle = [e for e in events if e["event_type"] in ("key.create", "key.delete")]
        assert [(e["event_type"], e["result"]) for e in lifecycle] == [
            ("key.create", "intent"),
            ("key.create", "success"),
            ("key.delete", "intent"),
            ("key.delete", "success"),
        ]
        assert {e["key_identifier"] for e in lifecycle} == {summary["key_identifier"]}
        assert all(e["key_identifier"] != "heimdall-pii" for e in events if "key_identifier" in e)
        assert _key_state(fresh_openbao) == (1, 1)

    def test_a_failed_demo_deletes_its_key_too(
        self, fresh_openbao: OpenBao, production: dict[str, str], tmp_path: Path
    ) -> None:
        class StoppedError(Exception):
            pass

        keys_before = _transit_keys(fresh_openbao)
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line)
            if line.startswith("5. "):
                raise StoppedError  # after the rotation of the throwaway key, before its retirement

        with pytest.raises(StoppedError):
            run_demo(tmp_path / "demo", production, say)
        assert _transit_keys(fresh_openbao) == keys_before
        assert _key_state(fresh_openbao) == (1, 1)
        assert any(line.startswith("   deleted the throwaway Transit key") for line in lines)
