"""The rotation lock file on a host without a usable temporary directory (a read-only root, as
in deploy/kubernetes/cronjob-rotate.yaml before it mounted /tmp): a run that finds nothing due
needs no lock file; a due one is refused in one line naming HMD_ROTATION_LOCK_FILE."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from heimdall_kms.cli import main


def no_temporary_directory() -> str:
    # What the standard library raises when no candidate directory is writable.
    raise FileNotFoundError(2, "No usable temporary directory found in ['/tmp', '/var/tmp']")


@pytest.fixture
def read_only_host(
    tmp_path: Path, local_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The rotate CronJob's settings before the fix: audit log on stderr, no database URL."""
    settings = {name for name in os.environ if name.startswith(("HMD_", "VAULT_"))}
    for name in settings - local_env.keys():
        monkeypatch.delenv(name)
    for name, value in {**local_env, "HMD_AUDIT_LOG": "stderr"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "gettempdir", no_temporary_directory)
    return tmp_path


def test_a_run_with_nothing_due_needs_no_lock_file(
    read_only_host: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["rotate", "--if-due", "--json", "--actor", "cron"]) == 0
    assert json.loads(capsys.readouterr().out)["rotated"] is False


def test_a_due_run_without_a_lock_location_is_a_one_line_configuration_error(
    read_only_host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HMD_KEY_ROTATION_DAYS", "0")
    assert main(["rotate", "--if-due", "--json", "--actor", "cron"]) == 78
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if '"hash"' not in line]
    assert len(errors) == 1, captured.err
    assert "HMD_ROTATION_LOCK_FILE" in errors[0]
    assert "internal error" not in errors[0] and "--" not in errors[0]
    assert captured.out == ""
    keyring = json.loads((read_only_host / "keyring.json").read_text(encoding="utf-8"))
    assert [len(key["versions"]) for key in keyring["keys"].values()] == [1]  # nothing rotated


def test_the_configured_lock_file_is_used_without_a_temporary_directory(
    read_only_host: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HMD_KEY_ROTATION_DAYS", "0")
    monkeypatch.setenv("HMD_ROTATION_LOCK_FILE", str(read_only_host / "rotate.lock"))
    assert main(["rotate", "--if-due", "--json", "--actor", "cron"]) == 0
    assert json.loads(capsys.readouterr().out)["rotated"] is True
    assert (read_only_host / "rotate.lock").is_file()
