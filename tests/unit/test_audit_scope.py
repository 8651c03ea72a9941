"""One audit scope builds every event of a call; a checked context is read-only and keeps its
AAD encoding; an item not opened yet is pending, never an empty plaintext; the mode rules."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_kms.audit import AuditEvent, EventType, MemoryAuditSink, Result
from heimdall_kms.audit_scope import AuditScope
from heimdall_kms.config import Settings
from heimdall_kms.context_json import CheckedContext, aad_json, context_json, line_json
from heimdall_kms.envelope import (
    EnvelopeFormat,
    KeyRef,
    KmsV1Envelope,
    LegacyEnvelope,
    check_context,
    kms_v1_aad,
)
from heimdall_kms.errors import ConfigurationError, IntegrityError, KMSError
from heimdall_kms.kinds import EncryptionMode, ProviderName, WriteFormat
from heimdall_kms.modes import check_migration, read_refusal, uses_kms, writes
from heimdall_kms.opening import PENDING, Opened
from heimdall_kms.providers.base import KeyContext, WrappedKey
from heimdall_kms.service import Crypto
from heimdall_kms.testing import FakeKMS

AT = "2026-11-28T10:00:00.000000Z"
VAULT_KEY = KeyRef(ProviderName.VAULT, "heimdall-pii")


def kms_envelope(context: dict[str, str], version: int = 3) -> KmsV1Envelope:
    return KmsV1Envelope(
        provider=ProviderName.VAULT,
        key_identifier="heimdall-pii",
        key_version=version,
        ciphertext=b"c" * 20,
        nonce=b"n" * 12,
        encrypted_dek=f"vault:v{version}:abc",
        context=check_context(context),
        encryption_timestamp=AT,
    )


class TestAuditScope:
    def test_a_sealed_kms_value_names_its_envelope_key(self) -> None:
        scope = AuditScope("etl", "r-1", None, VAULT_KEY, at=AT)
        event = scope.event(EventType.ENCRYPT, kms_envelope({"field": "ssn", "record": "r1"}), {})
        assert event.to_dict() == {
            "timestamp": AT,
            "event_type": "crypto.encrypt",
            "actor": "etl",
            "request_id": "r-1",
            "result": "success",
            "key_identifier": "heimdall-pii",
            "key_version": 3,
            "provider": "vault",
            "encryption_version": "kms_v1",
        }

    @pytest.mark.parametrize("failed", [False, True])
    @pytest.mark.parametrize("legacy", [False, True])
    def test_every_field_is_the_one_named(self, failed: bool, legacy: bool) -> None:
        """event() passes AuditEvent's fields by position: each lands in its own field."""
        scope = AuditScope("etl", "r-1", "audit", VAULT_KEY, at=AT)
        context = check_context({"field": "ssn", "record": "r1"})
        envelope: KmsV1Envelope | LegacyEnvelope = (
            LegacyEnvelope(ciphertext=b"c" * 20, nonce=b"n" * 12, key_id="k-1")
            if legacy
            else kms_envelope(context)
        )
        error = IntegrityError("envelope failed authentication") if failed else None
        details = {"legacy_context": "unverified"}
        event = scope.event(EventType.DECRYPT, envelope, context, error, details)
        assert event == AuditEvent(
            timestamp=AT,
            event_type=EventType.DECRYPT,
            actor="etl",
            request_id="r-1",
            result=Result.FAILURE if failed else Result.SUCCESS,
            field_identifier="ssn",
            key_identifier="k-1" if legacy else "heimdall-pii",
            key_version=None if legacy else 3,
            provider=None if legacy else ProviderName.VAULT,
            encryption_version=envelope.encryption_version,
            reason="audit",
            error_type="integrity" if failed else None,
            context=context,
            details=details,
        )

    def test_the_context_given_is_the_one_recorded(self) -> None:
        envelope = kms_envelope({"field": "ssn", "record": "r1"})
        event = AuditScope("etl", "r-1", at=AT).event(EventType.DECRYPT, envelope, envelope.context)
        assert event.field_identifier == "ssn"
        assert event.context is envelope.context  # read-only, so shared rather than copied

    def test_a_plain_mapping_is_copied(self) -> None:
        context = {"field": "ssn"}
        event = AuditScope("etl", "r-1", at=AT).event(EventType.ENCRYPT, None, context)
        context["field"] = "changed"
        assert event.context == {"field": "ssn"}

    def test_a_legacy_value_names_its_key_id_and_no_provider(self) -> None:
        legacy = LegacyEnvelope(ciphertext=b"c" * 20, nonce=b"n" * 12, key_id="k1")
        event = AuditScope("etl", "r-1", "why", VAULT_KEY, at=AT).event(
            EventType.DECRYPT, legacy, {"field": "email"}, details={"legacy_context": "x"}
        )
        document = event.to_dict()
        assert (document["key_identifier"], document["encryption_version"]) == ("k1", "legacy")
        assert "provider" not in document
        assert (document["reason"], document["details"]) == ("why", {"legacy_context": "x"})

    def test_values_without_an_envelope_name_the_fallback_key(self) -> None:
        scope = AuditScope("etl", "r-1", None, VAULT_KEY, at=AT)
        events = scope.without_envelopes(EventType.ENCRYPT, [{"field": "a"}, {}], KMSError("down"))
        failed = {
            "timestamp": AT,
            "event_type": "crypto.encrypt",
            "actor": "etl",
            "request_id": "r-1",
            "result": "failure",
            "key_identifier": "heimdall-pii",
            "provider": "vault",
            "error_type": "kms",
        }
        assert [e.to_dict() for e in events] == [
            {**failed, "field_identifier": "a", "context": {"field": "a"}},
            failed,
        ]

    def test_one_call_is_recorded_at_one_moment(self) -> None:
        stamped = AuditScope("etl", "r-1").stamped()
        events = stamped.without_envelopes(EventType.HMAC, [{}, {}, {}])
        assert {e.timestamp for e in events} == {stamped.at}
        unstamped = AuditScope("etl", "r-1").without_envelopes(EventType.HMAC, [{}, {}, {}])
        assert len({e.timestamp for e in unstamped}) == 1

    @pytest.mark.parametrize("fails", [False, True], ids=["answered", "failed"])
    def test_a_slow_call_is_recorded_when_the_kms_answered(self, fails: bool) -> None:
        """Events are stamped after the KMS answered, not when the call began: a slow or
        retried call's decrypts fall inside the time window they happened in."""
        kms = _SlowKMS(seconds=0.3, fails=fails)
        audit = MemoryAuditSink()
        crypto = Crypto(Settings(provider=ProviderName.LOCAL), kms=kms, audit=audit)
        began = datetime.now(UTC)
        with contextlib.suppress(KMSError):
            crypto.encrypt_many([("v", {"field": "a"})])
        (event,) = audit.events
        stamped = datetime.strptime(event.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert stamped - began >= timedelta(seconds=0.3)
        assert event.result is (Result.FAILURE if fails else Result.SUCCESS)


class _SlowKMS(FakeKMS):
    """A FakeKMS whose wrap takes ``seconds`` and then answers, or fails."""

    def __init__(self, *, seconds: float, fails: bool) -> None:
        super().__init__()
        self._seconds, self._fails = seconds, fails

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        time.sleep(self._seconds)
        if self._fails:
            raise KMSError("wrap: the KMS did not answer")
        return super().wrap_many(deks, contexts)


class TestCheckedContext:
    def test_it_is_read_only(self) -> None:
        context = check_context({"field": "ssn"})
        for change in (
            lambda: context.__setitem__("field", "x"),
            lambda: context.update(field="x"),
            lambda: context.pop("field"),
            lambda: context.setdefault("record", "r"),
            context.clear,
            context.popitem,
        ):
            with pytest.raises(TypeError):
                change()
        with pytest.raises(TypeError):
            context |= {"field": "x"}
        assert context == {"field": "ssn"}

    def test_copies_and_pickles_keep_it_checked(self) -> None:
        context = check_context({"field": "ssn", "record": "é"})
        for twin in (
            copy.copy(context),
            copy.deepcopy(context),
            pickle.loads(pickle.dumps(context)),
        ):
            assert type(twin) is CheckedContext
            assert twin == context

    def test_checking_a_checked_context_again_returns_it(self) -> None:
        context = check_context({"field": "ssn"})
        assert check_context(context) is context

    @settings(max_examples=200)
    @given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=4))
    def test_its_encodings_are_the_general_ones(self, raw: dict[str, str]) -> None:
        raw = {k: v for k, v in raw.items() if k}
        context = check_context(raw)
        compact = {"sort_keys": True, "separators": (",", ":")}
        assert aad_json(context) == json.dumps(raw, **compact)  # type: ignore[arg-type]
        assert line_json(context) == context_json(raw)
        assert kms_v1_aad(context) == kms_v1_aad(raw)


class TestPending:
    def test_a_prepared_item_is_pending_not_an_empty_plaintext(self) -> None:
        item = Opened(PENDING, kms_envelope({}), {})
        assert item.error is None
        with pytest.raises(AssertionError):
            item.result()
        item.outcome = ""  # a decrypted empty value is a result like any other
        assert item.result() == ""

    def test_an_error_outcome_is_the_items_error(self) -> None:
        error = IntegrityError("x")
        assert Opened(error, None, {}).error is error


class TestModes:
    @pytest.mark.parametrize(
        ("mode", "reads"),
        [
            (EncryptionMode.LEGACY, {EnvelopeFormat.LEGACY}),
            (EncryptionMode.HYBRID, {EnvelopeFormat.LEGACY, EnvelopeFormat.KMS_V1}),
            (EncryptionMode.KMS, {EnvelopeFormat.KMS_V1}),
        ],
    )
    def test_what_each_mode_reads(self, mode: EncryptionMode, reads: set[EnvelopeFormat]) -> None:
        assert {f for f in EnvelopeFormat if read_refusal(mode, f) is None} == reads

    def test_what_each_mode_writes(self) -> None:
        assert writes(EncryptionMode.LEGACY, WriteFormat.KMS_V1) is EnvelopeFormat.LEGACY
        assert writes(EncryptionMode.HYBRID, WriteFormat.LEGACY) is EnvelopeFormat.LEGACY
        assert writes(EncryptionMode.HYBRID, WriteFormat.KMS_V1) is EnvelopeFormat.KMS_V1
        assert writes(EncryptionMode.KMS, WriteFormat.KMS_V1) is EnvelopeFormat.KMS_V1
        assert [uses_kms(m) for m in EncryptionMode] == [False, True, True]

    def test_only_hybrid_writing_kms_v1_migrates(self) -> None:
        check_migration(EncryptionMode.HYBRID, WriteFormat.KMS_V1)
        for mode, write in [
            (EncryptionMode.KMS, WriteFormat.KMS_V1),
            (EncryptionMode.LEGACY, WriteFormat.KMS_V1),
            (EncryptionMode.HYBRID, WriteFormat.LEGACY),
        ]:
            with pytest.raises(ConfigurationError):
                check_migration(mode, write)


class TestAuditScopeEvents:
    """events() builds, in one loop, the events event() builds one by one."""

    def _values(self) -> tuple[list[object], list[dict[str, str]], list[object], list[object]]:
        legacy = LegacyEnvelope(ciphertext=b"c" * 20, nonce=b"n" * 12, key_id="old")
        envelopes: list[object] = [
            kms_envelope({"field": "ssn", "record": "r1"}),
            kms_envelope({"record": "r2"}, version=4),
            legacy,
            None,
            kms_envelope({}),
            LegacyEnvelope(ciphertext=b"d" * 20, nonce=b"m" * 12, key_id="k2"),
        ]
        contexts = [
            {"field": "ssn", "record": "r1"},
            {"record": "r2"},
            {"field": "x"},
            {},
            {},
            check_context({"field": "y", "record": "r3"}),
        ]
        errors: list[object] = [
            None,
            IntegrityError("bad"),
            None,
            KMSError("down"),
            None,
            IntegrityError("bad"),
        ]
        details: list[object] = [None, None, {"legacy_context": "unverified"}, None, None, None]
        return envelopes, contexts, errors, details

    @pytest.mark.parametrize("at", [AT, None])
    def test_equal_to_event_one_by_one(self, at: str | None) -> None:
        scope = AuditScope("etl", "r-1", "why", VAULT_KEY, at=at)
        envelopes, contexts, errors, details = self._values()
        built = scope.events(EventType.DECRYPT, envelopes, contexts, errors, details)  # type: ignore[arg-type]
        one_by_one = [
            scope.event(EventType.DECRYPT, *value)  # type: ignore[arg-type]
            for value in zip(envelopes, contexts, errors, details, strict=True)
        ]
        if at is None:  # stamped one by one: the times may differ, nothing else
            for event in (*built, *one_by_one):
                event.timestamp = AT
        assert [e.to_dict() for e in built] == [e.to_dict() for e in one_by_one]
        assert [type(e.context) for e in built] == [type(e.context) for e in one_by_one]

    def test_without_errors_and_details_every_value_succeeded(self) -> None:
        scope = AuditScope("etl", "r-1", None, VAULT_KEY, at=AT)
        envelopes, contexts, _, _ = self._values()
        built = scope.events(EventType.ENCRYPT, envelopes, contexts)  # type: ignore[arg-type]
        assert [e.result for e in built] == [Result.SUCCESS] * len(envelopes)
        assert built == [
            scope.event(EventType.ENCRYPT, e, c)  # type: ignore[arg-type]
            for e, c in zip(envelopes, contexts, strict=True)
        ]
