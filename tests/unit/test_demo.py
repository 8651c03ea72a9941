"""``heimdall-kms demo`` on the local provider: its own key, database and audit log only, and a
summary a security lead can read (issue 15 item 1, issue 16 item 5)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from heimdall_kms.providers.local import LocalKeyring

PREFIX = "heimdall-kms: error:"


def _heimdall() -> list[str]:
    beside = Path(sys.executable).with_name("heimdall-kms")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from heimdall_kms.cli import main; main()"]


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    return subprocess.run(
        [*_heimdall(), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def production(tmp_path: Path) -> dict[str, str]:
    """Production-like settings: a local keyring with a key, an audit log, a database."""
    keyring = tmp_path / "prod" / "keyring.json"
    LocalKeyring(keyring).ensure_key("heimdall-pii")
    audit = tmp_path / "prod" / "audit.log"
    audit.write_text("")
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_KMS_KEY_ID": "heimdall-pii",
        "HMD_LOCAL_KEYRING": str(keyring),
        "HMD_AUDIT_LOG": str(audit),
        "HMD_DATABASE_URL": f"sqlite:///{tmp_path / 'prod' / 'app.db'}",
    }


class TestDemoTouchesNothingConfigured:
    def test_configured_keyring_audit_log_and_database_are_left_alone(
        self, production: dict[str, str], tmp_path: Path
    ) -> None:
        keyring, audit = Path(production["HMD_LOCAL_KEYRING"]), Path(production["HMD_AUDIT_LOG"])
        before = (_digest(keyring), _digest(audit))
        result = _run(["demo", "--workdir", str(tmp_path / "demo")], production)
        assert result.returncode == 0, result.stderr
        assert (_digest(keyring), _digest(audit)) == before
        key = LocalKeyring(keyring).read_key("heimdall-pii")
        assert list(key["versions"]) == ["1"] and key["min_decryption_version"] == 1
        assert not (tmp_path / "prod" / "app.db").exists()
        assert (tmp_path / "demo" / "local-keyring.json").exists()

    def test_a_cloud_provider_is_refused_before_anything_is_done(self, tmp_path: Path) -> None:
        env = {
            "HMD_KMS_PROVIDER": "aws",
            "HMD_KMS_KEY_ID": "alias/heimdall-pii",
            "AWS_REGION": "eu-west-1",
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        }
        result = _run(["demo", "--workdir", str(tmp_path / "demo")], env)
        lines = result.stderr.splitlines()
        assert result.returncode != 0 and result.stdout == ""
        assert len(lines) == 1 and lines[0].startswith(PREFIX), result.stderr
        assert "HMD_KMS_PROVIDER" in lines[0] and "vault" in lines[0]
        assert not (tmp_path / "demo" / "demo.db").exists()
        assert not (tmp_path / "audit.log").exists()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    """One demo on the local provider, read as a security lead would."""
    workdir = tmp_path_factory.mktemp("demo")
    result = _run(["demo", "--workdir", str(workdir)], {})
    assert result.returncode == 0, result.stderr
    return result


class TestDemoReadsWell:
    def test_the_rewrap_progress_is_not_called_migrate(
        self, run: subprocess.CompletedProcess[str]
    ) -> None:
        labels = {line.split(" customers.ssn:")[0].strip() for line in run.stderr.splitlines()}
        assert labels == {"migrate", "reencrypt rewrap"}, run.stderr

    def test_left_alone_is_explained(self, run: subprocess.CompletedProcess[str]) -> None:
        line = next(line for line in run.stdout.splitlines() if line.startswith("1. "))
        assert "21 left alone (21 [REDACTED]: not envelopes" in line

    def test_the_summary_has_no_python_dicts(self, run: subprocess.CompletedProcess[str]) -> None:
        summary = run.stdout.split("\nsummary\n", 1)[1]
        assert "{" not in summary and "}" not in summary
        assert "after: 1,980 kms_v1, 0 legacy" in summary
        assert "crypto.decrypt" in summary

    def test_not_for_production_is_said_once(self, run: subprocess.CompletedProcess[str]) -> None:
        assert (run.stdout + run.stderr).count("NOT FOR PRODUCTION") == 1

    def test_the_audit_chain_is_shown_verified(self, run: subprocess.CompletedProcess[str]) -> None:
        lines = run.stdout.splitlines()
        step = next(line for line in lines if line.startswith("6. heimdall-kms audit verify"))
        assert "intact" in step
        chain = next(line for line in lines if line.startswith("  audit chain:"))
        assert "intact" in chain

    def test_help_says_what_it_does(self) -> None:
        result = _run(["demo", "--help"], {})
        text = " ".join(result.stdout.split())
        assert "throwaway Transit key" in text and "deletes it at the end" in text
        assert "HMD_AUDIT_LOG" in text and "never touched" in text
