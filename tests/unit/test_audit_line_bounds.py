"""One audit line can never wedge the audit log (issue 15 item 3): what goes into a line is
bounded before the operation runs, and the chain reader reads back any line the sink wrote."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result
from heimdall_kms.audit.verify import verify
from heimdall_kms.envelope import check_context
from heimdall_kms.envelope._json import MAX_CONTEXT_JSON_CHARS
from heimdall_kms.errors import InvalidInputError, MalformedEnvelopeError
from heimdall_kms.providers.local import LocalKeyring

# Within every per-entry limit (32 entries, 128-char keys, 1,024-char values), but each value
# escapes to six characters per character in JSON: a line of about 200 KB before the bound.
OVERSIZED = {f"k{i:02d}": "\x01" * 1024 for i in range(32)}
# Just inside the total bound: 15 entries of 1,024 plain characters (about 15.6 KB of JSON).
LARGEST = {f"k{i:02d}": "v" * 1024 for i in range(15)}


def _heimdall() -> list[str]:
    beside = Path(sys.executable).with_name("heimdall-kms")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from heimdall_kms.cli import main; main()"]


def run_cli(
    args: list[str], env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    return subprocess.run(
        [*_heimdall(), *args],
        input=stdin,
        env={**base, **env},
        capture_output=True,
        timeout=60,
        check=False,
    )


def append_from_another_process(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """A separate ``heimdall-kms encrypt`` appending to the same audit log."""
    return run_cli(["encrypt", "--field", "ssn"], env, b"123-45-6789")


def lifecycle_event(size: int) -> AuditEvent:
    return AuditEvent(
        EventType.REENCRYPT_BATCH,
        "migrate",
        "run-1",
        Result.FAILURE,
        details={"failed_ids": "x" * size},
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TestChainTailReader:
    @pytest.mark.parametrize("size", [65_400, 65_536, 65_600, 300_000, 2_000_000])
    def test_a_long_last_line_is_continued_by_a_fresh_writer(
        self, tmp_path: Path, size: int
    ) -> None:
        log = tmp_path / "audit.log"
        first = FileAuditSink(log)
        first.emit([lifecycle_event(10)])
        first.emit([lifecycle_event(size)])
        first.close()
        second = FileAuditSink(log)  # another process: nothing cached about the file's end
        second.emit([lifecycle_event(10)])
        second.close()
        assert verify(log, require_checkpoint=True).lines == 3

    def test_a_long_only_line_is_continued(self, tmp_path: Path) -> None:
        log = tmp_path / "audit.log"
        for details in (500_000, 10):
            sink = FileAuditSink(log)
            sink.emit([lifecycle_event(details)])
            sink.close()
        assert verify(log).lines == 2


class TestContextBound:
    def test_an_oversized_context_is_refused_with_a_typed_error(self) -> None:
        with pytest.raises(InvalidInputError, match=f"larger than {MAX_CONTEXT_JSON_CHARS}"):
            check_context(OVERSIZED)
        with pytest.raises(MalformedEnvelopeError):
            check_context(OVERSIZED, error=MalformedEnvelopeError)
        assert check_context(LARGEST) == LARGEST

    @pytest.mark.parametrize(
        "context",
        [
            {"k": "\U0001f600" * 1024, "l": "\U0001f600" * 1024},  # 12 chars each in JSON
            {f"k{i}": '"' * 1024 for i in range(9)},  # 2 chars each
        ],
    )
    def test_the_bound_counts_escapes(self, context: dict[str, str]) -> None:
        with pytest.raises(InvalidInputError):
            check_context(context)

    def test_through_the_facade_nothing_is_done_and_the_log_stays_writable(
        self, tmp_path: Path
    ) -> None:
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        }
        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        log = Path(env["HMD_AUDIT_LOG"])
        with heimdall_kms.from_env(env) as crypto:
            sealed = crypto.encrypt("123-45-6789", context=LARGEST)
            assert crypto.decrypt(sealed, actor="a", reason="r", context=LARGEST) == "123-45-6789"
            before = digest(log)
            with pytest.raises(InvalidInputError):
                crypto.encrypt("123-45-6789", context=OVERSIZED)
            with pytest.raises(InvalidInputError):
                crypto.decrypt(sealed, actor="a", reason="r", context=OVERSIZED)
            assert digest(log) == before  # nothing done, nothing audited
        appended = append_from_another_process(env)
        assert appended.returncode == 0, appended.stderr
        assert verify(log, require_checkpoint=True).lines == 3


class TestOperatorLabels:
    def test_an_oversized_actor_or_reason_stops_a_rotation_before_anything_is_done(
        self, tmp_path: Path
    ) -> None:
        keyring = tmp_path / "keyring.json"
        LocalKeyring(keyring).ensure_key("heimdall-pii")
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(keyring),
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        }
        before = digest(keyring)
        for extra in (["--actor", "x" * 100_000], ["--reason", "\x01" * 100_000]):
            result = run_cli(["rotate", *extra], env)
            assert result.returncode == InvalidInputError.exit_code, result.stderr
            errors = [line for line in result.stderr.splitlines() if b"error:" in line]
            assert len(errors) == 1 and b"than 512 characters" in errors[0]
        assert digest(keyring) == before
        assert not (tmp_path / "audit.log").exists() or not (tmp_path / "audit.log").read_text()
