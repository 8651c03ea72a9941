"""What a stored value is: an envelope of some version, a companion legacy value, or neither.

A value is read where the target says it sits: the whole column, or (``--json-path``) one key
of a JSON document. On a json/jsonb column a JSON *string* is read as the text it holds, so an
envelope stored with ``to_jsonb(text)`` is seen. Whatever else holds an envelope-shaped value
where nobody asked to look is ``NESTED``: reported, never counted as harmless.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from heimdall_kms.envelope import Envelope, KmsV1Envelope, LegacyEnvelope, parse
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.frozen_slots import new_instance, slot_setters
from heimdall_kms.jobs.jsonpath import (
    DocumentError,
    Span,
    has_envelope_key,
    holds_envelope,
    locate,
    names_envelope_key,
    without_path,
)
from heimdall_kms.kinds import EnvelopeFormat
from heimdall_kms.wrapped_key import is_hmac_tag

__all__ = ["Classified", "Slot", "ValueKind", "classify", "is_companion"]

REDACTED = "[REDACTED]"
HASH_PREFIX = "sha256:"
_HASH = re.compile(r"sha256:[0-9a-f]{64}")


class ValueKind(StrEnum):
    """What a stored value is: an envelope of one of the formats, or what else it holds."""

    KMS_V1 = EnvelopeFormat.KMS_V1.value
    LEGACY = EnvelopeFormat.LEGACY.value
    NULL = "null"
    HASH = "sha256_hash"
    HMAC = "hmac"
    REDACTED = "redacted"
    ABSENT = "absent"  # --json-path: the document has no value at the path
    PLAINTEXT = "plaintext"  # anything else that is not an envelope: left alone, gated
    UNPARSEABLE = "unparseable"  # looks like an envelope but is damaged: reported
    NESTED = "nested_envelope"  # an envelope-shaped value where nobody asked to look: reported

    @property
    def is_envelope(self) -> bool:
        return self in (ValueKind.KMS_V1, ValueKind.LEGACY)


NOT_ENVELOPE = (
    ValueKind.NULL,
    ValueKind.HASH,
    ValueKind.HMAC,
    ValueKind.REDACTED,
    ValueKind.ABSENT,
    ValueKind.PLAINTEXT,
)


@dataclass(frozen=True, slots=True)
class Slot:
    """Where an envelope sits in the stored text, and how to put its replacement there."""

    document: str
    span: Span
    quoted: bool  # the envelope is a JSON string there (escaped), not an object

    def put(self, envelope_json: str) -> str:
        """The stored text with the envelope replaced; every other character kept."""
        inner = json.dumps(envelope_json, ensure_ascii=False) if self.quoted else envelope_json
        span = self.span
        if span.start == 0 and span.end == len(self.document):
            return inner  # the whole column (most values): nothing around it to keep
        return self.document[: span.start] + inner + self.document[span.end :]


@dataclass(frozen=True, slots=True)
class Classified:
    kind: ValueKind
    envelope: Envelope | None = None
    error: MalformedEnvelopeError | None = None
    slot: Slot | None = None
    # The document also holds an envelope-shaped value outside the path that was read.
    nested_elsewhere: bool = False

    @property
    def nested(self) -> bool:
        return self.kind is ValueKind.NESTED or self.nested_elsewhere


def is_companion(value: str) -> bool:
    """A legacy companion value: ``[REDACTED]``, a ``sha256:`` hash or an ``hmac:`` tag."""
    # hmac:<provider>:v<N>:<base64 of a 32-byte tag>, the form the policy gates accept too.
    return value == REDACTED or bool(_HASH.fullmatch(value)) or is_hmac_tag(value)


def classify(
    value: str | None, *, path: tuple[str, ...] | None = None, json_column: bool = False
) -> Classified:
    """Classify one stored value without touching any key.

    ``path`` is the dotted ``--json-path`` split into keys; ``json_column`` says the text is
    the rendering of a json/jsonb value.
    """
    if value is None:
        return Classified(ValueKind.NULL)
    if path is not None:
        return _at_path(value, path, json_column)
    whole = Span(0, len(value))
    if json_column and value.startswith('"'):
        try:
            inner = json.loads(value)
        except (ValueError, RecursionError):
            inner = None
        if isinstance(inner, str):
            return _text(inner, _slot(value, whole, quoted=True))
    if json_column and value == "null":
        return Classified(ValueKind.NULL)
    return _text(value, _slot(value, whole, quoted=False))


def _at_path(value: str, path: tuple[str, ...], json_column: bool) -> Classified:
    try:
        span = locate(value, path)
    except DocumentError as exc:
        if "repeats the key" in str(exc):
            # Two readers could take different values at the path: whatever they are.
            return Classified(ValueKind.UNPARSEABLE, error=MalformedEnvelopeError(str(exc)))
        found = classify(value, json_column=json_column)
        if found.kind.is_envelope or found.kind is ValueKind.UNPARSEABLE:
            # An envelope, but not where the command was told to look.
            return Classified(ValueKind.NESTED)
        return found
    document = _parsed(value)
    elsewhere = document is _TOO_DEEP or holds_envelope(without_path(document, path))
    if span is None:
        return Classified(ValueKind.NESTED if elsewhere else ValueKind.ABSENT)
    raw = value[span.start : span.end]
    if raw == "null":
        found = Classified(ValueKind.NULL)
    elif raw.startswith('"'):
        found = _text(json.loads(raw), Slot(value, span, quoted=True))
    else:
        found = _text(raw, Slot(value, span, quoted=False))
    return replace(found, nested_elsewhere=elsewhere)


def _text(value: str, slot: Slot) -> Classified:
    """What ``value`` is; an envelope is found at ``slot``."""
    # An envelope starts with "{" (most values a job reads); a companion value never does.
    if not value.startswith("{"):
        if is_companion(value):
            if value == REDACTED:
                return Classified(ValueKind.REDACTED)
            return Classified(ValueKind.HASH if value.startswith(HASH_PREFIX) else ValueKind.HMAC)
        stripped = value.lstrip()
        if not stripped.startswith("{"):
            if stripped.startswith(("[", '"')):
                return _not_an_envelope(value, None)
            return _plaintext(value, None)
    try:
        envelope = parse(value)
    except MalformedEnvelopeError as exc:
        return _not_an_envelope(value, exc)
    if isinstance(envelope, KmsV1Envelope):
        return _found(ValueKind.KMS_V1, envelope, slot)
    assert isinstance(envelope, LegacyEnvelope)
    return _found(ValueKind.LEGACY, envelope, slot)


# The objects made once per value a job reads, without the frozen __init__ (frozen_slots).
_set_kind, _set_envelope, _set_error, _set_slot, _set_nested = slot_setters(
    Classified, "kind", "envelope", "error", "slot", "nested_elsewhere"
)
_set_document, _set_span, _set_quoted = slot_setters(Slot, "document", "span", "quoted")


def _found(kind: ValueKind, envelope: Envelope, slot: Slot) -> Classified:
    """What ``Classified(kind, envelope, slot=slot)`` makes (``test_classify`` compares)."""
    found = new_instance(Classified)
    _set_kind(found, kind)
    _set_envelope(found, envelope)
    _set_error(found, None)
    _set_slot(found, slot)
    _set_nested(found, False)
    return found


def _slot(document: str, span: Span, *, quoted: bool) -> Slot:
    """What ``Slot(document, span, quoted=quoted)`` makes (``test_classify`` compares)."""
    slot = new_instance(Slot)
    _set_document(slot, document)
    _set_span(slot, span)
    _set_quoted(slot, quoted)
    return slot


def _not_an_envelope(value: str, error: MalformedEnvelopeError | None) -> Classified:
    document = _parsed(value)
    if document is _INVALID:
        # Not JSON at all: damaged if it names an envelope's key, otherwise someone's text.
        return _plaintext(value, error)
    if isinstance(document, dict) and has_envelope_key(document):
        # A JSON object naming envelope fields is a damaged envelope, not someone's document.
        return Classified(ValueKind.UNPARSEABLE, error=error or MalformedEnvelopeError(_NOT_READ))
    if _holds_envelope(document):
        return Classified(ValueKind.NESTED)
    return _plaintext(value, error)


def _plaintext(value: str, error: MalformedEnvelopeError | None) -> Classified:
    """Someone's text, unless it names an envelope's key: an envelope after a BOM or a
    label, cut off, its keys escaped or in another case, UTF-16 is nobody's plaintext, and a
    gate that let it pass as such would count an envelope nobody reads as harmless."""
    if names_envelope_key(value):
        return Classified(ValueKind.UNPARSEABLE, error=error or MalformedEnvelopeError(_NOT_READ))
    return Classified(ValueKind.PLAINTEXT)


_NOT_READ = "names an envelope's fields but is not an envelope"


_INVALID: Any = object()
_TOO_DEEP: Any = object()


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        return _TOO_DEEP
    except ValueError:
        return _INVALID


def _holds_envelope(document: Any) -> bool:
    # Too deep to walk is too deep to call harmless.
    return document is _TOO_DEEP or holds_envelope(document)
