"""Envelope parsing, the single version dispatch, JSON round trips and the canonical AAD."""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import heimdall_kms
from heimdall_kms.context_json import CheckedContext
from heimdall_kms.envelope import (
    ALGORITHM,
    KMS_V1,
    Envelope,
    KmsV1Envelope,
    LegacyEnvelope,
    _json,
    check_context,
    kms_v1_aad,
    parse,
)
from heimdall_kms.envelope._json import MAX_ENCRYPTED_DEK_CHARS, MAX_ENVELOPE_CHARS
from heimdall_kms.envelope.kms_v1 import check_key_version
from heimdall_kms.errors import HeimdallKMSError, MalformedEnvelopeError
from heimdall_kms.kinds import ProviderName

CIPHERTEXT = bytes(range(40))


class _OwnStr(str):
    __slots__ = ()

    def __str__(self) -> str:
        return "SUB"


NONCE = bytes(range(100, 112))
WRAPPED = "local:v3:" + base64.b64encode(b"w" * 60).decode("ascii")


def kms_obj(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "encryption_version": "kms_v1",
        "provider": "local",
        "key_identifier": "heimdall-pii",
        "key_version": 3,
        "key_id": "local:heimdall-pii:v3",
        "algorithm": "AES-256-GCM",
        "ciphertext": base64.b64encode(CIPHERTEXT).decode("ascii"),
        "nonce": base64.b64encode(NONCE).decode("ascii"),
        "encrypted_dek": WRAPPED,
        "context": {"field": "ssn", "record": "r1"},
        "encryption_timestamp": "2025-01-02T03:04:05.123456Z",
    }
    obj.update(changes)
    return {key: value for key, value in obj.items() if value is not _DROP}


def sealed_fields(**changes: Any) -> dict[str, Any]:
    """The constructor's fields of a local ``kms_v1`` envelope (as objects, not JSON)."""
    return {
        "provider": ProviderName.LOCAL,
        "key_identifier": "pii",
        "key_version": 3,
        "ciphertext": CIPHERTEXT,
        "nonce": NONCE,
        "encrypted_dek": WRAPPED,
        "context": check_context({"field": "ssn", "record": "r1"}),
        "encryption_timestamp": "2026-01-02T03:04:05.000006Z",
        **changes,
    }


def legacy_obj(**changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "ciphertext": base64.b64encode(CIPHERTEXT).decode("ascii"),
        "nonce": base64.b64encode(NONCE).decode("ascii"),
        "key_id": "default-key-v1",
        "algorithm": "AES-256-GCM",
    }
    obj.update(changes)
    return {key: value for key, value in obj.items() if value is not _DROP}


_DROP = object()


def malformed(source: object) -> str:
    with pytest.raises(MalformedEnvelopeError) as info:
        parse(source)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


# -- dispatch --------------------------------------------------------------------------------------


def test_parse_kms_v1() -> None:
    envelope = parse(json.dumps(kms_obj()))
    assert isinstance(envelope, KmsV1Envelope)
    assert envelope.encryption_version == KMS_V1
    assert envelope.provider == "local"
    assert envelope.key_identifier == "heimdall-pii"
    assert envelope.key_version == 3
    assert envelope.ciphertext == CIPHERTEXT
    assert envelope.nonce == NONCE
    assert envelope.encrypted_dek == WRAPPED
    assert dict(envelope.context) == {"field": "ssn", "record": "r1"}
    assert envelope.algorithm == ALGORITHM


def test_parse_legacy() -> None:
    envelope = parse(json.dumps(legacy_obj()))
    assert isinstance(envelope, LegacyEnvelope)
    assert envelope.encryption_version == "legacy"
    assert envelope.key_id == "default-key-v1"
    assert envelope.ciphertext == CIPHERTEXT
    assert envelope.nonce == NONCE
    assert envelope.aad() == b""


def test_parse_accepts_bytes_and_mappings() -> None:
    text = json.dumps(kms_obj())
    assert parse(text.encode("utf-8")) == parse(text) == parse(kms_obj())


def test_base_class_from_json_dispatches() -> None:
    assert isinstance(Envelope.from_json(json.dumps(kms_obj())), KmsV1Envelope)
    assert isinstance(Envelope.from_json(json.dumps(legacy_obj())), LegacyEnvelope)


@pytest.mark.parametrize("version", ["kms_v2", "legacy", "KMS_V1", "", 1, None, ["kms_v1"]])
def test_unknown_encryption_version(version: object) -> None:
    message = malformed(json.dumps(kms_obj(encryption_version=version)))
    assert "encryption_version" in message


def test_unknown_version_wins_over_legacy_shape() -> None:
    # A value with an encryption_version is never read as legacy, even if it has those keys.
    malformed(json.dumps({**legacy_obj(), "encryption_version": "kms_v9"}))


@pytest.mark.parametrize(
    "obj",
    [
        pytest.param({}, id="empty-object"),
        pytest.param({"ciphertext": "AA==", "nonce": "AA=="}, id="partial-legacy"),
        pytest.param({"hello": "world"}, id="other-object"),
        pytest.param(legacy_obj(key_id=_DROP), id="legacy-without-key-id"),
    ],
)
def test_not_an_envelope(obj: dict[str, Any]) -> None:
    assert "not an envelope" in malformed(json.dumps(obj))


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not json", "{", '{"encryption_version": "kms_v1",', "{'a': 1}", "NaN]"],
)
def test_not_json(text: str) -> None:
    assert "not valid JSON" in malformed(text)


@pytest.mark.parametrize("text", ["[]", "[1, 2]", '"kms_v1"', "42", "null", "true"])
def test_not_an_object(text: str) -> None:
    assert "JSON object" in malformed(text)


def test_not_utf8_bytes() -> None:
    assert "UTF-8" in malformed(b'{"a": "\xff"}')


def test_wrong_source_type() -> None:
    malformed(12345)


def test_deeply_nested_json_is_refused_cleanly() -> None:
    malformed("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_too_large_is_refused_before_decoding(as_bytes: bool) -> None:
    # Not JSON at all: if the size were checked after decoding, the error would say "JSON".
    text = "x" * (MAX_ENVELOPE_CHARS + 1)
    message = malformed(text.encode("ascii") if as_bytes else text)
    assert "larger than" in message
    assert str(MAX_ENVELOPE_CHARS) in message


def test_largest_allowed_size_is_decoded() -> None:
    text = " " * (MAX_ENVELOPE_CHARS - 2) + "[]"
    assert len(text) == MAX_ENVELOPE_CHARS
    assert "JSON object" in malformed(text)


def test_max_envelope_chars_is_bounded() -> None:
    # Bounded, but above what a stored value of the engine's may reach (a 1.2 MB document).
    assert 4 * 1024 * 1024 <= MAX_ENVELOPE_CHARS <= 64 * 1024 * 1024


@pytest.mark.parametrize(
    "text",
    [
        '{"encryption_version": "kms_v1", "encryption_version": "kms_v1"}',
        '{"ciphertext": "AA==", "ciphertext": "AQ==", "nonce": "AA==", "key_id": "k",'
        ' "algorithm": "AES-256-GCM"}',
        '{"a": {"b": 1, "b": 2}}',
    ],
)
def test_duplicate_keys_are_refused(text: str) -> None:
    assert "repeats" in malformed(text)


def test_huge_integer_is_malformed_not_a_crash() -> None:
    malformed('{"key_version": ' + "1" * 5000 + "}")


# -- kms_v1 field checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"algorithm": "AES-128-GCM"}, id="algorithm"),
        pytest.param({"algorithm": _DROP}, id="no-algorithm"),
        pytest.param({"provider": "hsm"}, id="provider"),
        pytest.param({"provider": _DROP}, id="no-provider"),
        pytest.param({"key_version": 0}, id="version-0"),
        pytest.param({"key_version": -1}, id="version-negative"),
        pytest.param({"key_version": "3"}, id="version-text"),
        pytest.param({"key_version": 3.0}, id="version-float"),
        pytest.param({"key_version": True}, id="version-bool"),
        pytest.param({"key_version": _DROP}, id="no-version"),
        pytest.param({"ciphertext": "not base64!"}, id="ciphertext-b64"),
        pytest.param({"ciphertext": "AAA"}, id="ciphertext-padding"),
        pytest.param({"ciphertext": "AA-_"}, id="ciphertext-urlsafe"),
        pytest.param({"ciphertext": _DROP}, id="no-ciphertext"),
        pytest.param({"nonce": 12}, id="nonce-number"),
        pytest.param({"encrypted_dek": _DROP}, id="no-dek"),
        pytest.param({"encrypted_dek": "x" * (MAX_ENCRYPTED_DEK_CHARS + 1)}, id="dek-too-long"),
        pytest.param({"key_identifier": None}, id="key-id-null"),
        pytest.param({"context": _DROP}, id="no-context"),
        pytest.param({"context": ["field", "ssn"]}, id="context-list"),
        pytest.param({"context": {"field": 1}}, id="context-number"),
        pytest.param({"context": {"": "x"}}, id="context-empty-key"),
        pytest.param({"context": {str(i): "v" for i in range(33)}}, id="context-too-many"),
        pytest.param({"context": {"field": "v" * 1025}}, id="context-value-too-long"),
        pytest.param({"encryption_timestamp": "yesterday"}, id="timestamp"),
        pytest.param({"encryption_timestamp": _DROP}, id="no-timestamp"),
    ],
)
def test_bad_kms_v1_fields(changes: dict[str, Any]) -> None:
    malformed(json.dumps(kms_obj(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"algorithm": 256}, id="algorithm-not-a-string"),
        pytest.param({"algorithm": _DROP}, id="no-algorithm"),
        pytest.param({"key_id": ""}, id="empty-key-id"),
        pytest.param({"key_id": 7}, id="key-id-number"),
        pytest.param({"nonce": "%%%"}, id="nonce-b64"),
        pytest.param({"encryption_version": "legacy"}, id="version-not-null"),
    ],
)
def test_bad_legacy_fields(changes: dict[str, Any]) -> None:
    malformed(json.dumps(legacy_obj(**changes)))


def test_kms_v1_carries_a_key_id_the_legacy_engine_recognises() -> None:
    # The engine's is_encrypted wants ciphertext, nonce, key_id and algorithm as strings.
    envelope = parse(json.dumps(kms_obj(key_id=_DROP)))
    assert isinstance(envelope, KmsV1Envelope)
    written = json.loads(envelope.to_json())
    assert written["key_id"] == "local:heimdall-pii:v3"
    assert all(isinstance(written[k], str) for k in ("ciphertext", "nonce", "key_id", "algorithm"))
    rewrapped = dataclasses.replace(envelope, key_version=4)
    assert json.loads(rewrapped.to_json())["key_id"] == "local:heimdall-pii:v4"
    assert rewrapped.aad() == envelope.aad()  # key_id is not authenticated


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"key_id": "local:heimdall-pii:v2"}, id="other-version"),
        pytest.param({"key_id": "vault:heimdall-pii:v3"}, id="other-provider"),
        pytest.param({"key_id": None}, id="null"),
        pytest.param({"encryption_version": _DROP}, id="version-stripped"),
    ],
)
def test_kms_v1_key_id_must_say_what_the_envelope_says(changes: dict[str, Any]) -> None:
    malformed(json.dumps(kms_obj(**changes)))


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"algorithm": "AES-256-CBC"}, id="algorithm-label"),
        pytest.param({"extra": "x", "ssn": "123-45-6789"}, id="unknown-fields"),
        pytest.param({"encryption_version": None}, id="version-null"),
    ],
)
def test_legacy_reading_is_as_lenient_as_the_engine(changes: dict[str, Any]) -> None:
    envelope = parse(json.dumps(legacy_obj(**changes)))
    assert isinstance(envelope, LegacyEnvelope)
    assert set(envelope.to_dict()) == {"ciphertext", "nonce", "key_id", "algorithm"}
    assert envelope.algorithm == "AES-256-GCM"


def test_error_messages_do_not_echo_long_attacker_input() -> None:
    message = malformed(json.dumps(kms_obj(encryption_version="v" * 10_000)))
    assert len(message) < 200


def test_malformed_envelope_error_is_a_heimdall_error() -> None:
    assert issubclass(MalformedEnvelopeError, HeimdallKMSError)


# -- JSON round trips ------------------------------------------------------------------------------


def test_kms_v1_round_trip() -> None:
    envelope = parse(json.dumps(kms_obj()))
    text = envelope.to_json()
    assert json.loads(text) == kms_obj()
    assert parse(text) == envelope
    assert " " not in text.replace("AES-256-GCM", "")  # compact


def test_kms_v1_round_trip_keeps_extra_keys() -> None:
    extra = {"schema": "https://example/kms_v1.json", "tenant": {"id": 7, "tags": ["a", "b"]}}
    envelope = parse(json.dumps({**kms_obj(), **extra}))
    assert isinstance(envelope, KmsV1Envelope)
    assert dict(envelope.extra) == extra
    again = json.loads(envelope.to_json())
    assert again == {**kms_obj(), **extra}
    assert parse(envelope.to_json()) == envelope


def test_kms_v1_non_ascii_context_round_trip() -> None:
    envelope = parse(json.dumps(kms_obj(context={"field": "país", "record": "日本"})))
    assert parse(envelope.to_json()) == envelope
    assert dict(parse(envelope.to_json()).context) == {"field": "país", "record": "日本"}


def test_legacy_round_trip_keeps_the_engine_key_order() -> None:
    original = json.dumps(legacy_obj(), separators=(",", ":"))
    envelope = parse(original)
    assert envelope.to_json() == original
    assert list(json.loads(envelope.to_json())) == ["ciphertext", "nonce", "key_id", "algorithm"]


@pytest.mark.parametrize("obj", [kms_obj(), {**kms_obj(), "note": "x"}, legacy_obj()])
def test_public_facade_round_trip(obj: dict[str, Any]) -> None:
    text = json.dumps(obj)
    again = heimdall_kms.Envelope.from_json(text).to_json()
    assert json.loads(again) == obj
    assert heimdall_kms.Envelope.from_json(again).to_json() == again


# -- the canonical AAD -----------------------------------------------------------------------------


def test_aad_is_sorted_compact_json_of_version_algorithm_context() -> None:
    envelope = parse(json.dumps(kms_obj()))
    aad = envelope.aad()
    assert aad == kms_v1_aad({"field": "ssn", "record": "r1"})
    assert json.loads(aad) == {
        "alg": "AES-256-GCM",
        "ctx": {"field": "ssn", "record": "r1"},
        "v": "kms_v1",
    }
    assert aad == json.dumps(json.loads(aad), sort_keys=True, separators=(",", ":")).encode()


def test_aad_does_not_depend_on_context_key_order() -> None:
    first = kms_v1_aad({"field": "ssn", "record": "r1", "table": "t"})
    second = kms_v1_aad({"table": "t", "record": "r1", "field": "ssn"})
    assert first == second
    a = parse(json.dumps(kms_obj(context={"a": "1", "b": "2"})))
    b = parse(json.dumps(kms_obj(context={"b": "2", "a": "1"})))
    assert a.aad() == b.aad()


@pytest.mark.parametrize(
    "context",
    [
        {"field": "ssn", "record": "r2"},
        {"field": "phone", "record": "r1"},
        {"field": "ssn"},
        {"field": "ssn", "record": "r1", "table": "t"},
        {},
    ],
)
def test_aad_covers_the_context(context: dict[str, str]) -> None:
    assert kms_v1_aad(context) != kms_v1_aad({"field": "ssn", "record": "r1"})


def test_aad_names_version_and_algorithm() -> None:
    aad = kms_v1_aad({})
    assert b'"v":"kms_v1"' in aad
    assert b'"alg":"AES-256-GCM"' in aad


def test_aad_leaves_out_what_a_rewrap_changes() -> None:
    envelope = parse(json.dumps(kms_obj()))
    assert isinstance(envelope, KmsV1Envelope)
    rewrapped = dataclasses.replace(
        envelope,
        key_version=9,
        encrypted_dek="local:v9:" + base64.b64encode(b"z" * 60).decode("ascii"),
        encryption_timestamp="2030-01-01T00:00:00.000000Z",
        provider="vault",
        key_identifier="other",
    )
    assert rewrapped.aad() == envelope.aad()
    for excluded in (b"key_version", b"encrypted_dek", b"timestamp", b"local:v", b"2025-01"):
        assert excluded not in envelope.aad()


_contexts = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=8)


@settings(max_examples=200, deadline=None)
@given(context=_contexts, extra=st.dictionaries(st.sampled_from(["note", "x-tag"]), st.text()))
def test_round_trip_and_aad_for_any_context(context: dict[str, str], extra: dict[str, str]) -> None:
    envelope = parse({**kms_obj(context=context), **extra})
    again = parse(envelope.to_json())
    assert again == envelope
    assert json.loads(envelope.to_json()) == {**kms_obj(context=context), **extra}
    reordered = dict(reversed(list(context.items())))
    assert kms_v1_aad(reordered) == envelope.aad()
    assert json.loads(envelope.aad())["ctx"] == context


# -- reprs -----------------------------------------------------------------------------------------


def test_reprs_hold_no_ciphertext_nonce_or_wrapped_key() -> None:
    forbidden = [
        repr(CIPHERTEXT),
        repr(NONCE),
        base64.b64encode(CIPHERTEXT).decode("ascii"),
        base64.b64encode(NONCE).decode("ascii"),
        WRAPPED,
        WRAPPED[9:30],
        CIPHERTEXT.hex(),
        NONCE.hex(),
    ]
    for envelope in (parse(json.dumps(kms_obj())), parse(json.dumps(legacy_obj()))):
        for text in (repr(envelope), str(envelope)):
            for secret in forbidden:
                assert secret not in text
    kms = repr(parse(json.dumps(kms_obj())))
    assert "key_version=3" in kms
    assert "heimdall-pii" in kms


def test_envelopes_are_frozen() -> None:
    envelope = parse(json.dumps(kms_obj()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        envelope.key_version = 4  # type: ignore[misc]


class TestSealedConstructor:
    """``KmsV1Envelope.sealed``, the constructor sealing uses, makes what ``__init__`` makes."""

    def test_it_equals_the_dataclass_constructor(self) -> None:
        fields = sealed_fields()
        fast = KmsV1Envelope.sealed(**fields)
        assert fast == KmsV1Envelope(**fields)
        assert fast.to_json() == KmsV1Envelope(**fields).to_json()
        assert fast.algorithm == "AES-256-GCM"
        assert fast.extra == {}

    @settings(max_examples=300)
    @given(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8),
        st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6),
            st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
            max_size=4,
        ),
        st.sampled_from(list(ProviderName)),
        st.integers(1, 10**9 - 1),
    )
    def test_its_stored_text_is_the_general_encoders(
        self, identifier: str, context: dict[str, str], provider: ProviderName, version: int
    ) -> None:
        # to_json puts the text together itself; it must be json.dumps of to_dict, exactly.
        envelope = KmsV1Envelope.sealed(
            provider=provider,
            key_identifier=identifier,
            key_version=version,
            ciphertext=CIPHERTEXT,
            nonce=NONCE,
            encrypted_dek=f"{provider}:v{version}:{WRAPPED.split(':', 2)[2]}",
            context=check_context(context),
            encryption_timestamp="2026-01-02T03:04:05.000006Z",
        )
        general = json.dumps(envelope.to_dict(), separators=(",", ":"), ensure_ascii=False)
        assert envelope.to_json() == general
        assert parse(general) == envelope

    @pytest.mark.parametrize(
        "changes",
        [
            {"extra": {"note": [1, 2.5, None]}},
            {"context": {"field": "ssn"}},  # a plain dict: not checked
            {"key_version": True},
            {"key_identifier": 7},
            {"extra": []},
            {"provider": _OwnStr("local")},
            {"context": CheckedContext({"n": 1})},  # never checked: not text
        ],
        ids=[
            "extra keys",
            "unchecked context",
            "bool version",
            "non-text identifier",
            "extra not a mapping",
            "provider a str subclass",
            "context of non-text",
        ],
    )
    def test_an_envelope_built_by_hand_is_written_by_the_general_encoder(
        self, changes: dict[str, Any]
    ) -> None:
        envelope = KmsV1Envelope(**sealed_fields(**changes))
        try:
            general = json.dumps(envelope.to_dict(), separators=(",", ":"), ensure_ascii=False)
        except TypeError as exc:  # what the general encoder says, to_json says too
            with pytest.raises(TypeError, match=str(exc)[:20]):
                envelope.to_json()
        else:
            assert envelope.to_json() == general

    def test_a_subclass_is_written_and_rewrapped_by_the_dataclass_rules(self) -> None:
        @dataclasses.dataclass(frozen=True, slots=True)
        class Tagged(KmsV1Envelope):
            tag: str = "mine"

            def to_dict(self) -> dict[str, Any]:
                return {**KmsV1Envelope.to_dict(self), "tag": self.tag}

        envelope = Tagged(**sealed_fields())
        assert json.loads(envelope.to_json())["tag"] == "mine"
        assert envelope.rewrapped(WRAPPED.replace("v3", "v4"), 4).tag == "mine"
        assert Tagged.from_object(kms_obj()).tag == "mine"

    def test_rewrapped_keeps_everything_but_the_wrapped_key(self) -> None:
        envelope = parse(json.dumps(kms_obj(note="kept")))
        assert isinstance(envelope, KmsV1Envelope)
        wrapped = "local:v4:" + base64.b64encode(b"v" * 60).decode("ascii")
        again = envelope.rewrapped(wrapped, 4)
        assert again == dataclasses.replace(envelope, encrypted_dek=wrapped, key_version=4)
        assert (
            again.to_json()
            == dataclasses.replace(envelope, encrypted_dek=wrapped, key_version=4).to_json()
        )
        assert envelope.key_version == 3  # the original is left as it was

    def test_it_is_frozen_and_its_extra_keys_are_its_own(self) -> None:
        one, two = (
            KmsV1Envelope.sealed(
                provider=ProviderName.LOCAL,
                key_identifier="pii",
                key_version=3,
                ciphertext=CIPHERTEXT,
                nonce=NONCE,
                encrypted_dek=WRAPPED,
                context={},
                encryption_timestamp="2026-01-02T03:04:05Z",
            )
            for _ in range(2)
        )
        with pytest.raises(dataclasses.FrozenInstanceError):
            one.key_version = 4  # type: ignore[misc]
        assert one.extra is not two.extra


class TestSealedBatch:
    """``KmsV1Envelope.sealed_batch`` (a column at a time) makes what ``sealed`` makes."""

    @settings(max_examples=200)
    @given(
        st.lists(
            st.tuples(
                st.integers(1, 10**9 - 1),
                st.binary(min_size=16, max_size=40),
                st.binary(min_size=12, max_size=12),
                st.dictionaries(
                    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6),
                    st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
                    max_size=3,
                ),
            ),
            max_size=6,
        ),
        st.sampled_from(list(ProviderName)),
    )
    def test_it_equals_sealed_value_by_value(
        self, rows: list[tuple[int, bytes, bytes, dict[str, str]]], provider: ProviderName
    ) -> None:
        deks = [f"{provider}:v{version}:" + "A" * 8 for version, *_ in rows]
        contexts = [check_context(context) for *_, context in rows]
        batch = KmsV1Envelope.sealed_batch(
            provider=provider,
            key_identifier="pii",
            key_versions=[version for version, *_ in rows],
            sealed=[(ciphertext, nonce) for _, ciphertext, nonce, _ in rows],
            encrypted_deks=deks,
            contexts=contexts,
            encryption_timestamp="2026-01-02T03:04:05.000006Z",
        )
        one_by_one = [
            KmsV1Envelope.sealed(
                provider=provider,
                key_identifier="pii",
                key_version=version,
                ciphertext=ciphertext,
                nonce=nonce,
                encrypted_dek=dek,
                context=context,
                encryption_timestamp="2026-01-02T03:04:05.000006Z",
            )
            for (version, ciphertext, nonce, _), dek, context in zip(
                rows, deks, contexts, strict=True
            )
        ]
        assert batch == one_by_one
        assert [e.to_json() for e in batch] == [e.to_json() for e in one_by_one]
        assert all(e.context is c for e, c in zip(batch, contexts, strict=True))
        assert len({id(e.extra) for e in batch}) == len(batch)  # each its own, as the default

    def test_columns_of_another_length_are_refused(self) -> None:
        with pytest.raises(ValueError, match="one key version"):
            KmsV1Envelope.sealed_batch(
                provider=ProviderName.LOCAL,
                key_identifier="pii",
                key_versions=[3, 3],
                sealed=[(CIPHERTEXT, NONCE)],
                encrypted_deks=[WRAPPED],
                contexts=[{}],
                encryption_timestamp="2026-01-02T03:04:05Z",
            )

    def test_a_subclass_is_made_by_its_own_init(self) -> None:
        @dataclasses.dataclass(frozen=True, slots=True)
        class Tagged(KmsV1Envelope):
            tag: str = "t"

        (envelope,) = Tagged.sealed_batch(
            provider=ProviderName.LOCAL,
            key_identifier="pii",
            key_versions=[3],
            sealed=[(CIPHERTEXT, NONCE)],
            encrypted_deks=[WRAPPED],
            contexts=[{}],
            encryption_timestamp="2026-01-02T03:04:05Z",
        )
        assert type(envelope) is Tagged
        assert envelope.tag == "t"


class TestKeyVersionCheck:
    """``check_key_version``: refusals are MalformedEnvelopeError whatever it is given."""

    def test_a_version_beyond_the_forms_nine_digits_does_not_match(self) -> None:
        with pytest.raises(MalformedEnvelopeError, match="does not match the version"):
            check_key_version(ProviderName.LOCAL, 10**5000, WRAPPED)

    @pytest.mark.parametrize("name", ["foo", "LOCAL", "hmac"])
    def test_a_name_that_is_no_provider_is_refused(self, name: str) -> None:
        with pytest.raises(MalformedEnvelopeError, match=f"not a {name} wrapped key"):
            check_key_version(name, 3, WRAPPED)  # type: ignore[arg-type]


class TestBase64Fields:
    """Binary fields are canonical standard base64 with padding, nothing else."""

    @staticmethod
    def _rule(text: str) -> bytes | None:
        # The rule as the standard library states it: validated, then canonical.
        try:
            raw = base64.b64decode(text, validate=True)
        except ValueError:  # binascii.Error is one; so is non-ASCII text
            return None
        return raw if base64.b64encode(raw).decode("ascii") == text else None

    @settings(max_examples=1000)
    @given(st.text(st.sampled_from("AQRgw09+/=-_ \n\té"), max_size=12))
    def test_accepts_exactly_what_the_rule_accepts(self, text: str) -> None:
        expected = self._rule(text)
        if expected is None:
            with pytest.raises(MalformedEnvelopeError, match="not valid base64"):
                _json.b64({"nonce": text}, "nonce")
        else:
            assert _json.b64({"nonce": text}, "nonce") == expected

    @pytest.mark.parametrize("text", ["QR==", "QQ===", "QQ", "QQ==\n", "Q Q==", "é"])
    def test_non_canonical_or_stray_text_is_refused(self, text: str) -> None:
        with pytest.raises(MalformedEnvelopeError, match="not valid base64"):
            _json.b64({"nonce": text}, "nonce")

    @given(st.binary(max_size=40))
    def test_what_is_written_is_read_back(self, data: bytes) -> None:
        assert _json.b64({"nonce": _json.b64_text(data)}, "nonce") == data
