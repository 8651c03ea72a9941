"""The ``kms_v1`` envelope (SPEC §4.2): AES-256-GCM under a per-value DEK wrapped by the KMS."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from heimdall_kms.context_json import context_json_ascii
from heimdall_kms.envelope import _json
from heimdall_kms.envelope._base import ALGORITHM, Envelope
from heimdall_kms.errors import InvalidInputError, MalformedEnvelopeError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.wrapped_key import parse_wrapped

__all__ = [
    "KMS_V1",
    "KmsV1Envelope",
    "aad_of_encoded",
    "check_context",
    "check_key_version",
    "kms_v1_aad",
]

KMS_V1 = "kms_v1"
# RFC 3339 in UTC, as written by utc_timestamp(); fromisoformat alone also takes ISO week
# dates, dates without a time and local offsets.
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|\+00:00)")
_PROVIDERS = frozenset(ProviderName)
_KNOWN_KEYS = frozenset(
    {
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
    }
)
KMS_V1_KEYS = _KNOWN_KEYS  # the fields this version defines


_AAD_HEAD = '{"alg":' + json.dumps(ALGORITHM) + ',"ctx":'
_AAD_TAIL = ',"v":' + json.dumps(KMS_V1) + "}"


def kms_v1_aad(context: Mapping[str, str]) -> bytes:
    """The canonical associated data: sorted-key compact JSON of version, algorithm, context.

    Only fields that never change for a value are covered. ``key_version``, ``encrypted_dek``
    and ``encryption_timestamp`` are left out so that a rewrap leaves ``ciphertext`` untouched.
    """
    return aad_of_encoded(context_json_ascii(context))


def aad_of_encoded(encoded_context: str) -> bytes:
    """:func:`kms_v1_aad` from ``context_json_ascii(context)``, for callers that need it too."""
    # Equal to json.dumps({"alg": ..., "ctx": ..., "v": ...}, sort_keys=True, compact): the
    # three keys are written in their sorted order, and only the context is encoded per value.
    return (_AAD_HEAD + encoded_context + _AAD_TAIL).encode("ascii")


def check_context(context: object, *, error: type[Exception] = InvalidInputError) -> dict[str, str]:
    """Return the context as a plain ``dict[str, str]`` or raise ``error`` saying what is wrong."""
    if type(context) is dict and len(context) <= _json.MAX_CONTEXT_ENTRIES:
        # The common case, checked in one pass; anything unusual takes the path below, which
        # says what is wrong. isascii() is O(1) and ASCII text is always valid UTF-8.
        for key, value in context.items():
            if not (
                type(key) is str
                and type(value) is str
                and 0 < len(key) <= _json.MAX_CONTEXT_KEY_CHARS
                and len(value) <= _json.MAX_CONTEXT_VALUE_CHARS
                and key.isascii()
                and value.isascii()
            ):
                break
        else:
            return _bounded(context.copy(), error)
    if not isinstance(context, Mapping):
        raise error("context must be a mapping of strings to strings")
    if len(context) > _json.MAX_CONTEXT_ENTRIES:
        raise error(f"context has more than {_json.MAX_CONTEXT_ENTRIES} entries")
    checked: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not key or len(key) > _json.MAX_CONTEXT_KEY_CHARS:
            raise error(
                f"context key {_json.short(key)} must be a non-empty string "
                f"of at most {_json.MAX_CONTEXT_KEY_CHARS} characters"
            )
        if not isinstance(value, str) or len(value) > _json.MAX_CONTEXT_VALUE_CHARS:
            raise error(
                f"context value for {key!r} must be a string of at most "
                f"{_json.MAX_CONTEXT_VALUE_CHARS} characters"
            )
        if not (_utf8_encodable(key) and _utf8_encodable(value)):
            raise error(f"context entry {_json.short(key)} is not valid Unicode text")
        checked[key] = value
    return _bounded(checked, error)


def _bounded(context: dict[str, str], error: type[Exception]) -> dict[str, str]:
    """``context``, unless its JSON is over the total bound. A character is at most 12 in
    that JSON (an escaped surrogate pair), each entry adds 6 (quotes, colon, comma)."""
    chars = sum(len(key) + len(value) for key, value in context.items())
    if 12 * chars + 6 * len(context) + 2 <= _json.MAX_CONTEXT_JSON_CHARS:
        return context
    if len(context_json_ascii(context)) > _json.MAX_CONTEXT_JSON_CHARS:
        raise error(f"context is larger than {_json.MAX_CONTEXT_JSON_CHARS} characters as JSON")
    return context


def check_key_version(provider: str, key_version: int, encrypted_dek: str) -> None:
    """``key_version`` must be the version the wrapped DEK itself carries (SPEC §4.2).

    ``key_version`` is outside the AAD (a rewrap changes it), so an edited one would otherwise
    be believed by the census, the retire guard, the audit and the metrics.

    Raises:
        MalformedEnvelopeError: the wrapped DEK is not ``<provider>:v<N>:…`` of this provider,
            or N is not ``key_version``.
    """
    form = parse_wrapped(encrypted_dek)
    if form is None or form.provider != provider:
        raise MalformedEnvelopeError(
            f"envelope field 'encrypted_dek' is not a {provider} wrapped key (<provider>:v<N>:...)"
        )
    if form.version != key_version:
        raise MalformedEnvelopeError(
            "envelope field 'key_version' does not match the version of its wrapped key"
        )


def _utf8_encodable(text: str) -> bool:
    # Lone surrogates survive json.loads but cannot be written to an audit line or a database.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def key_id_of(provider: str, key_identifier: str, key_version: int) -> str:
    """The ``key_id`` a ``kms_v1`` envelope carries (SPEC §4.2)."""
    return f"{provider}:{key_identifier}:v{key_version}"


def utc_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with a ``Z`` suffix and microseconds."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class KmsV1Envelope(Envelope):
    """A value sealed under a DEK that the KMS key ``key_identifier`` v``key_version`` wraps."""

    encryption_version: ClassVar[str] = KMS_V1

    provider: str
    key_identifier: str
    key_version: int
    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    encrypted_dek: str = field(repr=False)
    context: Mapping[str, str]
    encryption_timestamp: str
    algorithm: str = ALGORITHM
    # Keys this version does not define, kept so that a parse -> to_json round trip is lossless.
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def aad(self) -> bytes:
        return kms_v1_aad(self.context)

    @property
    def key_id(self) -> str:
        """``<provider>:<key_identifier>:v<key_version>``, e.g. ``vault:heimdall-pii:v3``.

        Written so that the legacy engine's ``is_encrypted`` (which wants ``ciphertext``,
        ``nonce``, ``key_id`` and ``algorithm`` strings) recognises a ``kms_v1`` value as
        encrypted during the hybrid period. It is derived, never stored apart, so a rewrap
        (new ``key_version``) updates it; like ``key_version`` it is not in the AAD.
        """
        return key_id_of(self.provider, self.key_identifier, self.key_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "encryption_version": KMS_V1,
            "provider": self.provider,
            "key_identifier": self.key_identifier,
            "key_version": self.key_version,
            "key_id": self.key_id,
            "algorithm": self.algorithm,
            "ciphertext": _json.b64_text(self.ciphertext),
            "nonce": _json.b64_text(self.nonce),
            "encrypted_dek": self.encrypted_dek,
            "context": dict(self.context),
            "encryption_timestamp": self.encryption_timestamp,
        }

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KmsV1Envelope:
        """Build from a parsed JSON object whose ``encryption_version`` is ``kms_v1``.

        Raises:
            MalformedEnvelopeError: a field is missing, of the wrong type, or out of bounds.
        """
        algorithm = _json.text(obj, "algorithm", max_chars=64)
        if algorithm != ALGORITHM:
            raise MalformedEnvelopeError(f"unsupported algorithm {_json.short(algorithm)}")
        provider = _json.text(obj, "provider", max_chars=16)
        if provider not in _PROVIDERS:
            raise MalformedEnvelopeError(f"unknown provider {_json.short(provider)}")
        key_version = obj.get("key_version")
        if isinstance(key_version, bool) or not isinstance(key_version, int) or key_version < 1:
            raise MalformedEnvelopeError("envelope field 'key_version' must be an integer >= 1")
        key_identifier = _json.text(obj, "key_identifier", max_chars=2048)
        if "key_id" in obj:
            # Absent in values written before it existed; where present it must say what the
            # envelope says, or two readers would name different keys for one value.
            stated = _json.text(obj, "key_id", max_chars=2200)
            if stated != key_id_of(provider, key_identifier, key_version):
                raise MalformedEnvelopeError(
                    "envelope field 'key_id' does not match provider, key_identifier and "
                    "key_version"
                )
        timestamp = _json.text(obj, "encryption_timestamp", max_chars=64)
        try:
            if not _RFC3339_UTC.fullmatch(timestamp):
                raise ValueError(timestamp)
            datetime.fromisoformat(timestamp)
        except ValueError:
            raise MalformedEnvelopeError(
                "envelope field 'encryption_timestamp' is not an RFC 3339 time"
            ) from None
        encrypted_dek = _json.text(obj, "encrypted_dek", max_chars=_json.MAX_ENCRYPTED_DEK_CHARS)
        check_key_version(provider, key_version, encrypted_dek)
        return cls(
            provider=provider,
            key_identifier=key_identifier,
            key_version=key_version,
            ciphertext=_json.b64(obj, "ciphertext"),
            nonce=_json.b64(obj, "nonce"),
            encrypted_dek=encrypted_dek,
            context=check_context(obj.get("context"), error=MalformedEnvelopeError),
            encryption_timestamp=timestamp,
            algorithm=algorithm,
            extra={key: value for key, value in obj.items() if key not in _KNOWN_KEYS},
        )
