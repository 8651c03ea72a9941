"""What a stored value is: an envelope of some version, a companion legacy value, or neither."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from heimdall_kms.envelope import Envelope, KmsV1Envelope, LegacyEnvelope, parse
from heimdall_kms.errors import MalformedEnvelopeError

__all__ = ["Classified", "ValueKind", "classify"]

REDACTED = "[REDACTED]"
HASH_PREFIX = "sha256:"


class ValueKind(StrEnum):
    KMS_V1 = "kms_v1"
    LEGACY = "legacy"
    NULL = "null"
    HASH = "sha256_hash"
    REDACTED = "redacted"
    PLAINTEXT = "plaintext"  # anything else that is not an envelope: left alone
    UNPARSEABLE = "unparseable"  # looks like an envelope but is damaged: reported

    @property
    def is_envelope(self) -> bool:
        return self in (ValueKind.KMS_V1, ValueKind.LEGACY)


NOT_ENVELOPE = (ValueKind.NULL, ValueKind.HASH, ValueKind.REDACTED, ValueKind.PLAINTEXT)


@dataclass(frozen=True, slots=True)
class Classified:
    kind: ValueKind
    envelope: Envelope | None = None
    error: MalformedEnvelopeError | None = None


def classify(value: str | None) -> Classified:
    """Classify one stored value without touching any key."""
    if value is None:
        return Classified(ValueKind.NULL)
    if value == REDACTED:
        return Classified(ValueKind.REDACTED)
    if value.startswith(HASH_PREFIX):
        return Classified(ValueKind.HASH)
    if not value.lstrip().startswith("{"):
        return Classified(ValueKind.PLAINTEXT)
    try:
        envelope = parse(value)
    except MalformedEnvelopeError as exc:
        # A JSON object naming envelope fields is a damaged envelope, not someone's document.
        if '"ciphertext"' in value or '"encryption_version"' in value:
            return Classified(ValueKind.UNPARSEABLE, error=exc)
        return Classified(ValueKind.PLAINTEXT)
    if isinstance(envelope, KmsV1Envelope):
        return Classified(ValueKind.KMS_V1, envelope)
    assert isinstance(envelope, LegacyEnvelope)
    return Classified(ValueKind.LEGACY, envelope)
