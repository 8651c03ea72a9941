"""The installed ``heimdall-kms`` command against a real OpenBao server, as a user runs it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.servers import OpenBao, run_cli

pytestmark = pytest.mark.vault

SSN = "123-45-6789"
LEGACY_KEY = "ab" * 32


def run(
    args: list[str], env: dict[str, str], stdin: str | bytes = ""
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, stdin, drop=("HMD_", "VAULT_"))


def assert_one_line_error(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("heimdall-kms: error:")
    assert result.stdout == b""
    return lines[0]


def test_encrypt_decrypt_round_trip(openbao: OpenBao, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    env = openbao.env(HMD_AUDIT_LOG=str(audit))
    sealed = run(["encrypt", "--field", "ssn", "--context", "record=r1"], env, SSN)
    assert sealed.returncode == 0, sealed.stderr
    envelope = json.loads(sealed.stdout)
    assert envelope["encryption_version"] == "kms_v1"
    assert envelope["context"] == {"field": "ssn", "record": "r1"}
    opened = run(
        ["decrypt", "--actor", "alice", "--reason", "ticket-42", "--field", "ssn"],
        env,
        sealed.stdout,
    )
    assert opened.returncode == 0, opened.stderr
    assert opened.stdout.decode() == SSN
    moved = run(
        ["decrypt", "--actor", "a", "--reason", "r", "--context", "record=r2"], env, sealed.stdout
    )
    assert "authentication" in assert_one_line_error(moved)
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["event_type"] for e in events] == [
        "crypto.encrypt",
        "crypto.decrypt",
        "crypto.decrypt",
    ]
    assert events[1]["actor"] == "alice" and events[1]["reason"] == "ticket-42"
    assert events[2]["result"] == "failure" and events[2]["error_type"] == "integrity"
    assert SSN not in audit.read_text()
    assert openbao.root_token not in audit.read_text()


def test_hybrid_reads_legacy_and_kms_refuses_it(openbao: OpenBao, tmp_path: Path) -> None:
    legacy_env = {
        "HMD_ENCRYPTION_MODE": "legacy",
        "HMD_PII_MASTER_KEY": LEGACY_KEY,
        "HMD_AUDIT_LOG": str(tmp_path / "a.log"),
    }
    old = run(["encrypt", "--field", "ssn"], legacy_env, SSN)
    assert old.returncode == 0, old.stderr
    assert set(json.loads(old.stdout)) == {"ciphertext", "nonce", "key_id", "algorithm"}
    hybrid = openbao.env(
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=LEGACY_KEY,
        HMD_AUDIT_LOG=str(tmp_path / "a.log"),
    )
    opened = run(["decrypt", "--actor", "a", "--reason", "r"], hybrid, old.stdout)
    assert opened.returncode == 0 and opened.stdout.decode() == SSN
    kms = openbao.env(HMD_AUDIT_LOG=str(tmp_path / "a.log"))
    refused = run(["decrypt", "--actor", "a", "--reason", "r"], kms, old.stdout)
    assert "kms" in assert_one_line_error(refused)
    assert refused.returncode == 67
    with_key = run(["encrypt"], {**kms, "HMD_PII_MASTER_KEY": LEGACY_KEY}, SSN)
    line = assert_one_line_error(with_key)
    assert "HMD_PII_MASTER_KEY" in line and LEGACY_KEY not in line


def test_bad_token_is_one_line(openbao: OpenBao, tmp_path: Path) -> None:
    env = openbao.env(HMD_VAULT_TOKEN="s.wrong-token", HMD_AUDIT_LOG=str(tmp_path / "a.log"))
    result = run(["encrypt", "--field", "ssn"], env, SSN)
    line = assert_one_line_error(result)
    assert "s.wrong-token" not in line
    assert result.returncode == 77
