"""Checks on what callers hand the facade, and the metric labels of an envelope."""

from __future__ import annotations

from heimdall_kms.envelope import Envelope, KmsV1Envelope, LegacyEnvelope
from heimdall_kms.errors import InvalidInputError, MalformedEnvelopeError
from heimdall_kms.kinds import EnvelopeFormat

__all__ = [
    "LEGACY_LABEL",
    "MAX_PLAINTEXT_BYTES",
    "MAX_STORED_PLAINTEXT_BYTES",
    "checked_label",
    "metric_labels",
    "plaintext_bytes",
    "utf8_text",
]

# New values handed to encrypt (API, CLI, protect).
MAX_PLAINTEXT_BYTES = 1024 * 1024
# Stored values a job re-encrypts (migrate, reencrypt): the largest plaintext whose kms_v1
# envelope (base64 is 4/3 of it, plus the wrapped DEK and context) still fits the envelope bound.
MAX_STORED_PLAINTEXT_BYTES = 46 * 1024 * 1024
# The provider label of legacy values (they have no KMS provider): their format's name.
LEGACY_LABEL = EnvelopeFormat.LEGACY.value
_MAX_LABEL_CHARS = 512


def metric_labels(envelope: Envelope) -> tuple[str, str]:
    # Legacy values are counted under provider "legacy" with their key id as the version:
    # a handful of configured ids, so the label set stays small.
    if isinstance(envelope, KmsV1Envelope):
        return envelope.provider, str(envelope.key_version)
    if isinstance(envelope, LegacyEnvelope):
        return LEGACY_LABEL, envelope.key_id
    return LEGACY_LABEL, "unknown"


def plaintext_bytes(text: object, limit: int = MAX_PLAINTEXT_BYTES) -> bytes:
    if not isinstance(text, str):
        raise InvalidInputError("plaintext must be text (str)")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError("plaintext is not encodable as UTF-8") from None
    if len(data) > limit:
        raise InvalidInputError(f"plaintext is larger than {limit} bytes")
    return data


def checked_label(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} is required (who is asking, and why, is audited)")
    if len(value) > _MAX_LABEL_CHARS:
        raise InvalidInputError(f"{name} is longer than {_MAX_LABEL_CHARS} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{name} is not valid Unicode text") from None
    return value


def utf8_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEnvelopeError("decrypted value is not UTF-8 text") from None
