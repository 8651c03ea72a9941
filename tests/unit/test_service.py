"""The ``Crypto`` facade (SPEC §5) on the real local provider, with an in-memory audit sink.

The counting provider below is the real ``LocalDevProvider`` with counters and a record of the
buffers it handled: nothing is faked, it only lets the tests see how often the KMS is called
and whether DEK buffers are wiped afterwards.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES

import heimdall_kms
from heimdall_kms.audit import AuditEvent, FileAuditSink, MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope, parse
from heimdall_kms.errors import (
    AuditWriteError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    MalformedEnvelopeError,
    ModeViolationError,
)
from heimdall_kms.providers import KeyContext, WrappedKey
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from heimdall_kms.service import MAX_PLAINTEXT_BYTES, Crypto
from tests.legacy_data import legacy_envelope
from tests.unit.conftest import (
    KEY_NAME,
    MASTER_HEX,
    OLD_LEGACY_HEX,
    Facade,
    keyring_master_hexes,
    secret_forms,
)

SSN = "123-45-6789"
CTX = {"field": "ssn", "record": "r1"}
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


class CountingProvider(LocalDevProvider):
    """The real local provider, counted, keeping the DEK buffers that passed through it."""

    def __init__(self, keyring: LocalKeyring, key_name: str) -> None:
        super().__init__(keyring, key_name)
        self.wrap_calls = 0
        self.unwrap_calls = 0
        self.deks_in: list[bytearray] = []
        self.dek_copies: list[bytes] = []
        self.deks_out: list[bytearray] = []
        self.wrapped_in: list[str] = []

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        self.wrap_calls += 1
        self.deks_in.extend(deks)
        self.dek_copies.extend(bytes(dek) for dek in deks)
        return super().wrap_many(deks, contexts)

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        self.unwrap_calls += 1
        self.wrapped_in.extend(wrapped)
        results = super().unwrap_many(wrapped, contexts)
        self.deks_out.extend(r for r in results if isinstance(r, bytearray))
        return results


class FailingSink(MemoryAuditSink):
    def emit(self, events: Sequence[AuditEvent]) -> None:
        raise AuditWriteError("cannot write audit log: disk full")


@dataclasses.dataclass(frozen=True)
class Counted(Facade):
    """A ``Crypto`` built on the counting provider, which the test reads afterwards."""

    kms: CountingProvider


def build(env: dict[str, str], audit: Any = None) -> Facade:
    sink = audit if audit is not None else MemoryAuditSink()
    return Facade(heimdall_kms.from_env(env, audit=sink), sink)


def build_counting(env: dict[str, str], audit: Any = None) -> Counted:
    settings = Settings.from_env(env)
    kms = CountingProvider.from_settings(settings)
    sink = audit if audit is not None else MemoryAuditSink()
    return Counted(Crypto(settings, kms=kms, audit=sink), sink, kms)


def edit(envelope_json: str, **changes: Any) -> str:
    obj = json.loads(envelope_json)
    obj.update(changes)
    return json.dumps(obj)


def flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 0x01
    return base64.b64encode(bytes(raw)).decode("ascii")


def events_json(sink: MemoryAuditSink) -> str:
    return "\n".join(json.dumps(event.to_dict(), ensure_ascii=False) for event in sink.events)


@pytest.fixture
def facade(local_env: dict[str, str]) -> Facade:
    """kms mode on the local provider (built by ``from_env``, as an application builds it)."""
    return build(local_env)


@pytest.fixture
def counted(local_env: dict[str, str]) -> Counted:
    """kms mode on the counting local provider."""
    return build_counting(local_env)


def independent_legacy_decrypt(text: str, key_hex: str) -> str:
    obj = json.loads(text)
    sealed = base64.b64decode(obj["ciphertext"])
    cipher = AES.new(bytes.fromhex(key_hex), AES.MODE_GCM, nonce=base64.b64decode(obj["nonce"]))
    return cipher.decrypt_and_verify(sealed[:-16], sealed[-16:]).decode("utf-8")


def _drop_all_keys(keyring_path: Path) -> None:
    document = json.loads(keyring_path.read_text(encoding="utf-8"))
    document["keys"] = {}
    keyring_path.write_text(json.dumps(document), encoding="utf-8")  # keeps mode 0600


class TestRoundTrip:
    """encrypt then decrypt through the local provider: the envelope and its keys."""

    @pytest.mark.parametrize("plaintext", [SSN, "", "José ☃ 日本 🔑", "x" * 10_000, "a\nb\x00c"])
    def test_round_trip(self, facade: Facade, plaintext: str) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(plaintext, context=CTX)
        assert crypto.decrypt(envelope, actor="alice", reason="t-1", context=CTX) == plaintext
        assert crypto.decrypt(envelope.to_json(), actor="alice", reason="t-1") == plaintext

    def test_kms_envelope_shape(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        assert isinstance(envelope, KmsV1Envelope)
        obj = json.loads(envelope.to_json())
        assert obj["encryption_version"] == "kms_v1"
        assert obj["provider"] == "local"
        assert obj["key_identifier"] == KEY_NAME
        assert obj["key_version"] == 1
        assert obj["algorithm"] == "AES-256-GCM"
        assert obj["context"] == CTX
        assert obj["encrypted_dek"].startswith("local:v1:")
        assert TIMESTAMP.fullmatch(obj["encryption_timestamp"])
        assert len(base64.b64decode(obj["nonce"])) == 12
        assert len(base64.b64decode(obj["ciphertext"])) == len(SSN) + 16
        assert SSN not in envelope.to_json()

    def test_decrypt_accepts_every_input_form(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        text = envelope.to_json()
        for source in (envelope, text, text.encode("utf-8"), json.loads(text)):
            assert crypto.decrypt(source, actor="a", reason="r") == SSN

    def test_kms_v1_matches_an_independent_aes_gcm(self, counted: Counted) -> None:
        # pycryptodome, with the AAD built from SPEC/STYLE: sorted compact JSON of v, alg, ctx.
        crypto = counted.crypto
        kms = counted.kms
        envelope = crypto.encrypt(SSN, context=CTX)
        assert isinstance(envelope, KmsV1Envelope)
        (dek,) = kms.dek_copies
        aad = json.dumps(
            {"v": "kms_v1", "alg": "AES-256-GCM", "ctx": CTX}, sort_keys=True, separators=(",", ":")
        ).encode()
        cipher = AES.new(dek, AES.MODE_GCM, nonce=envelope.nonce)
        cipher.update(aad)
        body, tag = envelope.ciphertext[:-16], envelope.ciphertext[-16:]
        assert cipher.decrypt_and_verify(body, tag) == SSN.encode()

    def test_fresh_dek_and_nonce_per_value(self, facade: Facade) -> None:
        crypto = facade.crypto
        first = crypto.encrypt(SSN, context=CTX)
        second = crypto.encrypt(SSN, context=CTX)
        batch = crypto.encrypt_many([(SSN, CTX), (SSN, CTX)])
        envelopes = [first, second, *batch]
        assert all(isinstance(e, KmsV1Envelope) for e in envelopes)
        kms_envelopes = [e for e in envelopes if isinstance(e, KmsV1Envelope)]
        assert len({e.ciphertext for e in kms_envelopes}) == 4
        assert len({e.nonce for e in kms_envelopes}) == 4
        assert len({e.encrypted_dek for e in kms_envelopes}) == 4

    def test_fresh_dek_per_value_at_the_provider(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        crypto.encrypt_many([(SSN, CTX)] * 5)
        assert len(set(kms.dek_copies)) == 5
        assert all(len(dek) == 32 for dek in kms.dek_copies)

    def test_context_none_is_the_empty_context(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN)
        assert isinstance(envelope, KmsV1Envelope)
        assert dict(envelope.context) == {}
        assert crypto.decrypt(envelope, actor="a", reason="r") == SSN
        with pytest.raises(IntegrityError):
            crypto.decrypt(envelope, actor="a", reason="r", context={"field": "ssn"})


class TestContextBinding:
    """The context and every sealed part are bound: any change fails to decrypt."""

    @pytest.mark.parametrize(
        "moved",
        [
            {"field": "ssn", "record": "r2"},
            {"field": "phone", "record": "r1"},
            {"field": "ssn"},
            {"field": "ssn", "record": "r1", "table": "customers"},
            {},
        ],
    )
    def test_moved_context_fails(self, facade: Facade, moved: dict[str, str]) -> None:
        crypto = facade.crypto
        text = crypto.encrypt(SSN, context=CTX).to_json()
        forged = edit(text, context=moved)
        with pytest.raises(IntegrityError) as info:
            crypto.decrypt(forged, actor="a", reason="r")
        assert SSN not in str(info.value)
        with pytest.raises(IntegrityError):
            crypto.decrypt(forged, actor="a", reason="r", context=moved)

    def test_stated_context_that_differs_fails(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        for stated in (
            {"field": "ssn", "record": "r2"},
            {"field": "phone"},
            {"record": "r1", "table": "customers"},
            {"field": "SSN"},
        ):
            with pytest.raises(IntegrityError) as info:
                crypto.decrypt(envelope, actor="a", reason="r", context=stated)
            message = str(info.value)
            assert "\n" not in message
            assert "r2" not in message and "phone" not in message  # says nothing specific

    @pytest.mark.parametrize(
        "stated", [None, {}, {"field": "ssn"}, {"record": "r1"}, {"field": "ssn", "record": "r1"}]
    )
    def test_stated_subset_that_matches_decrypts(
        self, facade: Facade, stated: dict[str, str] | None
    ) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        assert crypto.decrypt(envelope, actor="a", reason="r", context=stated) == SSN

    @pytest.mark.parametrize("key", ["ciphertext", "nonce"])
    def test_tampered_ciphertext_or_nonce_fails(self, facade: Facade, key: str) -> None:
        crypto = facade.crypto
        text = crypto.encrypt(SSN, context=CTX).to_json()
        tampered = edit(text, **{key: flip_b64(json.loads(text)[key])})
        with pytest.raises(IntegrityError):
            crypto.decrypt(tampered, actor="a", reason="r")

    def test_truncated_ciphertext_fails(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        assert isinstance(envelope, KmsV1Envelope)
        for ciphertext in (envelope.ciphertext[:-1], envelope.ciphertext[:10], b""):
            with pytest.raises(IntegrityError):
                crypto.decrypt(
                    dataclasses.replace(envelope, ciphertext=ciphertext), actor="a", reason="r"
                )

    def test_tampered_encrypted_dek_fails(self, facade: Facade) -> None:
        crypto = facade.crypto
        text = crypto.encrypt(SSN, context=CTX).to_json()
        dek = json.loads(text)["encrypted_dek"]
        prefix, _, blob = dek.rpartition(":")
        with pytest.raises(IntegrityError):
            crypto.decrypt(
                edit(text, encrypted_dek=f"{prefix}:{flip_b64(blob)}"), actor="a", reason="r"
            )

    def test_envelope_from_another_key_is_not_unwrapped(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        text = crypto.encrypt(SSN, context=CTX).to_json()
        with pytest.raises(KeyNotFoundError) as info:
            crypto.decrypt(
                edit(text, key_identifier="other-key", key_id="local:other-key:v1"),
                actor="a",
                reason="r",
            )
        assert "other-key" in str(info.value)
        vault_dek = "vault:" + json.loads(text)["encrypted_dek"].split(":", 1)[1]
        with pytest.raises(KeyNotFoundError):
            crypto.decrypt(
                edit(
                    text, provider="vault", key_id="vault:heimdall-pii:v1", encrypted_dek=vault_dek
                ),
                actor="a",
                reason="r",
            )
        assert kms.wrapped_in == []  # a foreign wrapped key is never sent to our KMS

    def test_envelope_swap_between_records_fails(self, facade: Facade) -> None:
        crypto = facade.crypto
        a = json.loads(crypto.encrypt("111-11-1111", context=CTX).to_json())
        b = json.loads(crypto.encrypt("222-22-2222", context={**CTX, "record": "r2"}).to_json())
        # b's sealed parts under a's metadata: the AAD differs, so the tag fails.
        forged = json.dumps(
            {
                **a,
                "ciphertext": b["ciphertext"],
                "nonce": b["nonce"],
                "encrypted_dek": b["encrypted_dek"],
            }
        )
        with pytest.raises(IntegrityError):
            crypto.decrypt(forged, actor="a", reason="r", context=CTX)


class TestModes:
    """What each mode reads and writes (legacy, hybrid, kms)."""

    def test_kms_mode_refuses_a_legacy_envelope(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        with pytest.raises(ModeViolationError) as info:
            crypto.decrypt(legacy_envelope(MASTER_HEX, SSN), actor="a", reason="r")
        assert "\n" not in str(info.value)
        assert "kms" in str(info.value)
        (event,) = sink.events
        assert event.to_dict()["error_type"] == "mode_violation"
        assert event.to_dict()["result"] == "failure"

    def test_legacy_mode_refuses_kms_v1(
        self, local_env: dict[str, str], legacy_env: dict[str, str]
    ) -> None:
        writer = build(local_env).crypto
        text = writer.encrypt(SSN, context=CTX).to_json()
        reader = build(legacy_env).crypto
        assert reader.kms is None
        with pytest.raises(ModeViolationError):
            reader.decrypt(text, actor="a", reason="r")

    def test_legacy_mode_reads_and_writes_legacy(self, legacy_env: dict[str, str]) -> None:
        crypto = build(legacy_env).crypto
        assert crypto.decrypt(legacy_envelope(MASTER_HEX, SSN), actor="a", reason="r") == SSN
        envelope = crypto.encrypt(SSN, context=CTX)
        assert isinstance(envelope, LegacyEnvelope)
        assert envelope.key_id == "default-key-v1"
        assert set(json.loads(envelope.to_json())) == {"ciphertext", "nonce", "key_id", "algorithm"}
        assert independent_legacy_decrypt(envelope.to_json(), MASTER_HEX) == SSN
        assert crypto.decrypt(envelope, actor="a", reason="r") == SSN

    def test_hybrid_reads_both_and_writes_kms_v1(self, hybrid_env: dict[str, str]) -> None:
        crypto = build(hybrid_env).crypto
        kms_text = crypto.encrypt("987-65-4321", context=CTX).to_json()
        assert parse(kms_text).encryption_version == "kms_v1"
        legacy_text = legacy_envelope(MASTER_HEX, SSN)
        assert crypto.decrypt(legacy_text, actor="a", reason="r") == SSN
        assert crypto.decrypt(kms_text, actor="a", reason="r", context=CTX) == "987-65-4321"
        assert crypto.decrypt_many([legacy_text, kms_text], actor="a", reason="r") == [
            SSN,
            "987-65-4321",
        ]

    def test_hybrid_rollback_switch_writes_legacy(self, hybrid_env: dict[str, str]) -> None:
        facade = build({**hybrid_env, "HMD_HYBRID_WRITE_FORMAT": "legacy"})
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        assert isinstance(envelope, LegacyEnvelope)
        assert independent_legacy_decrypt(envelope.to_json(), MASTER_HEX) == SSN
        assert crypto.decrypt(envelope.to_json(), actor="a", reason="r") == SSN
        event = sink.events[0].to_dict()
        assert event["encryption_version"] == "legacy"
        assert event["key_identifier"] == "default-key-v1"

    def test_hybrid_rollback_with_own_key_id(self, hybrid_env: dict[str, str]) -> None:
        env = {**hybrid_env, "HMD_HYBRID_WRITE_FORMAT": "legacy", "HMD_PII_KEY_ID": "pii-2024"}
        crypto = build(env).crypto
        envelope = crypto.encrypt(SSN)
        assert isinstance(envelope, LegacyEnvelope)
        assert envelope.key_id == "pii-2024"

    @pytest.mark.parametrize("mode", ["legacy", "hybrid"])
    def test_older_legacy_key_ids_decrypt(self, local_env: dict[str, str], mode: str) -> None:
        env = {
            **local_env,
            "HMD_ENCRYPTION_MODE": mode,
            "HMD_PII_MASTER_KEY": MASTER_HEX,
            "HMD_PII_LEGACY_KEYS": f"old-2022:{OLD_LEGACY_HEX}",
        }
        crypto = build(env).crypto
        old = legacy_envelope(OLD_LEGACY_HEX, "old value", key_id="old-2022")
        new = legacy_envelope(MASTER_HEX, "new value")
        assert crypto.decrypt_many([old, new], actor="a", reason="r") == ["old value", "new value"]

    def test_legacy_envelope_under_the_wrong_key_fails(self, legacy_env: dict[str, str]) -> None:
        crypto = build(legacy_env).crypto
        with pytest.raises(IntegrityError):
            crypto.decrypt(legacy_envelope(OLD_LEGACY_HEX, SSN), actor="a", reason="r")

    @pytest.mark.parametrize("mode", ["legacy", "hybrid"])
    def test_unknown_legacy_key_id(self, local_env: dict[str, str], mode: str) -> None:
        env = {**local_env, "HMD_ENCRYPTION_MODE": mode, "HMD_PII_MASTER_KEY": MASTER_HEX}
        facade = build(env)
        crypto = facade.crypto
        sink = facade.audit
        with pytest.raises(KeyNotFoundError) as info:
            crypto.decrypt(legacy_envelope(MASTER_HEX, SSN, key_id="nope"), actor="a", reason="r")
        assert "nope" in str(info.value)
        assert sink.events[0].to_dict()["error_type"] == "key_not_found"

    def test_from_env_builds_no_provider_in_legacy_mode(self, legacy_env: dict[str, str]) -> None:
        crypto = build(legacy_env).crypto
        assert crypto.kms is None

    def test_kms_mode_needs_a_provider(self) -> None:
        with pytest.raises(ConfigurationError):
            Crypto(Settings(), kms=None, audit=MemoryAuditSink())


class TestInputChecks:
    """Unusable input is refused before any KMS call or audit event."""

    @pytest.mark.parametrize(
        ("actor", "reason"),
        [
            ("", "r"),
            ("a", ""),
            ("   ", "r"),
            ("a", "\t"),
            (None, "r"),
            ("a", None),
            ("x" * 513, "r"),
        ],
    )
    def test_decrypt_needs_actor_and_reason(self, facade: Facade, actor: Any, reason: Any) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()
        with pytest.raises(InvalidInputError):
            crypto.decrypt(envelope, actor=actor, reason=reason)
        with pytest.raises(InvalidInputError):
            crypto.decrypt_many([envelope], actor=actor, reason=reason)
        assert sink.events == []

    @pytest.mark.parametrize(
        "plaintext", [b"bytes", 123, None, "\ud800", "x" * (MAX_PLAINTEXT_BYTES + 1)]
    )
    def test_encrypt_refuses_unusable_plaintext(self, facade: Facade, plaintext: Any) -> None:
        crypto = facade.crypto
        with pytest.raises(InvalidInputError) as info:
            crypto.encrypt(plaintext, context=CTX)
        if isinstance(plaintext, str):
            assert plaintext[:20] not in str(info.value)

    @pytest.mark.parametrize(
        "context",
        [
            {"field": 1},
            {1: "x"},
            {"": "x"},
            ["field"],
            {"f": "v" * 2000},
            {str(i): "v" for i in range(40)},
        ],
    )
    def test_encrypt_refuses_bad_context(self, facade: Facade, context: Any) -> None:
        crypto = facade.crypto
        with pytest.raises(InvalidInputError):
            crypto.encrypt(SSN, context=context)

    def test_decrypt_refuses_bad_stated_context(self, facade: Facade) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        with pytest.raises(InvalidInputError):
            crypto.decrypt(envelope, actor="a", reason="r", context={"field": 7})  # type: ignore[dict-item]

    def test_decrypt_many_needs_one_context_per_envelope(
        self,
        facade: Facade,
    ) -> None:
        crypto = facade.crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        with pytest.raises(InvalidInputError):
            crypto.decrypt_many([envelope, envelope], actor="a", reason="r", contexts=[CTX])

    @pytest.mark.parametrize("source", ["", "not json", "[]", '{"a": 1}', "{" * 5])
    def test_decrypt_of_a_non_envelope(self, facade: Facade, source: str) -> None:
        crypto = facade.crypto
        sink = facade.audit
        with pytest.raises(MalformedEnvelopeError):
            crypto.decrypt(source, actor="a", reason="r")
        assert sink.events[-1].to_dict()["error_type"] == "malformed_envelope"


class TestBatching:
    """encrypt_many, decrypt_many and decrypt_outcomes: one KMS call per batch."""

    def test_encrypt_many_and_decrypt_many_call_the_kms_once_per_batch(
        self,
        counted: Counted,
    ) -> None:
        crypto = counted.crypto
        kms = counted.kms
        items = [(f"value-{i}", {"field": "ssn", "record": f"r{i}"}) for i in range(25)]
        envelopes = crypto.encrypt_many(items)
        assert kms.wrap_calls == 1
        texts = crypto.decrypt_many(
            envelopes, actor="etl", reason="batch", contexts=[ctx for _, ctx in items]
        )
        assert texts == [value for value, _ in items]
        assert kms.unwrap_calls == 1
        crypto.decrypt_outcomes([e.to_json() for e in envelopes], actor="etl", reason="batch")
        assert kms.unwrap_calls == 2
        assert kms.wrap_calls == 1

    def test_hybrid_batch_mixing_formats_is_one_kms_call(self, hybrid_env: dict[str, str]) -> None:
        counted = build_counting(hybrid_env)
        crypto = counted.crypto
        kms = counted.kms
        sealed = crypto.encrypt_many([("a", CTX), ("b", CTX)])
        mixed = [sealed[0], legacy_envelope(MASTER_HEX, "L"), sealed[1]]
        assert crypto.decrypt_many(mixed, actor="a", reason="r") == ["a", "L", "b"]
        assert kms.wrap_calls == 1
        assert kms.unwrap_calls == 1

    def test_decrypt_outcomes_returns_errors_in_place(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        sink = counted.audit
        good = crypto.encrypt(SSN, context=CTX).to_json()
        other = crypto.encrypt("second", context={"field": "name"}).to_json()
        tampered = edit(good, ciphertext=flip_b64(json.loads(good)["ciphertext"]))
        sink.events.clear()
        outcomes = crypto.decrypt_outcomes(
            [good, tampered, legacy_envelope(MASTER_HEX, "L"), "not json", other, good],
            actor="a",
            reason="r",
            contexts=[CTX, None, None, None, None, {"record": "r9"}],
        )
        assert outcomes[0] == SSN
        assert isinstance(outcomes[1], IntegrityError)
        assert isinstance(outcomes[2], ModeViolationError)
        assert isinstance(outcomes[3], MalformedEnvelopeError)
        assert outcomes[4] == "second"
        assert isinstance(outcomes[5], IntegrityError)
        assert kms.unwrap_calls == 1
        results = [event.to_dict()["result"] for event in sink.events]
        assert results == ["success", "failure", "failure", "failure", "success", "failure"]

    def test_decrypt_many_raises_the_first_error(self, facade: Facade) -> None:
        crypto = facade.crypto
        good = crypto.encrypt(SSN, context=CTX)
        with pytest.raises(MalformedEnvelopeError):
            crypto.decrypt_many(
                [good, "not json", legacy_envelope(MASTER_HEX, "x")], actor="a", reason="r"
            )

    def test_empty_batches(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        assert crypto.encrypt_many([]) == []
        assert crypto.decrypt_many([], actor="a", reason="r") == []
        assert sink.events == []


class TestAuditEvents:
    """One audit event per value, written before the result is returned, leaking nothing."""

    def test_encrypt_events(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        crypto.encrypt_many(
            [(SSN, CTX), ("x@example.com", {"field": "email", "record": "r1"})], actor="loader"
        )
        events = [event.to_dict() for event in sink.events]
        assert len(events) == 2
        for event, field in zip(events, ["ssn", "email"], strict=True):
            assert TIMESTAMP.fullmatch(event["timestamp"])
            assert event["event_type"] == "crypto.encrypt"
            assert event["actor"] == "loader"
            assert event["result"] == "success"
            assert event["field_identifier"] == field
            assert event["key_identifier"] == KEY_NAME
            assert event["key_version"] == 1
            assert event["context"]["field"] == field
            assert "error_type" not in event
            assert "reason" not in event
        assert events[0]["request_id"]
        assert events[0]["request_id"] == events[1]["request_id"]
        crypto.encrypt(SSN, context=CTX)
        assert sink.events[2].request_id != sink.events[0].request_id
        assert sink.events[2].actor == "application"  # the default actor

    def test_decrypt_events(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        good = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()
        crypto.decrypt_outcomes(
            [good, good], actor="alice", reason="ticket-42", contexts=[CTX, {"record": "r2"}]
        )
        ok, bad = (event.to_dict() for event in sink.events)
        for event in (ok, bad):
            assert TIMESTAMP.fullmatch(event["timestamp"])
            assert event["event_type"] == "crypto.decrypt"
            assert event["actor"] == "alice"
            assert event["reason"] == "ticket-42"
            assert event["field_identifier"] == "ssn"
            assert event["key_identifier"] == KEY_NAME
            assert event["key_version"] == 1
            assert event["context"] == CTX
        assert ok["request_id"] == bad["request_id"]
        assert ok["result"] == "success" and "error_type" not in ok
        assert bad["result"] == "failure" and bad["error_type"] == "integrity"

    def test_legacy_decrypt_event(self, hybrid_env: dict[str, str]) -> None:
        facade = build(hybrid_env)
        crypto = facade.crypto
        sink = facade.audit
        crypto.decrypt(legacy_envelope(MASTER_HEX, SSN), actor="m", reason="migrate", context=CTX)
        event = sink.events[0].to_dict()
        assert event["encryption_version"] == "legacy"
        assert event["key_identifier"] == "default-key-v1"
        assert event["field_identifier"] == "ssn"
        assert event["reason"] == "migrate"

    def test_events_are_emitted_before_the_result_is_returned(
        self, local_env: dict[str, str]
    ) -> None:
        class Recorder(MemoryAuditSink):
            def emit(self, events: Sequence[AuditEvent]) -> None:
                assert len(events) == 3  # one write per batch, one event per value
                super().emit(events)

        crypto = build(local_env, Recorder()).crypto
        envelopes = crypto.encrypt_many([("a", CTX), ("b", CTX), ("c", CTX)])
        crypto.decrypt_many(envelopes, actor="a", reason="r")

    def test_nothing_leaks_into_events_errors_reprs_or_logs(
        self, hybrid_env: dict[str, str], keyring_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        plaintexts = [SSN, "SECRET-PLAINTEXT-Zq81", "josé@example.com"]
        env = {**hybrid_env, "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}"}
        texts: list[str] = []
        with caplog.at_level(logging.DEBUG):
            counted = build_counting(env)
            crypto = counted.crypto
            kms = counted.kms
            sink = counted.audit
            envelopes = crypto.encrypt_many([(p, CTX) for p in plaintexts])
            texts += [repr(e) for e in envelopes] + [str(e) for e in envelopes]
            crypto.decrypt_many(envelopes, actor="a", reason="r", contexts=[CTX] * 3)
            legacy = [legacy_envelope(OLD_LEGACY_HEX, p, key_id="old-1") for p in plaintexts]
            crypto.decrypt_many(legacy, actor="a", reason="r")
            failing = [
                *(edit(e.to_json(), context={"field": "x"}) for e in envelopes),
                legacy_envelope(MASTER_HEX, SSN, key_id="old-1"),
                legacy_envelope(MASTER_HEX, SSN, key_id="missing"),
            ]
            outcomes = crypto.decrypt_outcomes(failing, actor="a", reason="r")
            assert all(isinstance(o, HeimdallKMSError) for o in outcomes)
            texts += [str(o) for o in outcomes] + [repr(o) for o in outcomes]
            for bad_plaintext in ("\ud800" + SSN, SSN * 200_000):
                with pytest.raises(InvalidInputError) as info:
                    crypto.encrypt(bad_plaintext)
                texts.append(str(info.value))
            with pytest.raises(IntegrityError) as integrity:
                crypto.decrypt(envelopes[0], actor="a", reason="r", context={"record": SSN})
            texts.append(str(integrity.value))
        texts += [events_json(sink), repr(sink.events), repr(crypto), repr(crypto.settings)]
        texts += [repr(kms.describe()), caplog.text]
        everything = "\n".join(texts)
        for plaintext in plaintexts:
            assert plaintext not in everything
            assert base64.b64encode(plaintext.encode()).decode() not in everything
        masters = keyring_master_hexes(keyring_path)
        assert masters
        deks = [dek.hex() for dek in kms.dek_copies]
        for secret in secret_forms([MASTER_HEX, OLD_LEGACY_HEX, *masters, *deks]):
            assert secret not in everything

    def test_a_failing_kms_call_is_audited(self, facade: Facade, keyring_path: Path) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        _drop_all_keys(keyring_path)
        sink.events.clear()
        with pytest.raises(KeyNotFoundError):
            crypto.encrypt(SSN, context=CTX)
        with pytest.raises(KeyNotFoundError):
            crypto.decrypt(envelope, actor="a", reason="r")
        events = [event.to_dict() for event in sink.events]
        assert [e["event_type"] for e in events] == ["crypto.encrypt", "crypto.decrypt"]
        assert all(e["result"] == "failure" for e in events)
        assert all(e["error_type"] == "key_not_found" for e in events)

    def test_encrypt_failing_on_an_unusable_keyring_is_audited(
        self, facade: Facade, keyring_path: Path
    ) -> None:
        crypto = facade.crypto
        sink = facade.audit
        keyring_path.chmod(0o644)
        with pytest.raises(ConfigurationError):
            crypto.encrypt(SSN, context=CTX)
        assert [e.to_dict()["error_type"] for e in sink.events] == ["configuration"]

    def test_decrypt_failing_on_an_unusable_keyring_is_audited(
        self, facade: Facade, keyring_path: Path
    ) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()
        keyring_path.chmod(0o644)
        with pytest.raises(ConfigurationError):
            crypto.decrypt(envelope, actor="a", reason="r")
        assert [e.to_dict()["error_type"] for e in sink.events] == ["configuration"]


class TestFailClosed:
    """No result without its audit event."""

    def test_encrypt_fails_closed_when_the_audit_cannot_be_written(
        self, local_env: dict[str, str]
    ) -> None:
        counted = build_counting(local_env, FailingSink())
        crypto = counted.crypto
        kms = counted.kms
        result: list[Any] = []
        with pytest.raises(AuditWriteError):
            result.append(crypto.encrypt(SSN, context=CTX))
        with pytest.raises(AuditWriteError):
            result.append(crypto.encrypt_many([(SSN, CTX), ("b", CTX)]))
        assert result == []
        assert all(not any(dek) for dek in kms.deks_in)

    def test_decrypt_fails_closed_when_the_audit_cannot_be_written(
        self, local_env: dict[str, str]
    ) -> None:
        writer = build(local_env).crypto
        text = writer.encrypt(SSN, context=CTX).to_json()
        counted = build_counting(local_env, FailingSink())
        crypto = counted.crypto
        kms = counted.kms
        result: list[Any] = []
        with pytest.raises(AuditWriteError) as info:
            result.append(crypto.decrypt(text, actor="a", reason="r"))
        assert SSN not in str(info.value)
        with pytest.raises(AuditWriteError):
            result.append(crypto.decrypt_many([text, text], actor="a", reason="r"))
        with pytest.raises(AuditWriteError):
            result.append(crypto.decrypt_outcomes([text], actor="a", reason="r"))
        assert result == []
        assert kms.deks_out and all(not any(dek) for dek in kms.deks_out)

    def test_failed_decrypts_fail_closed_too(self, local_env: dict[str, str]) -> None:
        crypto = build(local_env, FailingSink()).crypto
        with pytest.raises(AuditWriteError):
            crypto.decrypt("not json", actor="a", reason="r")

    def test_fail_closed_with_a_real_file_sink(
        self, local_env: dict[str, str], tmp_path: Path
    ) -> None:
        sink = FileAuditSink(tmp_path / "audit.log")
        crypto = build(local_env, sink).crypto
        envelope = crypto.encrypt(SSN, context=CTX)
        assert crypto.decrypt(envelope, actor="a", reason="r") == SSN
        lines = (tmp_path / "audit.log").read_text(encoding="utf-8").splitlines()
        assert [json.loads(line)["event_type"] for line in lines] == [
            "crypto.encrypt",
            "crypto.decrypt",
        ]
        assert SSN not in "\n".join(lines)
        sink.close()
        with pytest.raises(AuditWriteError):
            crypto.encrypt(SSN, context=CTX)
        with pytest.raises(AuditWriteError):
            crypto.decrypt(envelope, actor="a", reason="r")

    def test_a_failed_disk_sync_fails_the_call_with_nothing_returned(
        self, local_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The call's audit lines are synced before it returns; a failed sync is the call's
        failure, so no envelope or plaintext goes back whose event may not be on disk."""
        sink = FileAuditSink(tmp_path / "audit.log")
        crypto = build(local_env, sink).crypto
        envelope = crypto.encrypt(SSN, context=CTX)

        def fdatasync(fd: int) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        result: list[Any] = []
        with pytest.raises(AuditWriteError, match="Input/output error"):
            result.append(crypto.encrypt_many([(SSN, CTX), ("b", CTX)]))
        with pytest.raises(AuditWriteError, match="Input/output error"):
            result.append(crypto.decrypt_many([envelope, envelope], actor="a", reason="r"))
        assert result == []
        sink.close()


class TestDEKHygiene:
    """Every DEK buffer is wiped once its batch is done."""

    def test_unwrapped_deks_are_wiped_after_decrypt_many(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        envelopes = crypto.encrypt_many([(f"v{i}", CTX) for i in range(5)])
        assert crypto.decrypt_many(envelopes, actor="a", reason="r") == [f"v{i}" for i in range(5)]
        assert len(kms.deks_out) == 5
        assert all(len(dek) == 32 and not any(dek) for dek in kms.deks_out)

    def test_unwrapped_deks_are_wiped_when_authentication_fails(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        text = crypto.encrypt(SSN, context=CTX).to_json()
        tampered = edit(text, ciphertext=flip_b64(json.loads(text)["ciphertext"]))
        outcomes = crypto.decrypt_outcomes([tampered, text], actor="a", reason="r")
        assert isinstance(outcomes[0], IntegrityError) and outcomes[1] == SSN
        assert len(kms.deks_out) == 2
        assert all(not any(dek) for dek in kms.deks_out)

    def test_generated_deks_are_wiped_after_encrypt_many(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        crypto.encrypt_many([(f"v{i}", CTX) for i in range(4)])
        assert len(kms.deks_in) == 4
        assert all(len(dek) == 32 and not any(dek) for dek in kms.deks_in)
        assert all(any(copy) for copy in kms.dek_copies)  # they were real keys before the wipe


class TestRotation:
    """Rotation, rewrap and retirement, seen through the facade."""

    def test_old_envelopes_decrypt_after_rotation(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        old = crypto.encrypt(SSN, context=CTX)
        kms.rotate()
        new = crypto.encrypt(SSN, context=CTX)
        assert isinstance(old, KmsV1Envelope) and isinstance(new, KmsV1Envelope)
        assert (old.key_version, new.key_version) == (1, 2)
        assert crypto.decrypt_many([old, new], actor="a", reason="r") == [SSN, SSN]

    def test_rewrap_leaves_the_ciphertext_untouched(self, counted: Counted) -> None:
        crypto = counted.crypto
        kms = counted.kms
        old = crypto.encrypt(SSN, context=CTX)
        assert isinstance(old, KmsV1Envelope)
        kms.rotate()
        (rewrapped,) = kms.rewrap_many([old.encrypted_dek], [old.context])
        assert isinstance(rewrapped, WrappedKey)
        moved = dataclasses.replace(
            old, encrypted_dek=rewrapped.ciphertext, key_version=rewrapped.key_version
        )
        kms.retire(2)
        assert crypto.decrypt(moved, actor="a", reason="r", context=CTX) == SSN
        assert moved.ciphertext == old.ciphertext
        assert moved.aad() == old.aad()
        with pytest.raises(HeimdallKMSError) as info:
            crypto.decrypt(old, actor="a", reason="r")
        assert info.value.error_type == "key_retired"

    def test_rewrap_outcomes_changes_only_the_wrapped_key_and_its_version(
        self, counted: Counted
    ) -> None:
        crypto = counted.crypto
        sealed = crypto.encrypt(SSN, context=CTX)
        # One with keys this version does not define: they are kept, byte for byte.
        extra = parse(edit(sealed.to_json(), written_by="engine-7"))
        assert isinstance(sealed, KmsV1Envelope) and isinstance(extra, KmsV1Envelope)
        counted.kms.rotate()
        outcomes = crypto.rewrap_outcomes([sealed, extra])
        for old, new in zip([sealed, extra], outcomes, strict=True):
            assert isinstance(new, KmsV1Envelope) and type(new) is KmsV1Envelope
            assert new.key_version == 2 and new.encrypted_dek != old.encrypted_dek
            assert new == dataclasses.replace(
                old, encrypted_dek=new.encrypted_dek, key_version=new.key_version
            )
            assert (
                new.to_json()
                == dataclasses.replace(
                    old, encrypted_dek=new.encrypted_dek, key_version=new.key_version
                ).to_json()
            )
        assert json.loads(outcomes[1].to_json())["written_by"] == "engine-7"  # type: ignore[union-attr]


class TestClosing:
    """The facade as a context manager."""

    def test_context_manager_closes(self, local_env: dict[str, str]) -> None:
        with heimdall_kms.from_env(local_env, audit=MemoryAuditSink()) as crypto:
            assert crypto.decrypt(crypto.encrypt(SSN), actor="a", reason="r") == SSN
