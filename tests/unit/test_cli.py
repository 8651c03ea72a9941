"""The ``heimdall-kms`` command line (SPEC §3): in-process through ``main`` and end to end.

In-process runs replace ``sys.stdin`` and read the environment through ``monkeypatch``; the
subprocess runs prove that a real ``heimdall-kms`` process shows no traceback. Every test
points ``HMD_AUDIT_LOG`` at a file in ``tmp_path`` and checks it holds no plaintext.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from heimdall_kms.cli import main
from heimdall_kms.cli.data_cmds import _print_report
from heimdall_kms.demo import customers
from heimdall_kms.envelope import parse
from heimdall_kms.envelope._json import MAX_ENVELOPE_CHARS
from heimdall_kms.errors import (
    AuditWriteError,
    ConfigurationError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    MalformedEnvelopeError,
    ModeViolationError,
)
from heimdall_kms.jobs.report import JobReport, RowFailure, TargetReport
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.service import MAX_PLAINTEXT_BYTES
from tests.legacy_data import legacy_envelope
from tests.unit.conftest import MASTER_HEX, keyring_master_hexes

SSN = "123-45-6789"
PREFIX = "heimdall-kms: error:"
USAGE = 2
DEMO_SSNS = [*customers().values(), "078-05-1120"]


@dataclass
class Run:
    code: int
    out: str
    err: str


Runner = Callable[..., Run]


def _cli_script() -> list[str]:
    beside = Path(sys.executable).with_name("heimdall-kms")
    found = str(beside) if beside.exists() else shutil.which("heimdall-kms")
    if found is None:
        return [sys.executable, "-c", "from heimdall_kms.cli import main; main()"]
    return [found]


HEIMDALL = _cli_script()


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """A clean HMD_* environment: kms mode, local provider, audit log in tmp_path."""
    for name in list(os.environ):
        if name.startswith(("HMD_", "VAULT_")):
            monkeypatch.delenv(name)
    env = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")  # as `local init` does
    return env


@pytest.fixture
def audit_log(cli_env: dict[str, str]) -> Path:
    return Path(cli_env["HMD_AUDIT_LOG"])


@pytest.fixture
def cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cli_env: dict[str, str]
) -> Runner:
    def run(*argv: str, stdin: bytes = b"") -> Run:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def subprocess_env(overrides: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    env.update(overrides)
    return env


def run_process(args: list[str], env: dict[str, str], stdin: bytes = b"") -> Run:
    done = subprocess.run(
        [*HEIMDALL, *args],
        input=stdin,
        capture_output=True,
        env=subprocess_env(env),
        timeout=120,
        check=False,
    )
    return Run(
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )


def assert_failed(run: Run, code: int | None = None, *, secrets: tuple[str, ...] = ()) -> str:
    """Non-zero, nothing on stdout, exactly one stderr line with the prefix, no traceback."""
    assert run.code != 0
    if code is not None:
        assert run.code == code, run.err
    assert run.out == ""
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith(PREFIX), run.err
    assert run.err.endswith("\n")
    for secret in (SSN, MASTER_HEX, *secrets):
        assert secret not in run.err
    return lines[0]


def assert_process_failed(run: Run, code: int | None = None) -> str:
    """As above for a real process, where the local provider may add its NOT FOR PRODUCTION
    warning line (logged on every start, by design) before the one error line."""
    assert run.code != 0
    if code is not None:
        assert run.code == code, run.err
    assert run.out == ""
    assert "Traceback" not in run.err
    errors = [
        line for line in run.err.splitlines() if not line.startswith("heimdall-kms: warning:")
    ]
    warnings = [line for line in run.err.splitlines() if line.startswith("heimdall-kms: warning:")]
    assert len(errors) == 1, run.err
    assert errors[0].startswith(PREFIX)
    assert all("NOT FOR PRODUCTION" in line for line in warnings)
    assert SSN not in run.err and MASTER_HEX not in run.err
    return errors[0]


def audit_events(path: Path, *secrets: str) -> list[dict[str, object]]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    for secret in (SSN, MASTER_HEX, *secrets):
        assert secret not in text
    return [json.loads(line) for line in text.splitlines()]


def keyring_secrets(cli_env: dict[str, str]) -> tuple[str, ...]:
    path = Path(cli_env["HMD_LOCAL_KEYRING"])
    return tuple(keyring_master_hexes(path)) if path.exists() else ()


# -- encrypt / decrypt -----------------------------------------------------------------------------


def test_round_trip_with_field_and_context(
    cli: Runner, audit_log: Path, cli_env: dict[str, str]
) -> None:
    sealed = cli("encrypt", "--field", "ssn", "--context", "record=r1", stdin=SSN.encode())
    assert sealed.code == 0, sealed.err
    assert "Traceback" not in sealed.err
    assert sealed.out.endswith("\n") and sealed.out.count("\n") == 1
    envelope = parse(sealed.out)
    assert envelope.encryption_version == "kms_v1"
    assert json.loads(sealed.out)["context"] == {"record": "r1", "field": "ssn"}
    assert SSN not in sealed.out

    opened = cli(
        "decrypt",
        "--actor",
        "alice",
        "--reason",
        "ticket-42",
        "--field",
        "ssn",
        "--context",
        "record=r1",
        stdin=sealed.out.encode(),
    )
    assert opened.code == 0, opened.err
    assert opened.out == SSN  # exactly the value: no newline added off a terminal
    assert SSN not in opened.err

    events = audit_events(audit_log, *keyring_secrets(cli_env))
    assert stat.S_IMODE(audit_log.stat().st_mode) & 0o077 == 0
    assert [e["event_type"] for e in events] == ["crypto.encrypt", "crypto.decrypt"]
    assert all(e["request_id"] and e["timestamp"] for e in events)
    assert events[0]["actor"] not in ("", "cli")  # the login user (tests/unit/test_actor.py)
    assert events[1]["actor"] == "alice"
    assert events[1]["reason"] == "ticket-42"
    assert all(e["result"] == "success" and e["field_identifier"] == "ssn" for e in events)


def test_round_trip_keeps_the_exact_bytes(cli: Runner) -> None:
    value = "José ☃ 日本\n  two lines \n"
    sealed = cli("encrypt", "--field", "name", stdin=value.encode("utf-8"))
    assert sealed.code == 0
    opened = cli("decrypt", "--actor", "a", "--reason", "r", stdin=sealed.out.encode())
    assert opened.code == 0
    assert opened.out == value


def test_encrypt_actor_is_audited(cli: Runner, audit_log: Path) -> None:
    assert cli("encrypt", "--actor", "loader", "--field", "f", stdin=b"v").code == 0
    assert audit_events(audit_log)[0]["actor"] == "loader"


def test_decrypt_without_stated_context(cli: Runner) -> None:
    sealed = cli("encrypt", "--context", "field=ssn", "--context", "record=r1", stdin=SSN.encode())
    opened = cli("decrypt", "--actor", "a", "--reason", "r", stdin=sealed.out.encode())
    assert (opened.code, opened.out) == (0, SSN)
    subset = cli(
        "decrypt",
        "--actor",
        "a",
        "--reason",
        "r",
        "--context",
        "record=r1",
        stdin=sealed.out.encode(),
    )
    assert (subset.code, subset.out) == (0, SSN)


def test_decrypt_with_a_different_field_fails(
    cli: Runner, audit_log: Path, cli_env: dict[str, str]
) -> None:
    sealed = cli("encrypt", "--field", "ssn", "--context", "record=r1", stdin=SSN.encode())
    for argv in (
        ["--field", "phone"],
        ["--field", "ssn", "--context", "record=r2"],
        ["--context", "table=other"],
    ):
        failed = cli("decrypt", "--actor", "a", "--reason", "r", *argv, stdin=sealed.out.encode())
        line = assert_failed(failed, IntegrityError.exit_code, secrets=keyring_secrets(cli_env))
        assert "authentication" in line
    events = audit_events(audit_log, *keyring_secrets(cli_env))
    assert [e["result"] for e in events] == ["success", "failure", "failure", "failure"]
    assert all(e["error_type"] == "integrity" for e in events[1:])


def test_kms_mode_refuses_a_legacy_envelope(cli: Runner) -> None:
    failed = cli(
        "decrypt", "--actor", "a", "--reason", "r", stdin=legacy_envelope(MASTER_HEX, SSN).encode()
    )
    assert_failed(failed, ModeViolationError.exit_code)


def test_hybrid_mode_reads_a_legacy_envelope(cli: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMD_ENCRYPTION_MODE", "hybrid")
    monkeypatch.setenv("HMD_PII_MASTER_KEY", MASTER_HEX)
    opened = cli(
        "decrypt", "--actor", "a", "--reason", "r", stdin=legacy_envelope(MASTER_HEX, SSN).encode()
    )
    assert (opened.code, opened.out) == (0, SSN)
    assert MASTER_HEX not in opened.err


# -- malformed input, each one line on stderr ------------------------------------------------------


def _sealed(cli: Runner) -> str:
    run = cli("encrypt", "--field", "ssn", stdin=SSN.encode())
    assert run.code == 0
    return run.out


DECRYPT = ("decrypt", "--actor", "a", "--reason", "r")


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        pytest.param(b"", MalformedEnvelopeError.exit_code, id="empty"),
        pytest.param(b"  \n\t", MalformedEnvelopeError.exit_code, id="blank"),
        pytest.param(b"not json", MalformedEnvelopeError.exit_code, id="not-json"),
        pytest.param(b"[1, 2, 3]", MalformedEnvelopeError.exit_code, id="json-array"),
        pytest.param(b'"kms_v1"', MalformedEnvelopeError.exit_code, id="json-string"),
        pytest.param(b'{"hello": "world"}', MalformedEnvelopeError.exit_code, id="other-object"),
        pytest.param(b'{"a": 1, "a": 2}', MalformedEnvelopeError.exit_code, id="duplicate-keys"),
        pytest.param(b"\xff\xfe{\x00}", InvalidInputError.exit_code, id="not-utf8"),
        pytest.param(
            b"x" * (MAX_ENVELOPE_CHARS + 1), InvalidInputError.exit_code, id="over-the-limit"
        ),
    ],
)
def test_decrypt_malformed_stdin(cli: Runner, audit_log: Path, stdin: bytes, code: int) -> None:
    assert_failed(cli(*DECRYPT, stdin=stdin), code)
    events = audit_events(audit_log)
    assert all(e["result"] == "failure" for e in events)


def test_decrypt_truncated_envelope(cli: Runner, cli_env: dict[str, str]) -> None:
    text = _sealed(cli)
    for broken in (text[: len(text) // 2], text[:-3]):
        assert_failed(cli(*DECRYPT, stdin=broken.encode()), MalformedEnvelopeError.exit_code)
    obj = json.loads(text)
    del obj["nonce"]
    assert_failed(cli(*DECRYPT, stdin=json.dumps(obj).encode()), MalformedEnvelopeError.exit_code)
    obj = json.loads(text)
    obj["ciphertext"] = obj["ciphertext"][:8]
    assert_failed(
        cli(*DECRYPT, stdin=json.dumps(obj).encode()),
        IntegrityError.exit_code,
        secrets=keyring_secrets(cli_env),
    )


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        pytest.param(b"\xff\xfe\xfd", InvalidInputError.exit_code, id="not-utf8"),
        pytest.param(b"7" * (MAX_PLAINTEXT_BYTES + 1), InvalidInputError.exit_code, id="too-large"),
    ],
)
def test_encrypt_malformed_stdin(cli: Runner, audit_log: Path, stdin: bytes, code: int) -> None:
    line = assert_failed(cli("encrypt", "--field", "f", stdin=stdin), code)
    assert "7777777777" not in line
    assert not audit_log.exists() or audit_events(audit_log) == []


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["encrypt", "--context", "novalue"], id="encrypt-context-novalue"),
        pytest.param([*DECRYPT, "--context", "novalue"], id="decrypt-context-novalue"),
        pytest.param(["encrypt", "--context", "=x"], id="context-empty-key"),
        pytest.param(["encrypt", "--context", "a=1", "--context", "a=2"], id="context-twice"),
        pytest.param(["encrypt", "--field", "ssn", "--context", "field=x"], id="field-contradicts"),
        pytest.param(
            [*DECRYPT, "--field", "ssn", "--context", "field=x"], id="decrypt-contradicts"
        ),
        pytest.param(["encrypt", "--field", ""], id="field-empty"),
        pytest.param(["decrypt", "--reason", "r"], id="missing-actor"),
        pytest.param(["decrypt", "--actor", "a"], id="missing-reason"),
        pytest.param(["decrypt"], id="missing-both"),
        pytest.param(["encrypt", "--bogus"], id="unknown-option"),
        pytest.param(["encrypt", "--field"], id="option-without-value"),
        pytest.param(["frobnicate"], id="unknown-command"),
    ],
)
def test_usage_errors(cli: Runner, audit_log: Path, argv: list[str]) -> None:
    line = assert_failed(cli(*argv, stdin=SSN.encode()), USAGE)
    assert "see --help" in line
    assert not audit_log.exists()


@pytest.mark.parametrize(
    ("argv", "detail"),
    [
        (["decrypt", "--reason", "r"], "--actor"),
        (["decrypt", "--actor", "a"], "--reason"),
        (["encrypt", "--context", "novalue"], "--context"),
        (["encrypt", "--field", "ssn", "--context", "field=x"], "--field"),
    ],
)
def test_usage_errors_name_the_option(cli: Runner, argv: list[str], detail: str) -> None:
    assert detail in assert_failed(cli(*argv, stdin=b"x"), USAGE)


@pytest.mark.parametrize("blank", ["", "   "])
def test_blank_actor_or_reason(cli: Runner, blank: str) -> None:
    text = _sealed(cli).encode()
    assert_failed(
        cli("decrypt", "--actor", blank, "--reason", "r", stdin=text), InvalidInputError.exit_code
    )
    assert_failed(
        cli("decrypt", "--actor", "a", "--reason", blank, stdin=text), InvalidInputError.exit_code
    )


@pytest.mark.parametrize(
    ("changes", "variable"),
    [
        pytest.param({"HMD_ENCRYPTION_MODE": "bogus"}, "HMD_ENCRYPTION_MODE", id="bad-mode"),
        pytest.param(
            {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX[:63]},
            "HMD_PII_MASTER_KEY",
            id="master-key-63",
        ),
        pytest.param(
            {"HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": "zz" + MASTER_HEX[2:]},
            "HMD_PII_MASTER_KEY",
            id="master-key-not-hex",
        ),
        pytest.param(
            {"HMD_PII_MASTER_KEY": MASTER_HEX}, "HMD_PII_MASTER_KEY", id="key-in-kms-mode"
        ),
        pytest.param({"HMD_KMS_PROVIDER": "vaultt"}, "HMD_KMS_PROVIDER", id="bad-provider"),
        pytest.param({"HMD_LOCAL_KEYRING": ""}, "HMD_LOCAL_KEYRING", id="no-keyring"),
        pytest.param({"HMD_AUDIT_LOG": "stdout"}, "HMD_AUDIT_LOG", id="audit-to-stdout"),
    ],
)
@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_configuration_errors(
    cli: Runner,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, str],
    variable: str,
    command: str,
) -> None:
    for name, value in changes.items():
        monkeypatch.setenv(name, value)
    argv = ["encrypt", "--field", "f"] if command == "encrypt" else list(DECRYPT)
    line = assert_failed(cli(*argv, stdin=b"{}"), ConfigurationError.exit_code)
    assert line.startswith(f"{PREFIX} {variable}")
    assert MASTER_HEX[:16] not in line and "zzabab" not in line


def test_keyring_readable_by_others(cli: Runner, cli_env: dict[str, str]) -> None:
    _sealed(cli)
    os.chmod(cli_env["HMD_LOCAL_KEYRING"], 0o644)
    line = assert_failed(
        cli("encrypt", "--field", "f", stdin=b"x"),
        ConfigurationError.exit_code,
        secrets=keyring_secrets(cli_env),
    )
    assert "HMD_LOCAL_KEYRING" in line


def test_unwritable_audit_log_fails_closed(
    cli: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A directory cannot be opened for appending: no audit, so no envelope and no plaintext.
    monkeypatch.setenv("HMD_AUDIT_LOG", str(tmp_path))
    assert_failed(cli("encrypt", "--field", "f", stdin=SSN.encode()), AuditWriteError.exit_code)
    assert_failed(cli(*DECRYPT, stdin=b"{}"), AuditWriteError.exit_code)


class TestLocalInit:
    """Only `local init` creates a keyring; every other command refuses a missing one."""

    def test_creates_it_0600_in_a_new_directory(
        self, cli: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        path = tmp_path / "new-dir" / "keyring.json"
        monkeypatch.setenv("HMD_LOCAL_KEYRING", str(path))
        run = cli("local", "init")
        assert run.code == 0, run.err
        assert str(path) in run.out and "heimdall-pii v1" in run.out
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert cli("encrypt", "--field", "f", stdin=b"x").code == 0

    def test_is_idempotent(self, cli: Runner, cli_env: dict[str, str]) -> None:
        path = Path(cli_env["HMD_LOCAL_KEYRING"])
        before = path.read_bytes()
        run = cli("local", "init")
        assert run.code == 0 and "unchanged" in run.out
        assert path.read_bytes() == before

    def test_adds_the_configured_key(
        self, cli: Runner, monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str]
    ) -> None:
        monkeypatch.setenv("HMD_KMS_KEY_ID", "second")
        assert "added key" in cli("local", "init").out
        assert set(json.loads(Path(cli_env["HMD_LOCAL_KEYRING"]).read_text())["keys"]) == {
            "heimdall-pii",
            "second",
        }

    @pytest.mark.parametrize("argv", [["encrypt", "--field", "f"], ["rotate"], ["keys"]])
    def test_a_mistyped_keyring_is_refused_not_created(
        self, cli: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str]
    ) -> None:
        typo = tmp_path / "keyrnig.json"
        monkeypatch.setenv("HMD_LOCAL_KEYRING", str(typo))
        line = assert_failed(cli(*argv, stdin=b"x"), ConfigurationError.exit_code)
        assert line.startswith(f"{PREFIX} HMD_LOCAL_KEYRING: {typo} does not exist")
        assert "local init" in line
        assert not typo.exists()
        assert not typo.with_name(typo.name + ".lock").exists()

    def test_a_key_missing_from_the_keyring_is_not_created_by_rotate(
        self, cli: Runner, monkeypatch: pytest.MonkeyPatch, cli_env: dict[str, str]
    ) -> None:
        path = Path(cli_env["HMD_LOCAL_KEYRING"])
        before = path.read_bytes()
        monkeypatch.setenv("HMD_KMS_KEY_ID", "no-such-key")
        assert_failed(cli("rotate"), KeyNotFoundError.exit_code)
        assert path.read_bytes() == before


def test_decrypt_huge_integer_is_a_malformed_envelope(cli: Runner) -> None:
    stdin = b'{"key_version": ' + b"1" * 5000 + b"}"
    assert_failed(cli(*DECRYPT, stdin=stdin), MalformedEnvelopeError.exit_code)


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[], ["encrypt"], ["decrypt"], ["demo"]])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(cli: Runner, argv: list[str], flag: str) -> None:
    run = cli(*argv, flag)
    assert run.code == 0
    assert "Usage:" in run.out
    assert run.err == ""


def test_version(cli: Runner) -> None:
    run = cli("--version")
    assert run.code == 0
    assert "heimdall-kms" in run.out


# -- end to end in a real process ------------------------------------------------------------------


def test_process_round_trip(cli_env: dict[str, str], audit_log: Path) -> None:
    sealed = run_process(
        ["encrypt", "--field", "ssn", "--context", "record=r1"], cli_env, SSN.encode()
    )
    assert sealed.code == 0, sealed.err
    assert "Traceback" not in sealed.err
    assert SSN not in sealed.out + sealed.err
    opened = run_process(
        [
            "decrypt",
            "--actor",
            "alice",
            "--reason",
            "t-1",
            "--field",
            "ssn",
            "--context",
            "record=r1",
        ],
        cli_env,
        sealed.out.encode(),
    )
    assert opened.code == 0, opened.err
    assert opened.out == SSN
    assert "Traceback" not in opened.err and SSN not in opened.err
    events = audit_events(audit_log, *keyring_secrets(cli_env))
    assert [e["event_type"] for e in events] == ["crypto.encrypt", "crypto.decrypt"]


def test_process_wrong_field_fails_without_traceback(
    cli_env: dict[str, str], audit_log: Path
) -> None:
    sealed = run_process(["encrypt", "--field", "ssn"], cli_env, SSN.encode())
    failed = run_process([*DECRYPT, "--field", "phone"], cli_env, sealed.out.encode())
    assert_process_failed(failed, IntegrityError.exit_code)
    assert audit_events(audit_log, *keyring_secrets(cli_env))[-1]["error_type"] == "integrity"


@pytest.mark.parametrize(
    ("args", "stdin", "code"),
    [
        pytest.param(list(DECRYPT), b"not json", MalformedEnvelopeError.exit_code, id="not-json"),
        pytest.param(list(DECRYPT), b"\xff\xfe", InvalidInputError.exit_code, id="not-utf8"),
        pytest.param(["decrypt", "--actor", "a"], b"{}", USAGE, id="missing-reason"),
        pytest.param(["encrypt", "--context", "novalue"], b"x", USAGE, id="bad-context"),
    ],
)
def test_process_malformed_input(
    cli_env: dict[str, str], args: list[str], stdin: bytes, code: int
) -> None:
    assert_process_failed(run_process(args, cli_env, stdin), code)


@pytest.mark.parametrize(
    "changes",
    [
        {"HMD_ENCRYPTION_MODE": "bogus"},
        {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX[:-1]},
    ],
    ids=["bad-mode", "bad-master-key"],
)
def test_process_configuration_error_is_one_line(
    cli_env: dict[str, str], changes: dict[str, str]
) -> None:
    failed = run_process(["encrypt", "--field", "f"], {**cli_env, **changes}, b"x")
    # Settings fail before any provider starts, so there is no warning either: one line.
    assert_failed(failed, ConfigurationError.exit_code)


@pytest.mark.parametrize("argv", [[], ["encrypt"], ["decrypt"], ["demo"]])
def test_process_help(cli_env: dict[str, str], argv: list[str]) -> None:
    run = run_process([*argv, "--help"], cli_env)
    assert run.code == 0
    assert "Usage:" in run.out
    assert "Traceback" not in run.err


# -- demo ------------------------------------------------------------------------------------------


def _assert_no_demo_ssn(*texts: str) -> None:
    joined = "\n".join(texts)
    for ssn in DEMO_SSNS:
        assert ssn not in joined
        assert ssn.replace("-", "") not in joined


def _without_chain_hashes(audit: str) -> str:
    # The chain's hex digests can contain any 9-digit run by chance; they hold no value data.
    events = [json.loads(line) for line in audit.splitlines()]
    return "\n".join(
        json.dumps({k: v for k, v in e.items() if k not in ("hash", "prev_hash")}) for e in events
    )


def test_demo(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    run = run_process(["demo", "--workdir", str(workdir)], {})
    assert run.code == 0, run.err
    assert "Traceback" not in run.err
    _assert_no_demo_ssn(run.out, run.err)
    assert "value moved to another record refused: yes" in run.out
    assert "legacy value refused in kms mode: yes" in run.out
    assert "after: 1,980 kms_v1, 0 legacy" in run.out
    assert "***-**-0002" in run.out  # masked, last four only
    audit = (workdir / "audit.log").read_text(encoding="utf-8")
    _assert_no_demo_ssn(_without_chain_hashes(audit))
    events = [json.loads(line) for line in audit.splitlines()]
    assert {e["event_type"] for e in events} == {
        "crypto.encrypt",
        "crypto.decrypt",
        "reencrypt.batch",
        "job.run",
        "key.rotate",
        "key.retire",
    }  # no key.create: the local keyring is the demo's own, made in its folder
    assert "all readable: yes" in run.out
    keyring = workdir / "local-keyring.json"
    assert stat.S_IMODE(keyring.stat().st_mode) == 0o600
    for master in keyring_master_hexes(keyring):
        assert master not in run.out + run.err + audit


def test_demo_json(cli: Runner, tmp_path: Path, cli_env: dict[str, str]) -> None:
    workdir = tmp_path / "demo-json"
    run = cli("demo", "--workdir", str(workdir), "--json")
    assert run.code == 0, run.err
    audit = (workdir / "audit.log").read_text(encoding="utf-8")
    _assert_no_demo_ssn(run.out, run.err, _without_chain_hashes(audit))
    summary = json.loads(run.out)
    assert summary["provider"] == "local"
    assert summary["verified"] == 1980  # 1,979 migrated + the one written in hybrid mode
    assert summary["migrated"] == 1979
    assert summary["moved_value_refused"] is True
    assert summary["legacy_refused_in_kms_mode"] is True
    assert summary["before"] == {"kms_v1": 0, "legacy": 1979}
    assert summary["after"] == {"kms_v1": 1980, "legacy": 0}
    assert summary["lifecycle"] == {
        "rotated_to": 2,
        "retire_refused_first": True,
        "rewrapped": 1980,
        "ciphertexts_untouched": True,
        "retired_below": 2,
        "readable_after_retire": True,
    }


class TestJobSummary:
    """The human summary of a job names each failed row with its reason, up to a bound."""

    def _report(self, failed: int) -> JobReport:
        report = JobReport("migrate", "run-1", dry_run=False)
        report.targets.append(TargetReport("t.ssn", total=failed, failed=failed))
        for i in range(failed):
            report.fail(RowFailure("t.ssn", str(i), "integrity", "the value does not authenticate"))
        return report

    def test_each_failure_shows_its_reason(self, capsys: pytest.CaptureFixture[str]) -> None:
        _print_report(self._report(3))
        out = capsys.readouterr().out
        assert "failed t.ssn id=2: integrity: the value does not authenticate" in out
        assert "more failed rows" not in out

    def test_many_failures_are_listed_up_to_a_bound(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        _print_report(self._report(1200))
        lines = capsys.readouterr().out.splitlines()
        assert sum(" id=" in line for line in lines) == 50
        assert lines[-1] == "  … and 1,150 more failed rows (--json lists 1,000)"
