"""Stored envelope formats and the single version dispatch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from heimdall_kms.envelope import _json
from heimdall_kms.envelope._base import ALGORITHM, Envelope
from heimdall_kms.envelope.context import check_context
from heimdall_kms.envelope.kms_v1 import KMS_V1, KeyRef, KmsV1Envelope, kms_v1_aad
from heimdall_kms.envelope.legacy import LEGACY, LEGACY_KEYS, LegacyEnvelope
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.kinds import EnvelopeFormat

__all__ = [
    "ALGORITHM",
    "KMS_V1",
    "LEGACY",
    "Envelope",
    "EnvelopeFormat",
    "KeyRef",
    "KmsV1Envelope",
    "LegacyEnvelope",
    "check_context",
    "kms_v1_aad",
    "parse",
    "parse_strict",
]


def parse(source: str | bytes | Mapping[str, Any]) -> KmsV1Envelope | LegacyEnvelope:
    """Parse a stored value into its envelope type; the only place that reads the version.

    Raises:
        MalformedEnvelopeError: see :meth:`Envelope.from_json`.
    """
    obj = _json.load_object(source)
    version = obj.get("encryption_version")
    if version is not None:
        # Checked before the legacy fields: a kms_v1 envelope carries a key_id too, and a
        # later version is never read as legacy.
        if version == KMS_V1:
            return KmsV1Envelope.from_object(obj)
        raise MalformedEnvelopeError(f"unsupported encryption_version {_json.short(version)}")
    # The engine's own values have no encryption_version; null is read as absent (SPEC §4.1).
    if "encrypted_dek" in obj:
        # A kms_v1 envelope carries the four legacy strings too (key_id among them): with its
        # version stripped it must not fall back to the legacy reader.
        raise MalformedEnvelopeError("kms_v1 fields without an encryption_version")
    if obj.keys() >= LEGACY_KEYS:
        return LegacyEnvelope.from_object(obj)
    raise MalformedEnvelopeError(
        "not an envelope: no encryption_version and not the legacy "
        "{ciphertext, nonce, key_id, algorithm} form"
    )


def parse_strict(source: str | bytes | Mapping[str, Any]) -> KmsV1Envelope | LegacyEnvelope:
    """:func:`parse`, refusing any field the format does not define.

    Reading is lenient (unknown fields are kept or ignored); a gate that must tell protected
    values from plaintext is not: an unknown field can carry anything, an SSN included.

    Raises:
        MalformedEnvelopeError: see :func:`parse`, or a field the format does not define.
    """
    obj = _json.load_object(source)
    envelope = parse(obj)
    if isinstance(envelope, KmsV1Envelope):
        unknown = set(envelope.extra)
    else:
        allowed = LEGACY_KEYS | ({"encryption_version"} if "encryption_version" in obj else set())
        unknown = set(obj) - allowed
    if unknown:
        raise MalformedEnvelopeError(
            f"envelope has {len(unknown)} field(s) its format does not define"
        )
    return envelope
