"""The operator actor: one default, the login user, for every command that takes ``--actor``."""

from __future__ import annotations

import getpass
import io
import json
import os
import sqlite3
from pathlib import Path

import pytest

from heimdall_kms.cli import main
from heimdall_kms.cli._actor import login_user
from heimdall_kms.providers.local import LocalKeyring

MASTER_HEX = "ab" * 32
LOGIN = "ops-alice"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Hybrid mode on the local provider, an empty table ``t(id, v)``, the login user set."""
    for name in list(os.environ):
        if name.startswith(("HMD_", "VAULT_")):
            monkeypatch.delenv(name)
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    (tmp_path / "policy.json").write_text(json.dumps({"rules": {"ssn": "encrypt"}}))
    env = {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        "HMD_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        "LOGNAME": LOGIN,
        "USER": LOGIN,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return tmp_path


TARGET = ["--table", "t", "--column", "v"]
COMMANDS = [
    pytest.param(["encrypt", "--field", "f"], id="encrypt"),
    pytest.param(["protect", "--policy", "{dir}/policy.json"], id="protect"),
    pytest.param(["rotate"], id="rotate"),
    pytest.param(["retire", "--below-version", "1", *TARGET], id="retire"),
    pytest.param(["migrate", *TARGET], id="migrate"),
    pytest.param(["reencrypt", *TARGET], id="reencrypt"),
    pytest.param(["journal", "purge", *TARGET], id="journal-purge"),
]


def run(world: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[dict[str, object]]:
    stdin = '{"id": 1, "ssn": "123-45-6789"}\n' if argv[0] == "protect" else "x"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin.encode())))
    assert main([part.format(dir=world) for part in argv]) == 0
    lines = (world / "audit.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


class TestDefaultActor:
    @pytest.mark.parametrize("argv", COMMANDS)
    def test_is_the_login_user(
        self, world: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
    ) -> None:
        events = run(world, monkeypatch, argv)
        assert events
        assert {event["actor"] for event in events} == {LOGIN}

    @pytest.mark.parametrize("argv", COMMANDS)
    def test_an_explicit_actor_wins(
        self, world: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
    ) -> None:
        events = run(world, monkeypatch, [*argv, "--actor", "change-bot"])
        assert {event["actor"] for event in events} == {"change-bot"}

    def test_help_says_so(self, capsys: pytest.CaptureFixture[str]) -> None:
        for command in ("encrypt", "rotate", "migrate", "reencrypt", "retire", "protect"):
            main([command, "--help"])
            assert "[default: (the login user)]" in " ".join(capsys.readouterr().out.split())


class TestLoginUser:
    def test_reads_the_login_name(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("LOGNAME", "someone")
        assert login_user() == "someone"

    def test_a_user_without_a_name_is_its_uid(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def nameless() -> str:
            raise OSError("no username set in the environment")

        monkeypatch.setattr(getpass, "getuser", nameless)
        assert login_user() == f"uid:{os.getuid()}"
