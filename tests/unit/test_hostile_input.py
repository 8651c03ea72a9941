"""Hostile input: whatever arrives, only typed errors come out, and size limits hold before
anything is decoded (property-based, with hypothesis)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.envelope import parse
from heimdall_kms.envelope._json import MAX_ENVELOPE_CHARS
from heimdall_kms.errors import HeimdallKMSError, MalformedEnvelopeError
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import load_targets
from tests.legacy_data import legacy_envelope

ENVELOPE_KEYS = [
    "encryption_version",
    "provider",
    "key_identifier",
    "key_version",
    "algorithm",
    "ciphertext",
    "nonce",
    "encrypted_dek",
    "context",
    "encryption_timestamp",
    "key_id",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
envelope_like = st.dictionaries(st.sampled_from(ENVELOPE_KEYS), json_values, max_size=11)
FAST = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FAST
@given(st.text(max_size=300))
def test_parse_of_any_text_gives_an_envelope_or_the_typed_error(text: str) -> None:
    with contextlib.suppress(MalformedEnvelopeError):
        parse(text)


@FAST
@given(st.binary(max_size=300))
def test_parse_of_any_bytes(data: bytes) -> None:
    with contextlib.suppress(MalformedEnvelopeError):
        parse(data)


@FAST
@given(envelope_like)
def test_parse_of_envelope_shaped_objects(document: dict[str, Any]) -> None:
    for source in (document, json.dumps(document)):
        with contextlib.suppress(MalformedEnvelopeError):
            parse(source)


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory: pytest.TempPathFactory) -> heimdall_kms.Crypto:
    keyring = tmp_path_factory.mktemp("kr") / "k.json"
    LocalKeyring(keyring).ensure_key("heimdall-pii")
    return heimdall_kms.from_env(
        {
            "HMD_ENCRYPTION_MODE": "hybrid",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(keyring),
            "HMD_PII_MASTER_KEY": "ab" * 32,
        },
        audit=MemoryAuditSink(),
    )


@FAST
@given(
    document=envelope_like,
    context=st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
)
def test_decrypt_of_anything_raises_only_typed_errors(
    hybrid: heimdall_kms.Crypto, document: dict[str, Any], context: dict[str, str] | None
) -> None:
    with contextlib.suppress(HeimdallKMSError):
        hybrid.decrypt(json.dumps(document), actor="fuzz", reason="fuzz", context=context)


@FAST
@given(st.data())
def test_mutated_real_envelopes_never_decrypt_to_something_else(
    hybrid: heimdall_kms.Crypto, data: st.DataObject
) -> None:
    real = [
        hybrid.encrypt("123-45-6789", context={"record": "1"}).to_json(),
        legacy_envelope("ab" * 32, "123-45-6789"),
    ]
    text = data.draw(st.sampled_from(real))
    position = data.draw(st.integers(0, len(text) - 1))
    replacement = data.draw(st.characters(codec="ascii"))
    mutated = text[:position] + replacement + text[position + 1 :]
    try:
        result = hybrid.decrypt(mutated, actor="fuzz", reason="fuzz")
    except HeimdallKMSError:
        return
    assert result == "123-45-6789"  # a mutation that still opens must open to the same value


def test_a_100_mb_envelope_is_refused_before_it_is_decoded() -> None:
    huge = '{"ciphertext": "' + "A" * (100 * 1024 * 1024) + '"}'
    started = time.perf_counter()
    with pytest.raises(MalformedEnvelopeError, match=f"larger than {MAX_ENVELOPE_CHARS}"):
        parse(huge)
    assert time.perf_counter() - started < 1.0  # a length check, not a 100 MB JSON parse


def test_the_cli_stops_reading_a_100_mb_stdin(tmp_path: Path) -> None:
    env = {
        "HMD_ENCRYPTION_MODE": "legacy",
        "HMD_PII_MASTER_KEY": "ab" * 32,
        "HMD_AUDIT_LOG": str(tmp_path / "a.log"),
        "PATH": "/usr/bin:/bin",
    }
    exe = str(Path(sys.executable).with_name("heimdall-kms"))
    run = subprocess.run(
        [exe, "decrypt", "--actor", "a", "--reason", "r"],
        input=b"{" + b" " * (100 * 1024 * 1024),
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert run.returncode == 64
    assert (
        run.stderr.decode()
        .strip()
        .startswith("heimdall-kms: error: envelope on stdin is larger than")
    )
    assert (
        not (tmp_path / "a.log").exists()
        or "crypto.decrypt" not in (tmp_path / "a.log").read_text()
    )


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=400))
def test_targets_files_of_any_content(text: str) -> None:
    path = Path(f"/tmp/heimdall-fuzz-targets-{id(text)}.toml")
    path.write_text(text, encoding="utf-8")
    try:
        with contextlib.suppress(HeimdallKMSError):
            load_targets(path)
    finally:
        path.unlink(missing_ok=True)


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(
        st.sampled_from(
            [
                "--field",
                "--context",
                "--actor",
                "--reason",
                "x",
                "=",
                "k=v",
                "",
                "-",
                "--",
                "field=a",
                "\x00",
                "é=ü",
            ]
        ),
        max_size=6,
    ),
    stdin=st.binary(max_size=60),
)
def test_cli_arguments_never_crash(
    args: list[str],
    stdin: bytes,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HMD_ENCRYPTION_MODE", "legacy")
    monkeypatch.setenv("HMD_PII_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("HMD_AUDIT_LOG", str(tmp_path / "fuzz-audit.log"))
    for command in ("encrypt", "decrypt"):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        code = main([command, *args])
        _, err = capsys.readouterr()
        assert code != 70, err  # 70 is "internal error": a crash we did not type
        if code != 0:
            assert len([line for line in err.splitlines() if line.strip()]) == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_policy_files_of_any_content(text: str) -> None:
    from heimdall_kms.policy import load_policy

    for suffix in (".json", ".yaml"):
        path = Path(f"/tmp/heimdall-fuzz-policy-{id(text)}{suffix}")
        path.write_text(text, encoding="utf-8")
        try:
            with contextlib.suppress(HeimdallKMSError):
                load_policy(path)
        finally:
            path.unlink(missing_ok=True)


@FAST
@given(json_values)
def test_policy_documents_of_any_shape(document: Any) -> None:
    from heimdall_kms.policy import parse_policy

    with contextlib.suppress(HeimdallKMSError):
        parse_policy(document)
