"""Runs the envelope test vectors in tests/vectors/ (provenance in tests/vectors/README.md).

kms_v1 vectors are checked three ways: at the format level (``envelope.parse`` then
``primitives.open_`` with the vector's DEK), through the real ``Crypto`` facade backed by the real
``LocalDevProvider`` (its keyring holds the generator's fixed test master keys, so each
vector's ``encrypted_dek`` unwraps to ``dek_hex``; no test double), and, for good vectors,
with pycryptodome as an independent AES-GCM implementation. Legacy vectors, which pycryptodome
produced, go through the real facade in legacy and in hybrid mode.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from Crypto.Cipher import AES
from jsonschema import Draft202012Validator

from heimdall_kms import errors, primitives
from heimdall_kms.audit import EventType, MemoryAuditSink, Result
from heimdall_kms.config import EncryptionMode, ProviderName, Secret, Settings
from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope, parse
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from heimdall_kms.service import Crypto

ROOT = Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "tests" / "vectors"
ACTOR, REASON = "vector-test", "envelope test vectors"

Vector = dict[str, Any]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_vectors", ROOT / "scripts" / "gen_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def _vectors(name: str) -> list[Vector]:
    vectors: list[Vector] = json.loads((VECTOR_DIR / name).read_text(encoding="utf-8"))
    return vectors


KMS_V1 = _vectors("kms_v1.json")
LEGACY = _vectors("legacy.json")


def _params(vectors: list[Vector], *, good: bool | None = None) -> list[Any]:
    return [
        pytest.param(vector, id=vector["comment"])
        for vector in vectors
        if good is None or ("plaintext" in vector) == good
    ]


@cache
def _validator(name: str) -> Draft202012Validator:
    # Loaded as package data, the way an installed wheel ships it.
    schema = json.loads(resources.files("heimdall_kms.envelope").joinpath(name).read_text("utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _source(vector: Vector) -> Any:
    return vector["envelope"] if "envelope" in vector else vector["text"]


def _document(vector: Vector) -> Any:
    """The JSON value a schema sees (only for vectors that state ``schema_valid``)."""
    return vector["envelope"] if "envelope" in vector else json.loads(vector["text"])


def _expected_error(vector: Vector) -> type[errors.HeimdallKMSError]:
    error: type[errors.HeimdallKMSError] = getattr(errors, vector["error"])
    assert issubclass(error, errors.HeimdallKMSError)
    return error


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def local_provider(tmp_path: Path) -> Iterator[LocalDevProvider]:
    """The real local provider over a keyring holding the generator's test master keys."""
    path = tmp_path / "keyring.json"
    versions = {
        str(number): {"key": key.hex(), "created_at": "2024-06-01T00:00:00+00:00"}
        for number, key in GEN.LOCAL_MEKS.items()
    }
    document = {
        "format": "heimdall-local-keyring/1",
        "warning": "NOT FOR PRODUCTION: test vectors' fixed master keys.",
        "keys": {GEN.LOCAL_KEY_NAME: {"min_decryption_version": 1, "versions": versions}},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    provider = LocalDevProvider(LocalKeyring(path), GEN.LOCAL_KEY_NAME)
    yield provider
    provider.close()


def _kms_settings(mode: EncryptionMode, **legacy: Any) -> Settings:
    return Settings(mode=mode, provider=ProviderName.LOCAL, kms_key_id=GEN.LOCAL_KEY_NAME, **legacy)


def _legacy_keys(vector: Vector) -> dict[str, Secret[bytes]]:
    return {key_id: Secret(bytes.fromhex(key)) for key_id, key in vector["keys"].items()}


def _assert_decrypt(facade: Crypto, sink: MemoryAuditSink, vector: Vector) -> None:
    """Decrypt through the facade; check the outcome and its single audit event."""
    if "plaintext" in vector:
        text = facade.decrypt(
            _source(vector), actor=ACTOR, reason=REASON, context=vector["context"]
        )
        assert text == vector["plaintext"]
    else:
        with pytest.raises(_expected_error(vector)) as caught:
            facade.decrypt(_source(vector), actor=ACTOR, reason=REASON, context=vector["context"])
        assert type(caught.value) is _expected_error(vector)
    (event,) = sink.events
    assert event.event_type is EventType.DECRYPT
    if "plaintext" in vector:
        assert event.result is Result.SUCCESS
        if vector["plaintext"]:
            assert vector["plaintext"] not in json.dumps(event.to_dict(), ensure_ascii=False)
    else:
        assert event.result is Result.FAILURE
        assert event.error_type == _expected_error(vector).error_type


# -- kms_v1 -------------------------------------------------------------------------------------


def _open_kms_v1(vector: Vector) -> str:
    """SPEC 4.2 and 5 at the format level: parse, the stated-context rule, open, UTF-8."""
    envelope = parse(_source(vector))
    assert isinstance(envelope, KmsV1Envelope)
    for key, value in (vector["context"] or {}).items():
        if envelope.context.get(key) != value:
            raise errors.IntegrityError("stated context differs")
    dek = bytes.fromhex(vector["dek_hex"])
    plaintext = primitives.open_(dek, envelope.nonce, envelope.ciphertext, envelope.aad())
    try:
        return plaintext.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.MalformedEnvelopeError("not UTF-8") from None


@pytest.mark.parametrize("vector", _params(KMS_V1))
def test_kms_v1_vector_parse_and_open(vector: Vector) -> None:
    if "plaintext" in vector:
        assert _open_kms_v1(vector) == vector["plaintext"]
    else:
        with pytest.raises(_expected_error(vector)):
            _open_kms_v1(vector)


@pytest.mark.parametrize("vector", _params(KMS_V1))
def test_kms_v1_vector_through_facade(vector: Vector, local_provider: LocalDevProvider) -> None:
    sink = MemoryAuditSink()
    facade = Crypto(_kms_settings(EncryptionMode.KMS), kms=local_provider, audit=sink)
    _assert_decrypt(facade, sink, vector)


def _wrapped_dek_params() -> list[Any]:
    return [
        pytest.param(vector["envelope"]["encrypted_dek"], vector["dek_hex"], id=vector["comment"])
        for vector in KMS_V1
        if isinstance(vector.get("envelope", {}).get("encrypted_dek"), str)
    ]


@pytest.mark.parametrize(("encrypted_dek", "dek_hex"), _wrapped_dek_params())
def test_kms_v1_encrypted_dek_unwraps_to_dek_hex(
    encrypted_dek: str, dek_hex: str, local_provider: LocalDevProvider
) -> None:
    (dek,) = local_provider.unwrap_many([encrypted_dek], [{}])
    assert isinstance(dek, bytearray)
    assert dek.hex() == dek_hex


@pytest.mark.parametrize("vector", _params(KMS_V1, good=True))
def test_kms_v1_good_vector_independent_aes_gcm(vector: Vector) -> None:
    """pycryptodome and a hand-built AAD agree with the product's crypto on every good value."""
    envelope = _document(vector)
    aad = json.dumps(
        {"alg": envelope["algorithm"], "ctx": envelope["context"], "v": "kms_v1"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode("ascii")
    if "aad" in vector:
        assert aad == vector["aad"].encode("ascii")
    sealed = base64.b64decode(envelope["ciphertext"])
    cipher = AES.new(
        bytes.fromhex(vector["dek_hex"]), AES.MODE_GCM, nonce=base64.b64decode(envelope["nonce"])
    )
    cipher.update(aad)
    plaintext = cipher.decrypt_and_verify(sealed[:-16], sealed[-16:])
    assert plaintext.decode("utf-8") == vector["plaintext"]


@pytest.mark.parametrize("vector", _params(KMS_V1, good=True))
def test_kms_v1_good_vector_round_trips_losslessly(vector: Vector) -> None:
    envelope = parse(_source(vector))
    if vector["comment"].startswith("compat:"):
        # Written before key_id existed: read as is, written back with the derived key_id.
        document = _document(vector)
        assert envelope.to_dict() == {**document, "key_id": envelope.key_id}  # type: ignore[union-attr]
        return
    assert envelope.to_dict() == _document(vector)
    assert json.loads(envelope.to_json()) == _document(vector)


# -- legacy -------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _params(LEGACY))
def test_legacy_vector_legacy_mode(vector: Vector) -> None:
    settings = Settings(mode=EncryptionMode.LEGACY, legacy_keys=_legacy_keys(vector))
    sink = MemoryAuditSink()
    _assert_decrypt(Crypto(settings, kms=None, audit=sink), sink, vector)


@pytest.mark.parametrize("vector", _params(LEGACY))
def test_legacy_vector_hybrid_mode(vector: Vector, local_provider: LocalDevProvider) -> None:
    settings = _kms_settings(EncryptionMode.HYBRID, legacy_keys=_legacy_keys(vector))
    sink = MemoryAuditSink()
    _assert_decrypt(Crypto(settings, kms=local_provider, audit=sink), sink, vector)


@pytest.mark.parametrize("vector", _params(LEGACY, good=True))
def test_legacy_good_vector_round_trips_losslessly(vector: Vector) -> None:
    envelope = parse(_source(vector))
    assert isinstance(envelope, LegacyEnvelope)
    if vector["comment"].startswith("lenient:"):
        # Read as the engine reads it; written back in the engine's own four fields.
        four = {key: _document(vector)[key] for key in ("ciphertext", "nonce", "key_id")}
        assert envelope.to_dict() == {**four, "algorithm": "AES-256-GCM"}
        return
    assert envelope.to_dict() == _document(vector)


# -- schemas ------------------------------------------------------------------------------------


def _schema_params(*, valid_only: bool = False) -> list[Any]:
    return [
        pytest.param(name, vector, id=f"{name}:{vector['comment']}")
        for name, vectors in (("kms_v1.schema.json", KMS_V1), ("legacy.schema.json", LEGACY))
        for vector in vectors
        if "schema_valid" in vector and (vector["schema_valid"] or not valid_only)
    ]


@pytest.mark.parametrize(("schema", "vector"), _schema_params())
def test_schema_verdict_matches_vector(schema: str, vector: Vector) -> None:
    assert _validator(schema).is_valid(_document(vector)) is vector["schema_valid"]


@pytest.mark.parametrize(("schema", "vector"), _schema_params(valid_only=True))
def test_schema_valid_documents_parse(schema: str, vector: Vector) -> None:
    """The schema never accepts what the reader refuses (it may refuse more)."""
    kind = KmsV1Envelope if schema == "kms_v1.schema.json" else LegacyEnvelope
    assert isinstance(parse(_document(vector)), kind)


def test_the_two_schemas_are_disjoint() -> None:
    for vector in [*KMS_V1, *LEGACY]:
        if vector.get("schema_valid"):
            document = _document(vector)
            verdicts = [
                _validator(n).is_valid(document)
                for n in ("kms_v1.schema.json", "legacy.schema.json")
            ]
            assert verdicts.count(True) == 1, vector["comment"]


def test_fresh_kms_v1_envelope_validates_and_opens(local_provider: LocalDevProvider) -> None:
    sink = MemoryAuditSink()
    facade = Crypto(_kms_settings(EncryptionMode.KMS), kms=local_provider, audit=sink)
    context = {"table": "users", "field": "ssn", "record": "r1"}
    envelope = facade.encrypt("123-45-6789", context=context)
    document = json.loads(envelope.to_json())
    _validator("kms_v1.schema.json").validate(document)
    assert not _validator("legacy.schema.json").is_valid(document)
    text = facade.decrypt(document, actor=ACTOR, reason=REASON, context={"record": "r1"})
    assert text == "123-45-6789"


def test_fresh_legacy_envelope_validates_and_opens_with_pycryptodome() -> None:
    key = GEN.LEGACY_PRIMARY
    settings = Settings(
        mode=EncryptionMode.LEGACY, legacy_keys={GEN.LEGACY_PRIMARY_ID: Secret(key)}
    )
    envelope = Crypto(settings, kms=None, audit=MemoryAuditSink()).encrypt("Zoë 555-0100")
    document = json.loads(envelope.to_json())
    _validator("legacy.schema.json").validate(document)
    assert document["key_id"] == GEN.LEGACY_PRIMARY_ID
    sealed = base64.b64decode(document["ciphertext"])
    cipher = AES.new(key, AES.MODE_GCM, nonce=base64.b64decode(document["nonce"]))
    assert cipher.decrypt_and_verify(sealed[:-16], sealed[-16:]).decode() == "Zoë 555-0100"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ciphertext", "QJRp/AWTNzMGeOKNvzEeUR=="),  # Non-zero padding bits: not canonical.
        ("ciphertext", "QJRp/AWTNzMGeOKNvzEeUQ==\n"),
        ("nonce", "a21zLXYxLTAzLi4u\n"),
        ("encryption_timestamp", "2024-06-01T12:00:00Z\n"),
        ("encryption_timestamp", "2024-06-01T12:00:00+02:00"),
        ("encryption_timestamp", "2024-13-01T12:00:00Z"),
    ],
)
def test_kms_v1_schema_refuses_non_canonical_forms(field: str, value: str) -> None:
    good = next(v for v in KMS_V1 if "envelope" in v and "plaintext" in v)["envelope"]
    assert _validator("kms_v1.schema.json").is_valid(good)
    assert not _validator("kms_v1.schema.json").is_valid({**good, field: value})


# -- reproducibility ----------------------------------------------------------------------------


def test_generator_reproduces_committed_files_byte_for_byte() -> None:
    built = GEN.build()
    assert sorted(built) == sorted(path.name for path in VECTOR_DIR.glob("*.json"))
    for name, text in built.items():
        assert (VECTOR_DIR / name).read_bytes() == text.encode("utf-8"), name


def test_vectors_cover_the_named_errors() -> None:
    for vectors in (KMS_V1, LEGACY):
        assert all(("plaintext" in v) != ("error" in v) for v in vectors)
        assert len({v["comment"] for v in vectors}) == len(vectors)
    assert {v["error"] for v in KMS_V1 if "error" in v} == {
        "IntegrityError",
        "MalformedEnvelopeError",
    }
    assert {v["error"] for v in LEGACY if "error" in v} == {
        "IntegrityError",
        "KeyNotFoundError",
        "MalformedEnvelopeError",
    }
