"""The PII policy engine: rules, nested paths, every action, streams, and the plaintext check."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import IntegrityError, InvalidInputError
from heimdall_kms.policy import (
    Action,
    PolicyEngine,
    load_policy,
    parse_policy,
    validate_no_plaintext,
)
from heimdall_kms.policy.engine import _Item
from heimdall_kms.policy.stream import MAX_LINE_BYTES, process_ndjson
from heimdall_kms.policy.walk import Leaf
from heimdall_kms.providers.base import HashKey
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from heimdall_kms.service import Crypto
from tests.legacy_data import legacy_envelope

POLICY = {
    "rules": {
        "ssn": "encrypt",
        "email": "hmac",
        "phone": "hash",
        "password": "scrub",
        "customer.address": "encrypt",
        "customer.name": "passthrough",
        "name": "scrub",
    },
    "default_action": "passthrough",
    "record_id": "id",
}
RECORD = {
    "id": 7,
    "ssn": "123-45-6789",
    "email": "ada@example.com",
    "phone": "+47 555 0100",
    "password": "hunter2",
    "name": "Ada",
    "customer": {"name": "Ada L.", "address": {"zip": 1234, "street": "Main St 1", "vip": True}},
    "orders": [{"email": "o1@example.com", "total": 10}, {"email": None, "total": 12}],
    "note": "kept",
}


class CountingLocal(LocalDevProvider):
    def __init__(self, keyring: LocalKeyring, name: str) -> None:
        super().__init__(keyring, name)
        self.calls: list[str] = []

    def wrap_many(self, deks: Sequence[bytearray], contexts: Sequence[Any]) -> Any:
        self.calls.append("wrap")
        return super().wrap_many(deks, contexts)

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        self.calls.append("hmac")
        return super().hmac_many(values, key)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[PolicyEngine]:
    keyring = LocalKeyring(tmp_path / "kr.json")
    keyring.ensure_key("k")
    settings = Settings.from_env(
        {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json")}
    )
    crypto = Crypto(settings, kms=CountingLocal(keyring, "k"), audit=MemoryAuditSink())
    yield PolicyEngine(crypto, parse_policy(POLICY))
    crypto.close()


def test_every_action_and_nested_paths(engine: PolicyEngine) -> None:
    out = engine.protect(RECORD)
    assert out["password"] == "[REDACTED]"
    assert out["name"] == "[REDACTED]"
    assert out["customer"]["name"] == "Ada L."  # the exact path beats the name rule
    assert out["phone"].startswith("sha256:")
    assert out["email"].startswith("hmac:local:v1:")
    assert out["orders"][0]["email"].startswith("hmac:local:v1:")  # a name rule at any depth
    assert out["orders"][1]["email"] is None  # nothing to protect
    assert out["orders"][0]["total"] == 10
    assert out["note"] == "kept"
    ssn = json.loads(out["ssn"])
    assert ssn["encryption_version"] == "kms_v1"
    assert ssn["context"] == {"field": "ssn", "record": "7"}
    zip_code = json.loads(out["customer"]["address"]["zip"])  # a rule on an object: every leaf
    assert zip_code["context"] == {
        "field": "customer.address.zip",
        "record": "7",
        "encoding": "json",
    }
    assert RECORD["ssn"] == "123-45-6789"  # the input is not modified
    back = engine.reveal(out, actor="alice", reason="t-1")
    assert back["ssn"] == "123-45-6789"
    assert back["customer"]["address"] == {"zip": 1234, "street": "Main St 1", "vip": True}
    assert back["email"] == out["email"]  # hashes stay hashes


def test_protection_is_idempotent_and_batched(engine: PolicyEngine) -> None:
    records = [dict(RECORD, id=i) for i in range(50)]
    out = engine.protect_many(records)
    assert engine.crypto.kms.calls == ["wrap", "hmac"]  # type: ignore[union-attr]
    again = engine.protect_many(out)
    # Everything but `hash` is left as it is; `hash` hashes again, as the engine does.
    assert [{k: v for k, v in r.items() if k != "phone"} for r in again] == [
        {k: v for k, v in r.items() if k != "phone"} for r in out
    ]
    assert [r["phone"] for r in again] == [
        "sha256:" + hashlib.sha256(r["phone"].encode()).hexdigest() for r in out
    ]
    assert engine.crypto.kms.calls == ["wrap", "hmac"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    ["a@b.c", "", "Zoë 山田", "sha256:" + "ab" * 32, "sha256:", "[REDACTED]", "hmac:x:y:z"],
)
def test_hash_is_the_engines_value_for_every_input(engine: PolicyEngine, value: str) -> None:
    # The engine: "sha256:" + lowercase hex SHA-256 of the UTF-8 value, whatever the value.
    expected = "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()
    assert engine.protect({"phone": value})["phone"] == expected


def test_hmac_is_stable_across_rotations_of_the_encryption_key(engine: PolicyEngine) -> None:
    first = engine.protect({"email": "a@b.c"})["email"]
    assert first.startswith("hmac:local:v1:")
    assert engine.protect({"email": "a@b.c"})["email"] == first
    assert engine.protect({"email": "other@b.c"})["email"] != first
    assert engine.crypto.kms is not None
    engine.crypto.kms.rotate()
    engine.crypto.kms.retire(2)
    # A search index: the encryption key's rotation and retirement never change it.
    assert engine.protect({"email": "a@b.c"})["email"] == first


def test_reveal_is_audited_per_field_and_refuses_moved_values(engine: PolicyEngine) -> None:
    one, two = engine.protect_many([dict(RECORD, id=1), dict(RECORD, id=2, ssn="999-99-9999")])
    sink = engine.crypto.audit
    assert isinstance(sink, MemoryAuditSink)
    sink.events.clear()
    engine.reveal(one, actor="alice", reason="ticket-9")
    decrypts = [e for e in sink.events if e.event_type.value == "crypto.decrypt"]
    assert {e.field_identifier for e in decrypts} == {
        "ssn",
        "customer.address.zip",
        "customer.address.street",
        "customer.address.vip",
    }
    assert all(e.actor == "alice" and e.reason == "ticket-9" for e in decrypts)
    moved = dict(one, ssn=two["ssn"])  # record 2's SSN pasted into record 1
    with pytest.raises(IntegrityError):
        engine.reveal(moved, actor="alice", reason="x")
    outcomes = engine.reveal_outcomes([one, moved], actor="alice", reason="x")
    assert outcomes[0]["ssn"] == "123-45-6789"  # type: ignore[index]
    assert isinstance(outcomes[1], IntegrityError)


def test_validate_no_plaintext_names_fields_never_values(engine: PolicyEngine) -> None:
    protected = engine.protect(RECORD)
    assert validate_no_plaintext([protected], engine.policy) == []
    leaked = dict(protected, ssn="123-45-6789", email="sha256:" + "0" * 64)
    found = validate_no_plaintext([protected, leaked], engine.policy)
    assert [(v.record, v.field) for v in found] == [(1, "ssn"), (1, "email")]
    assert "unkeyed" in found[1].reason
    assert all("123-45-6789" not in v.reason for v in found)


class TestGatesValidateWhatTheyAccept:
    """`check` and `protect` accept as protected only what is protected (issue 15 item 7)."""

    SSN = "123-45-6789"

    def forged(self, engine: PolicyEngine) -> dict[str, Any]:
        """A protected record with the SSN hidden in an envelope's extra field, a fake tag."""
        protected = engine.protect(RECORD)
        envelope = {**json.loads(protected["ssn"]), "note": self.SSN}
        return dict(protected, ssn=json.dumps(envelope), email="hmac:x:y:ada@example.com")

    def test_check_flags_an_envelope_with_an_extra_field_and_a_fake_tag(
        self, engine: PolicyEngine
    ) -> None:
        found = validate_no_plaintext([self.forged(engine)], engine.policy)
        assert [(v.record, v.field) for v in found] == [(0, "ssn"), (0, "email")]
        assert all(self.SSN not in v.reason for v in found)

    def test_a_legacy_envelope_with_an_extra_field_is_not_protected(
        self, engine: PolicyEngine
    ) -> None:
        legacy = legacy_envelope("ab" * 32, "x", "default-key-v1")
        record = dict(engine.protect(RECORD), ssn=legacy)
        assert validate_no_plaintext([record], engine.policy) == []
        record["ssn"] = json.dumps({**json.loads(legacy), "raw": self.SSN})
        assert [v.field for v in validate_no_plaintext([record], engine.policy)] == ["ssn"]

    @pytest.mark.parametrize(
        "tag",
        [
            "hmac:local:v1:" + "A" * 42 + "=",  # 31 bytes
            "hmac:local:v1:" + "A" * 44,  # no padding: not a 32-byte tag
            "hmac:local:v0:" + "A" * 43 + "=",
            "hmac:local:v1:" + "A" * 43 + "=:ada@example.com",
            "hmac:" + "A" * 43 + "=",
        ],
    )
    def test_a_tag_of_the_wrong_shape_is_not_protected(
        self, engine: PolicyEngine, tag: str
    ) -> None:
        record = dict(engine.protect(RECORD), email=tag)
        assert [v.field for v in validate_no_plaintext([record], engine.policy)] == ["email"]

    @pytest.mark.parametrize(
        "digest",
        [
            "sha256:" + "AB" * 32,  # upper-case hex is not the engine's form
            "sha256:" + "a" * 63,
            "sha256:" + "a" * 64 + "\n",
            "sha256:" + "g" * 64,
            "SHA256:" + "a" * 64,
        ],
    )
    def test_a_hash_of_the_wrong_shape_is_not_protected(
        self, engine: PolicyEngine, digest: str
    ) -> None:
        record = dict(engine.protect(RECORD), phone=digest)
        assert [v.field for v in validate_no_plaintext([record], engine.policy)] == ["phone"]

    def test_protect_protects_what_only_looked_protected(self, engine: PolicyEngine) -> None:
        """The forged values are sealed or hashed again, and then pass the check."""
        again = engine.protect(self.forged(engine))
        assert validate_no_plaintext([again], engine.policy) == []
        assert self.SSN not in json.dumps(again)
        assert "ada@example.com" not in json.dumps(again)


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"rules": {"ssn": "encrpyt"}}, "rule 'ssn': unknown action 'encrpyt'"),
        ({"rules": {"": "scrub"}}, "rule '' is not a field name or path"),
        ({"rules": {"a..b": "scrub"}}, "rule 'a..b' is not a field name or path"),
        ({"rules": ["ssn"]}, "'rules' must be an object"),
        ({"rules": {}, "default_action": "drop"}, "default_action: unknown action 'drop'"),
        ({"rules": {}, "colour": 1}, "unknown key 'colour'"),
        ({"rules": {}, "record_id": 5}, "'record_id' must be a field name"),
        (["ssn"], "must be an object"),
    ],
)
def test_malformed_policies_name_the_bad_rule(document: object, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_policy(document)
    assert fragment in str(caught.value)


def test_policy_files_json_and_yaml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("rules:\n  ssn: encrypt\n  email: hmac\ndefault_action: scrub\n")
    policy = load_policy(yaml_file)
    assert policy.rules == {"ssn": Action.ENCRYPT, "email": Action.HMAC}
    assert policy.default_action is Action.SCRUB
    bad = tmp_path / "p.json"
    bad.write_text('{"rules": {"ssn": ')
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_policy(bad)
    with pytest.raises(InvalidInputError, match="No such file"):
        load_policy(tmp_path / "missing.json")


def test_stream_reports_bad_lines_by_number_and_keeps_order(engine: PolicyEngine) -> None:
    lines = [json.dumps({"id": i, "ssn": f"{i:03d}"}) for i in range(7)]
    lines.insert(3, "not json {")
    lines.insert(5, "[1, 2]")
    out = io.StringIO()
    problems: list[str] = []
    report = process_ndjson(
        io.BytesIO(("\n".join(lines) + "\n").encode()),
        out,
        engine.protect_many,
        batch_size=2,
        report_problem=problems.append,
    )
    assert problems == ["line 4: not a JSON object", "line 6: not a JSON object"]
    assert report.written == 7
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["id"] for r in written] == list(range(7))
    assert "not json" not in out.getvalue()
    with pytest.raises(InvalidInputError, match="line 4"):
        process_ndjson(
            io.BytesIO(("\n".join(lines) + "\n").encode()),
            io.StringIO(),
            engine.protect_many,
            strict=True,
        )


def test_stream_skips_an_overlong_line_and_goes_on(engine: PolicyEngine) -> None:
    """A line over the bound is reported by number, never parsed, and the next one is read."""
    long_line = json.dumps({"id": 0, "ssn": "x" * MAX_LINE_BYTES})
    source = "\n".join([json.dumps({"id": 1}), long_line, json.dumps({"id": 2})]) + "\n"
    out = io.StringIO()
    problems: list[str] = []
    report = process_ndjson(
        io.BytesIO(source.encode()), out, engine.protect_many, report_problem=problems.append
    )
    assert problems == [f"line 2: longer than {MAX_LINE_BYTES} bytes"]
    assert [json.loads(line)["id"] for line in out.getvalue().splitlines()] == [1, 2]
    assert report.written == 2


def _cli(
    exe: str, env: dict[str, str], args: list[str], data: bytes
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([exe, *args], input=data, capture_output=True, env=env, check=False)


def test_cli_protect_reveal_check(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HMD_")},
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
    exe = str(Path(sys.executable).with_name("heimdall-kms"))
    data = (json.dumps(RECORD) + "\n{broken\n" + json.dumps(dict(RECORD, id=8)) + "\n").encode()
    protected = _cli(exe, env, ["protect", "--policy", str(policy)], data)
    assert protected.returncode == 3
    assert "line 2: not a JSON object" in protected.stderr.decode()
    assert "123-45-6789" not in (protected.stdout + protected.stderr).decode()
    checked = _cli(exe, env, ["check", "--policy", str(policy)], protected.stdout)
    assert checked.returncode == 0, checked.stdout
    # The same line with the plaintext under the same key first: Python's json reads the
    # envelope (the last), another reader the plaintext (the first).
    repeated = b'{"ssn": "123-45-6789", ' + protected.stdout.splitlines()[0][1:] + b"\n"
    doubled = _cli(exe, env, ["check", "--policy", str(policy)], repeated)
    assert doubled.returncode == 3, doubled.stderr
    assert b"line 1: repeats a key" in doubled.stderr
    assert b"123-45-6789" not in doubled.stdout + doubled.stderr
    revealed = _cli(
        exe,
        env,
        ["reveal", "--policy", str(policy), "--actor", "a", "--reason", "r"],
        protected.stdout,
    )
    assert revealed.returncode == 0, revealed.stderr
    assert [json.loads(x)["ssn"] for x in revealed.stdout.splitlines()] == ["123-45-6789"] * 2
    plain = _cli(exe, env, ["check", "--policy", str(policy)], data)
    assert plain.returncode == 3
    assert b"line 1: ssn: not encrypted" in plain.stdout
    assert b"123-45-6789" not in plain.stdout + plain.stderr
    assert "123-45-6789" not in (tmp_path / "audit.log").read_text()


def test_a_million_records_stream_in_bounded_memory(tmp_path: Path) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": {"password": "scrub", "phone": "hash"}}))
    generator = (
        "import sys\n"
        "w = sys.stdout.write\n"
        "for i in range(1_000_000):\n"
        '    w(\'{"id":%d,"password":"pw%d","phone":"555%d"}\\n\' % (i, i, i))\n'
    )
    # The CLI itself, reporting its own peak RSS from /proc (VmHWM starts afresh at exec;
    # getrusage's ru_maxrss is inherited from the forking parent, here the whole test run).
    launcher = (
        "import sys\n"
        "from heimdall_kms.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print('PEAK_KIB', hwm, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HMD_")},
        "HMD_ENCRYPTION_MODE": "legacy",
        "HMD_PII_MASTER_KEY": "ab" * 32,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    source = subprocess.Popen([sys.executable, "-c", generator], stdout=subprocess.PIPE)
    counted = subprocess.Popen(["wc", "-l"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    protect = subprocess.Popen(
        [sys.executable, "-c", launcher, "protect", "--policy", str(policy)],
        stdin=source.stdout,
        stdout=counted.stdin,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert source.stdout is not None
    assert counted.stdin is not None
    assert counted.stdout is not None
    assert protect.stderr is not None
    source.stdout.close()
    counted.stdin.close()
    errors = protect.stderr.read().decode()
    assert protect.wait(timeout=300) == 0, errors
    out = counted.stdout.read()
    assert counted.wait(timeout=60) == 0
    assert source.wait(timeout=60) == 0
    assert int(out.strip()) == 1_000_000
    peak_kib = int(errors.split("PEAK_KIB")[-1].split()[0])
    assert peak_kib < 150 * 1024, f"peak RSS {peak_kib} KiB"


class TestReprsHoldNoPlaintext:
    def test_a_leaf_and_a_deferred_value_show_where_not_what(self) -> None:
        leaf = Leaf(("ssn",), "ssn", Action.ENCRYPT, "123-45-6789")
        item = _Item({"ssn": "123-45-6789"}, leaf, "123-45-6789")
        for shown in (repr(leaf), repr(item), repr([item])):
            assert "123-45-6789" not in shown
        assert "ssn" in repr(item)
