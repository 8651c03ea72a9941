"""Mistakes a new user makes that used to be accepted silently, each now an error (issue 16).

Every test runs the installed ``heimdall-kms`` in a process of its own, as a user would. The
mistyped keyring is covered next to the other local-provider cases in
``tests/unit/test_cli.py::TestLocalInit``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from heimdall_kms.errors import AuditWriteError, InvalidInputError, ListenError
from heimdall_kms.providers.local import LocalKeyring

EXE = str(Path(sys.executable).with_name("heimdall-kms"))
PREFIX = "heimdall-kms: error:"


def run(
    argv: list[str], env: dict[str, str], *, stdin: str = "", python: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    return subprocess.run(
        [*(python or [EXE]), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if "warning:" not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX)
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def local(tmp_path: Path) -> dict[str, str]:
    keyring = tmp_path / "keyring.json"
    LocalKeyring(keyring).ensure_key("heimdall-pii")
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(keyring),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }


class TestAuditLogDirectory:
    """A HMD_AUDIT_LOG whose directory does not exist is an error; the directory is not made."""

    def test_encrypt_refuses_and_creates_nothing(
        self, local: dict[str, str], tmp_path: Path
    ) -> None:
        log = tmp_path / "mistyped-dir" / "audit.log"
        result = run(["encrypt", "--field", "f"], {**local, "HMD_AUDIT_LOG": str(log)}, stdin="x")
        line = one_error_line(result, AuditWriteError.exit_code)
        assert line.startswith(f"{PREFIX} HMD_AUDIT_LOG:") and str(log.parent) in line
        assert result.stdout == ""
        assert not log.parent.exists()

    def test_doctor_shows_a_failure(self, local: dict[str, str], tmp_path: Path) -> None:
        log = tmp_path / "mistyped-dir" / "audit.log"
        result = run(["doctor", "--json"], {**local, "HMD_AUDIT_LOG": str(log)})
        assert result.returncode == 3, result.stderr
        checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
        assert checks["audit log"]["status"] == "fail"
        assert "HMD_AUDIT_LOG" in checks["audit log"]["detail"]
        assert checks["canary"]["status"] == "skip"
        assert not log.parent.exists()

    def test_the_file_itself_is_still_created(self, local: dict[str, str]) -> None:
        assert run(["encrypt", "--field", "f"], local, stdin="x").returncode == 0
        assert Path(local["HMD_AUDIT_LOG"]).stat().st_size > 0


class TestAuditQueryOnOtherFiles:
    """`audit query` answers only about an audit log: any other file is refused, never `0`."""

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("not json at all\n", id="text"),
            pytest.param('{"id": 7, "ssn": "x"}\n', id="other-ndjson"),
        ],
    )
    def test_a_file_that_is_not_an_audit_log_is_refused(
        self, local: dict[str, str], tmp_path: Path, content: str
    ) -> None:
        other = tmp_path / "other.ndjson"
        other.write_text(content, encoding="utf-8")
        for extra in ([], ["--count"]):
            result = run(["audit", "query", str(other), *extra], local)
            line = one_error_line(result, InvalidInputError.exit_code)
            assert str(other) in line and "not an audit log" in line
            assert result.stdout == ""

    def test_a_damaged_line_after_good_ones_refuses_before_any_output(
        self, local: dict[str, str]
    ) -> None:
        for value in ("a", "b"):
            assert run(["encrypt", "--field", "f"], local, stdin=value).returncode == 0
        log = Path(local["HMD_AUDIT_LOG"])
        with log.open("a", encoding="utf-8") as handle:
            handle.write("garbage\n")
        result = run(["audit", "query", str(log)], local)
        line = one_error_line(result, InvalidInputError.exit_code)
        assert "line 3" in line
        assert result.stdout == ""

    def test_a_real_log_is_counted(self, local: dict[str, str]) -> None:
        for value in ("a", "b"):
            assert run(["encrypt", "--field", "f"], local, stdin=value).returncode == 0
        result = run(["audit", "query", local["HMD_AUDIT_LOG"], "--count"], local)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "2"


# A process in which hvac cannot be imported, as after `pip install heimdall-kms` alone.
WITHOUT_HVAC = [
    sys.executable,
    "-c",
    "import sys; sys.modules['hvac'] = None; from heimdall_kms.cli import main; main()",
]


class TestWithoutTheVaultExtra:
    """Commands that need hvac name the extra to install instead of an internal error."""

    ENV = {  # noqa: RUF012 - read only
        "HMD_KMS_PROVIDER": "vault",
        "HMD_VAULT_ADDR": "http://127.0.0.1:9",
        "HMD_VAULT_TOKEN": "s.not-used",
        "HMD_AUDIT_LOG": "stderr",
    }

    def test_vault_bootstrap(self) -> None:
        result = run(["vault", "bootstrap", "--dry-run"], self.ENV, python=WITHOUT_HVAC)
        line = one_error_line(result, 78)
        assert "pip install 'heimdall-kms[vault]'" in line

    def test_doctor(self) -> None:
        result = run(["doctor", "--json"], self.ENV, python=WITHOUT_HVAC)
        assert result.returncode == 3, result.stderr
        checks = {c["check"]: c for c in json.loads(result.stdout)["checks"]}
        assert checks["provider"]["status"] == "fail"
        assert "heimdall-kms[vault]" in checks["provider"]["fix"]
        assert "internal error" not in result.stderr

    def test_encrypt(self) -> None:
        result = run(["encrypt", "--field", "f"], self.ENV, stdin="x", python=WITHOUT_HVAC)
        assert "pip install 'heimdall-kms[vault]'" in one_error_line(result, 78)


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


class TestServeOnABusyPort:
    def test_one_line_and_its_own_exit_code(
        self, local: dict[str, str], tmp_path: Path, busy_port: int
    ) -> None:
        tokens = tmp_path / "tokens"
        tokens.write_text("admin " + "0" * 64 + "\n", encoding="utf-8")
        tokens.chmod(0o600)
        env = {**local, "HMD_ADMIN_TOKENS_FILE": str(tokens)}
        result = run(["serve", "--port", str(busy_port)], env)
        line = one_error_line(result, ListenError.exit_code)
        assert f"127.0.0.1:{busy_port}" in line and "in use" in line
        assert "INFO" not in result.stderr and "ERROR" not in result.stderr
