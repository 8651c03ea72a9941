"""`heimdall-kms doctor` against real servers: OpenBao (plain and TLS), moto, the local provider."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import trustme

from heimdall_kms.audit.verify import verify
from heimdall_kms.doctor import DoctorReport, Status, run_doctor
from heimdall_kms.providers.local import LocalKeyring
from tests.servers import OpenBao, start_openbao
from tests.servers_aws import MotoServer, start_moto

pytestmark = pytest.mark.vault

MASTER_HEX = "ab" * 32


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_", "AWS_"))}
    return subprocess.run(
        [str(Path(sys.executable).with_name("heimdall-kms")), "doctor", *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        check=False,
    )


def statuses(report: DoctorReport) -> dict[str, Status]:
    return {check.name: check.status for check in report.checks}


def check(report: DoctorReport, name: str) -> tuple[Status, str, str]:
    (found,) = [c for c in report.checks if c.name == name]
    return found.status, found.detail, found.fix or ""


def approle_env(server: OpenBao, role: str, **extra: str) -> dict[str, str]:
    root = server.client()
    name = f"heimdall-kms-{role}"
    env = server.env(
        HMD_VAULT_AUTH_METHOD="approle",
        HMD_VAULT_ROLE_ID=root.auth.approle.read_role_id(name)["data"]["role_id"],
        HMD_VAULT_SECRET_ID=root.auth.approle.generate_secret_id(name)["data"]["secret_id"],
        HMD_VAULT_TOKEN="",
    )
    return {**env, **extra}


@pytest.fixture(scope="module")
def tls_vault() -> Iterator[OpenBao]:
    """An https OpenBao with its own CA, bootstrapped with the four roles."""
    server = start_openbao(tls=True)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
        subprocess.run(
            [str(Path(sys.executable).with_name("heimdall-kms")), "vault", "bootstrap"],
            env={**base, **server.env()},
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield server
    finally:
        server.stop()


# -- the whole path, green ------------------------------------------------------------------------


def test_all_green_with_the_app_role_over_tls(tls_vault: OpenBao, tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    db = tmp_path / "app.db"
    db.touch()
    env = approle_env(
        tls_vault, "app", HMD_AUDIT_LOG=str(audit), HMD_DATABASE_URL=f"sqlite:///{db}"
    )
    result = run([], env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    names = ["settings", "mode", "audit log", "database", "tls", "vault server", "vault token"]
    names += ["provider", "key", "canary"]
    assert [line[2:].split("  ")[0] for line in lines[: len(names)]] == names
    assert all(line.startswith("✓") for line in lines[: len(names)]), result.stdout
    assert "verified against HMD_VAULT_CACERT" in result.stdout
    # The TTL left is read just after the login: an hour, or a second less.
    token_line = r"approle login; TTL (1\.0 h|59 min), renewable; policies heimdall-kms-app$"
    assert re.search(token_line, result.stdout, re.MULTILINE)
    assert result.stdout.splitlines()[-1] == "10 ok, 0 warning(s), 0 failed, 0 skipped"
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(e["event_type"], e["actor"]) for e in events] == [
        ("crypto.encrypt", "doctor"),
        ("crypto.decrypt", "doctor"),
    ]
    assert events[1]["reason"] == "canary"
    verify(audit)
    for secret in (env["HMD_VAULT_SECRET_ID"], tls_vault.root_token):
        assert secret not in result.stdout + result.stderr + audit.read_text()


def test_json_output(tls_vault: OpenBao) -> None:
    result = run(["--json"], approle_env(tls_vault, "app", HMD_AUDIT_LOG="stderr"))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["counts"] == {"ok": 9, "warn": 0, "fail": 0, "skip": 1}
    assert {c["check"]: c["status"] for c in document["checks"]}["canary"] == "ok"


# -- TLS trust -------------------------------------------------------------------------------------


def test_https_without_the_ca_is_a_tls_failure_with_its_fix(tls_vault: OpenBao) -> None:
    env = approle_env(tls_vault, "app", HMD_VAULT_CACERT="")
    result = run([], env)
    assert result.returncode == 3
    assert "✗ tls" in result.stdout
    assert "fix: set HMD_VAULT_CACERT to the PEM file of the CA" in result.stdout
    assert "- vault server  see tls" in result.stdout
    err = result.stderr.strip().splitlines()
    assert err == ["heimdall-kms: error: doctor: 1 of 10 checks failed (tls)"]


def test_https_with_the_wrong_ca(tls_vault: OpenBao, tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(trustme.CA().cert_pem.bytes())
    report = run_doctor(approle_env(tls_vault, "app", HMD_VAULT_CACERT=str(other)))
    status, detail, fix = check(report, "tls")
    assert status is Status.FAIL
    assert "not signed by HMD_VAULT_CACERT" in detail and "right" not in detail
    assert "point HMD_VAULT_CACERT at the PEM" in fix


# -- authentication and the roles ----------------------------------------------------------------


def test_a_wrong_secret_id_fails_authentication_with_the_approle_fix(tls_vault: OpenBao) -> None:
    env = approle_env(tls_vault, "app", HMD_VAULT_SECRET_ID="not-the-secret-id")
    report = run_doctor(env)
    status, detail, fix = check(report, "vault token")
    assert status is Status.FAIL and "authentication failed" in detail
    assert "HMD_VAULT_SECRET_ID" in fix
    assert statuses(report)["canary"] is Status.SKIP
    assert "not-the-secret-id" not in json.dumps(report.to_dict())


def test_the_worker_role_fails_the_canary_unless_told_not_to_run_it(tls_vault: OpenBao) -> None:
    env = approle_env(tls_vault, "worker", HMD_AUDIT_LOG="stderr")
    report = run_doctor(env)
    status, detail, fix = check(report, "canary")
    assert status is Status.FAIL and "permission denied" in detail
    assert "heimdall-kms vault bootstrap" in fix
    assert check(report, "key")[0] is Status.OK  # the worker may read metadata
    quiet = run(["--no-canary"], env)
    assert quiet.returncode == 0, quiet.stdout
    assert "- canary        skipped (turned off)" in quiet.stdout


def test_a_root_token_is_a_warning(openbao: OpenBao) -> None:
    report = run_doctor(openbao.env(HMD_AUDIT_LOG="stderr"))
    status, detail, fix = check(report, "vault token")
    assert status is Status.WARN and "never expires" in detail and "root" in detail
    assert "vault bootstrap" in fix
    assert check(report, "tls")[0] is Status.WARN  # plain http, loopback
    assert not report.failed


def test_a_short_lived_static_token_is_a_warning(openbao: OpenBao) -> None:
    root = openbao.client()
    token = root.auth.token.create(policies=["default"], ttl="10m", renewable=False)
    env = openbao.env(HMD_VAULT_TOKEN=token["auth"]["client_token"])
    status, detail, _ = check(run_doctor(env, canary=False), "vault token")
    assert status is Status.WARN and "cannot log in again" in detail


def test_a_short_lived_token_in_a_vault_agent_file_is_not_a_warning(
    openbao: OpenBao, tmp_path: Path
) -> None:
    # A Vault Agent replaces the token in its sink; heimdall-kms reads the file again.
    root = openbao.client()
    token = root.auth.token.create(policies=["default"], ttl="10m", renewable=False)
    sink = tmp_path / "agent-token"
    sink.write_text(token["auth"]["client_token"] + "\n", encoding="utf-8")
    sink.chmod(0o600)
    env = openbao.env(HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(sink))
    status, detail, _ = check(run_doctor(env, canary=False), "vault token")
    assert status is Status.OK and "cannot log in again" not in detail, detail


# -- the key and the server ----------------------------------------------------------------------


def test_a_missing_key_says_how_to_create_it(openbao: OpenBao) -> None:
    report = run_doctor(openbao.env(HMD_KMS_KEY_ID="no-such-key", HMD_AUDIT_LOG="stderr"))
    status, _, fix = check(report, "key")
    assert status is Status.FAIL and "heimdall-kms vault bootstrap" in fix
    assert check(report, "canary")[0] is Status.SKIP  # reported once, not twice
    assert len(report.failed) == 1


def test_a_sealed_vault(fresh_openbao: OpenBao) -> None:
    fresh_openbao.client().sys.seal()
    report = run_doctor(fresh_openbao.env(HMD_AUDIT_LOG="stderr"))
    status, detail, fix = check(report, "vault server")
    assert status is Status.FAIL and "sealed" in detail and "operator unseal" in fix
    assert [c.name for c in report.failed] == ["vault server"]


def test_an_unreachable_vault_fails_fast() -> None:
    env = {
        "HMD_KMS_PROVIDER": "vault",
        "HMD_VAULT_ADDR": "http://127.0.0.1:9",
        "HMD_VAULT_TOKEN": "s.nothing",
    }
    report = run_doctor(env)
    status, detail, fix = check(report, "vault server")
    assert status is Status.FAIL and "cannot reach" in detail and "HMD_VAULT_ADDR" in fix


def test_rotation_due_is_a_warning(openbao: OpenBao) -> None:
    env = openbao.env(HMD_KEY_ROTATION_DAYS="0", HMD_AUDIT_LOG="stderr")
    status, detail, fix = check(run_doctor(env, canary=False), "key")
    assert (
        status is Status.WARN and "DUE NOW" in detail and fix == "rotate it: `heimdall-kms rotate`"
    )


# -- settings, mode, audit log, database ---------------------------------------------------------


def test_a_malformed_setting_is_a_line_not_an_exit(tmp_path: Path) -> None:
    env = {"HMD_KMS_PROVIDER": "vault", "HMD_VAULT_ADDR": "ftp://nowhere", "HMD_VAULT_TOKEN": "t"}
    result = run([], {**env, "HMD_AUDIT_LOG": str(tmp_path / "a.log")})
    assert result.returncode == 3
    assert "✗ settings      HMD_VAULT_ADDR: expected an http:// or https:// URL" in result.stdout
    assert "✓ audit log" in result.stdout  # the checks that do not need the settings still run
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_the_mode_is_skipped_when_the_settings_are_invalid(tmp_path: Path) -> None:
    env = {"HMD_KMS_PROVIDER": "vault", "HMD_VAULT_ADDR": "ftp://nowhere", "HMD_VAULT_TOKEN": "t"}
    report = run_doctor({**env, "HMD_AUDIT_LOG": str(tmp_path / "a.log")})
    assert check(report, "settings")[0] is Status.FAIL
    status, detail, _ = check(report, "mode")
    assert status is Status.SKIP and detail == "needs valid settings"


def test_kms_mode_with_an_env_key_is_a_mode_failure_and_the_rest_is_checked(
    openbao: OpenBao,
) -> None:
    report = run_doctor(openbao.env(HMD_PII_MASTER_KEY=MASTER_HEX, HMD_AUDIT_LOG="stderr"))
    status, detail, fix = check(report, "mode")
    assert status is Status.FAIL and "HMD_PII_MASTER_KEY is still set" in detail
    assert "remove the env key" in fix
    assert MASTER_HEX not in json.dumps(report.to_dict())
    assert [c.name for c in report.failed] == ["mode"]
    assert check(report, "canary")[0] is Status.OK


def test_hybrid_without_an_env_key_is_a_warning(openbao: OpenBao) -> None:
    report = run_doctor(openbao.env(HMD_ENCRYPTION_MODE="hybrid", HMD_AUDIT_LOG="stderr"))
    status, detail, _ = check(report, "mode")
    assert status is Status.WARN and "hybrid without an env key" in detail
    assert not report.failed


def test_an_unwritable_audit_log_fails_and_skips_the_canary(
    openbao: OpenBao, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    report = run_doctor(openbao.env(HMD_AUDIT_LOG=str(blocker / "audit.log")))
    status, _, fix = check(report, "audit log")
    assert status is Status.FAIL and "HMD_AUDIT_LOG" in fix
    assert check(report, "canary")[0] is Status.SKIP


def test_database_checks_and_the_password_is_never_shown(tmp_path: Path) -> None:
    env = {
        "HMD_ENCRYPTION_MODE": "legacy",
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    missing = run_doctor({**env, "HMD_DATABASE_URL": f"sqlite:///{tmp_path / 'none.db'}"})
    assert check(missing, "database")[0] is Status.FAIL
    url = "postgresql://heimdall:pa55word@127.0.0.1:9/app"
    report = run_doctor({**env, "HMD_DATABASE_URL": url})
    status, _, _ = check(report, "database")
    assert status is Status.FAIL and "pa55word" not in json.dumps(report.to_dict())
    assert check(report, "canary")[0] is Status.OK  # legacy mode: the env key round trip
    assert check(report, "mode")[0] is Status.WARN


# -- other providers, same checks ----------------------------------------------------------------


def test_the_local_provider(tmp_path: Path) -> None:
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    env = {
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    report = run_doctor(env)
    assert check(report, "mode")[1].endswith("NOT FOR PRODUCTION")
    assert statuses(report) == {
        "settings": Status.OK,
        "mode": Status.WARN,
        "audit log": Status.OK,
        "database": Status.SKIP,
        "provider": Status.OK,
        "key": Status.OK,
        "canary": Status.OK,
    }


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def test_aws_kms_on_moto(moto: MotoServer, tmp_path: Path) -> None:
    from heimdall_kms.providers.aws.client import create_key_for_alias

    create_key_for_alias(moto.client(), "alias/doctor")
    # A process of its own: boto3 reads the AWS credentials from the real environment.
    env = moto.env("alias/doctor", HMD_AUDIT_LOG=str(tmp_path / "a.log"))
    result = run(["--json"], {**env, "HMD_AWS_KEY_VERSIONING": "aliases"})
    assert result.returncode == 0, result.stdout
    checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
    assert "aws key alias/doctor" in checks["canary"]["detail"]
    missing = run(["--json"], moto.env("alias/none", HMD_AUDIT_LOG="stderr"))
    assert missing.returncode == 3
    key = {c["check"]: c for c in json.loads(missing.stdout)["checks"]}["key"]
    assert key["status"] == "fail" and "docs/providers/aws.md" in key["fix"]


def test_an_invalid_static_token_fails_once_with_its_fix(openbao: OpenBao) -> None:
    report = run_doctor(openbao.env(HMD_VAULT_TOKEN="s.not-a-real-token", HMD_AUDIT_LOG="stderr"))
    status, detail, fix = check(report, "vault token")
    assert status is Status.FAIL and "HTTP 403" in detail and "HMD_VAULT_TOKEN" in fix
    assert [c.name for c in report.failed] == ["vault token"]
    assert "s.not-a-real-token" not in json.dumps(report.to_dict())


def test_doctor_never_prints_the_token(openbao: OpenBao) -> None:
    token = openbao.client().auth.token.create(policies=["default"], ttl="1h")["auth"]
    result = run(["--json"], openbao.env(HMD_VAULT_TOKEN=token["client_token"]))
    assert token["client_token"] not in result.stdout + result.stderr
    assert hvac.Client(url=openbao.addr, token=token["client_token"]).is_authenticated()
