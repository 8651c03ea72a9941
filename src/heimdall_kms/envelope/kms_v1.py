"""The ``kms_v1`` envelope (SPEC §4.2): AES-256-GCM under a per-value DEK wrapped by the KMS."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from json.encoder import encode_basestring
from operator import itemgetter
from typing import Any, ClassVar, cast

from heimdall_kms.context_json import CheckedContext, aad_json, stored_json
from heimdall_kms.envelope import _json
from heimdall_kms.envelope._base import ALGORITHM, Envelope
from heimdall_kms.envelope.context import check_context
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.frozen_slots import new_instance, slot_setters
from heimdall_kms.kinds import EnvelopeFormat, ProviderName
from heimdall_kms.wrapped_key import wrapped_by

__all__ = [
    "KMS_V1",
    "KeyRef",
    "KmsV1Envelope",
    "check_key_version",
    "kms_v1_aad",
]

KMS_V1 = EnvelopeFormat.KMS_V1
_PROVIDERS = {provider.value: provider for provider in ProviderName}
# What parse_wrapped reads, with this provider's name: <provider>:v<N>:<body>.
_WRAPPED_FORMS = {provider: wrapped_by(provider.value, r"\S+") for provider in ProviderName}
_MAX_VERSION = 999_999_999  # the form's nine digits
# RFC 3339 in UTC, as written by utc_timestamp(); fromisoformat alone also takes ISO week
# dates, dates without a time and local offsets.
_RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|\+00:00)")
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
_AAD_TAIL = ',"v":' + json.dumps(KMS_V1.value) + "}"


def kms_v1_aad(context: Mapping[str, str]) -> bytes:
    """The canonical associated data: sorted-key compact JSON of version, algorithm, context.

    Only fields that never change for a value are covered. ``key_version``, ``encrypted_dek``
    and ``encryption_timestamp`` are left out so that a rewrap leaves ``ciphertext`` untouched.
    """
    # Equal to json.dumps({"alg": ..., "ctx": ..., "v": ...}, sort_keys=True, compact): the
    # three keys are written in their sorted order, and only the context is encoded per value
    # (once per checked context: heimdall_kms.context_json).
    return (_AAD_HEAD + aad_json(context) + _AAD_TAIL).encode("ascii")


def check_key_version(provider: ProviderName, key_version: int, encrypted_dek: str) -> None:
    """``key_version`` must be the version the wrapped DEK itself carries (SPEC §4.2).

    ``key_version`` is outside the AAD (a rewrap changes it), so an edited one would otherwise
    be believed by the census, the retire guard, the audit and the metrics.

    Raises:
        MalformedEnvelopeError: the wrapped DEK is not ``<provider>:v<N>:…`` of this provider,
            or N is not ``key_version``.
    """
    # Per provider, one expression of parse_wrapped's form: this runs once per value read.
    form = _WRAPPED_FORMS.get(provider)
    if form is None or form.fullmatch(encrypted_dek) is None:
        raise MalformedEnvelopeError(
            f"envelope field 'encrypted_dek' is not a {provider} wrapped key (<provider>:v<N>:...)"
        )
    # The form's version has no leading zeros, nor has str(int): equal texts, equal versions.
    # (It has at most nine digits: a larger key_version cannot match, and is not made text.)
    if key_version > _MAX_VERSION or not encrypted_dek.startswith(f"{provider}:v{key_version}:"):
        raise MalformedEnvelopeError(
            "envelope field 'key_version' does not match the version of its wrapped key"
        )


def key_id_of(provider: ProviderName, key_identifier: str, key_version: int) -> str:
    """The ``key_id`` a ``kms_v1`` envelope carries (SPEC §4.2)."""
    return f"{provider}:{key_identifier}:v{key_version}"


def utc_timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC with a ``Z`` suffix and microseconds."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A master key as a ``kms_v1`` envelope names it: its provider and its identifier."""

    provider: ProviderName
    identifier: str

    def sealed(self, envelope: KmsV1Envelope) -> bool:
        """Whether ``envelope``'s DEK was wrapped by this key (at any of its versions)."""
        return envelope.key_identifier == self.identifier and envelope.provider == self.provider

    def __str__(self) -> str:
        return f"{self.provider} key {self.identifier!r}"


@dataclass(frozen=True, slots=True)
class KmsV1Envelope(Envelope):
    """A value sealed under a DEK that the KMS key ``key_identifier`` v``key_version`` wraps."""

    encryption_version: ClassVar[EnvelopeFormat] = KMS_V1

    provider: ProviderName
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
            "encryption_version": KMS_V1.value,
            "provider": str(self.provider),
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

    def to_json(self) -> str:
        """Compact JSON text, as stored in a field: what :meth:`Envelope.to_json` makes of
        :meth:`to_dict`, put together from its parts for the envelopes this package makes and
        reads (a checked context, no extra keys); every job writes one per row.
        ``tests/unit/test_envelope.py`` checks it against the general encoder."""
        context = self.context
        kinds = (type(self), type(context), type(self.provider), type(self.key_version))
        if kinds != _MADE_HERE or self.extra != {}:
            return Envelope.to_json(self)
        checked = cast(CheckedContext, context)  # its type was compared above
        quote = encode_basestring
        try:
            return (
                f'{{"encryption_version":"kms_v1","provider":{quote(self.provider)},'
                f'"key_identifier":{quote(self.key_identifier)},'
                f'"key_version":{self.key_version},"key_id":{quote(self.key_id)},'
                f'"algorithm":{quote(self.algorithm)},'
                f'"ciphertext":"{_json.b64_text(self.ciphertext)}",'
                f'"nonce":"{_json.b64_text(self.nonce)}",'
                f'"encrypted_dek":{quote(self.encrypted_dek)},"context":{stored_json(checked)},'
                f'"encryption_timestamp":{quote(self.encryption_timestamp)}}}'
            )
        except (TypeError, RecursionError):  # not text (built by hand): the general encoder
            return Envelope.to_json(self)

    @classmethod
    def sealed(
        cls,
        *,
        provider: ProviderName,
        key_identifier: str,
        key_version: int,
        ciphertext: bytes,
        nonce: bytes,
        encrypted_dek: str,
        context: Mapping[str, str],
        encryption_timestamp: str,
    ) -> KmsV1Envelope:
        """What ``KmsV1Envelope(...)`` makes of these fields (AES-256-GCM, no extra keys).

        Sealing makes one envelope per value, and the frozen dataclass's ``__init__`` costs
        one ``object.__setattr__`` call per field (about 2 µs a value here); this sets the
        slots directly, to the same effect (``tests/unit/test_envelope.py`` compares them).
        """
        return _filled(
            cls,
            provider,
            key_identifier,
            key_version,
            ciphertext,
            nonce,
            encrypted_dek,
            context,
            encryption_timestamp,
            ALGORITHM,
            {},
        )

    @classmethod
    def sealed_batch(
        cls,
        *,
        provider: ProviderName,
        key_identifier: str,
        key_versions: Sequence[int],
        sealed: Sequence[tuple[bytes, bytes]],
        encrypted_deks: Sequence[str],
        contexts: Sequence[Mapping[str, str]],
        encryption_timestamp: str,
    ) -> list[KmsV1Envelope]:
        """:meth:`sealed` for each value of a batch, in order: ``sealed`` holds each value's
        ``(ciphertext, nonce)``, the other sequences its key version, wrapped DEK and context.

        Built a column at a time (each slot of every envelope by one ``map`` over the batch,
        run in C) rather than a value at a time: ten Python-level setter calls per value were
        about 1.5 µs of the hot path (``tests/unit/test_envelope.py`` compares them).

        Raises:
            ValueError: the sequences are not of one length.
        """
        count = len(contexts)
        if not len(key_versions) == len(sealed) == len(encrypted_deks) == count:
            raise ValueError("sealed_batch needs one key version, sealing and DEK per context")
        if cls is not KmsV1Envelope:  # a subclass's own fields are its __init__'s to set
            return [
                cls.sealed(
                    provider=provider,
                    key_identifier=key_identifier,
                    key_version=version,
                    ciphertext=ciphertext,
                    nonce=nonce,
                    encrypted_dek=dek,
                    context=context,
                    encryption_timestamp=encryption_timestamp,
                )
                for version, (ciphertext, nonce), dek, context in zip(
                    key_versions, sealed, encrypted_deks, contexts, strict=True
                )
            ]
        envelopes = list(map(new_instance, repeat(cls, count)))
        for setter, column in (
            (_set_provider, repeat(provider)),
            (_set_key_identifier, repeat(key_identifier)),
            (_set_key_version, key_versions),
            (_set_ciphertext, map(itemgetter(0), sealed)),
            (_set_nonce, map(itemgetter(1), sealed)),
            (_set_encrypted_dek, encrypted_deks),
            (_set_context, contexts),
            (_set_encryption_timestamp, repeat(encryption_timestamp)),
            (_set_algorithm, repeat(ALGORITHM)),
            (_set_extra, [{} for _ in range(count)]),  # each its own, as the default_factory
        ):
            deque(map(setter, envelopes, column), maxlen=0)
        return envelopes

    def rewrapped(self, encrypted_dek: str, key_version: int) -> KmsV1Envelope:
        """This envelope with its DEK wrapped again (the ciphertext, its AAD and the rest are
        kept): ``dataclasses.replace`` without the frozen ``__init__``, once per value
        rewrapped."""
        if type(self) is not KmsV1Envelope:  # a subclass's own fields: the dataclass rules
            return dataclasses.replace(self, encrypted_dek=encrypted_dek, key_version=key_version)
        return _filled(
            type(self),
            self.provider,
            self.key_identifier,
            key_version,
            self.ciphertext,
            self.nonce,
            encrypted_dek,
            self.context,
            self.encryption_timestamp,
            self.algorithm,
            self.extra,
        )

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> KmsV1Envelope:
        """Build from a parsed JSON object whose ``encryption_version`` is ``kms_v1``.

        Raises:
            MalformedEnvelopeError: a field is missing, of the wrong type, or out of bounds.
        """
        algorithm = _json.text(obj, "algorithm", max_chars=64)
        if algorithm != ALGORITHM:
            raise MalformedEnvelopeError(f"unsupported algorithm {_json.short(algorithm)}")
        provider = _provider(_json.text(obj, "provider", max_chars=16))
        key_version = _key_version(obj.get("key_version"))
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
        timestamp = _timestamp(_json.text(obj, "encryption_timestamp", max_chars=64))
        encrypted_dek = _json.text(obj, "encrypted_dek", max_chars=_json.MAX_ENCRYPTED_DEK_CHARS)
        check_key_version(provider, key_version, encrypted_dek)
        return _filled(
            cls,
            provider,
            key_identifier,
            key_version,
            _json.b64(obj, "ciphertext"),
            _json.b64(obj, "nonce"),
            encrypted_dek,
            check_context(obj.get("context"), error=MalformedEnvelopeError),
            timestamp,
            algorithm,
            _extra(obj),
        )


# What to_json's own text is for: an envelope of this class, a checked context, a provider
# named by the enum and an integer version (not a bool); anything else, the general encoder.
_MADE_HERE = (KmsV1Envelope, CheckedContext, ProviderName, int)

# For sealed() and sealed_batch(): the object without the frozen __init__ (frozen_slots).
(
    _set_provider,
    _set_key_identifier,
    _set_key_version,
    _set_ciphertext,
    _set_nonce,
    _set_encrypted_dek,
    _set_context,
    _set_encryption_timestamp,
    _set_algorithm,
    _set_extra,
) = slot_setters(
    KmsV1Envelope,
    "provider",
    "key_identifier",
    "key_version",
    "ciphertext",
    "nonce",
    "encrypted_dek",
    "context",
    "encryption_timestamp",
    "algorithm",
    "extra",
)


def _filled(  # noqa: PLR0917 - every field in order, once per value: keywords cost more here
    cls: type[KmsV1Envelope],
    provider: ProviderName,
    key_identifier: str,
    key_version: int,
    ciphertext: bytes,
    nonce: bytes,
    encrypted_dek: str,
    context: Mapping[str, str],
    encryption_timestamp: str,
    algorithm: str,
    extra: Mapping[str, Any],
) -> KmsV1Envelope:
    """What ``cls(...)`` makes of these fields, without the frozen ``__init__``'s one
    ``object.__setattr__`` call per field: every envelope sealed or read is made here."""
    if cls is not KmsV1Envelope:  # a subclass's own fields are its __init__'s to set
        return cls(
            provider=provider,
            key_identifier=key_identifier,
            key_version=key_version,
            ciphertext=ciphertext,
            nonce=nonce,
            encrypted_dek=encrypted_dek,
            context=context,
            encryption_timestamp=encryption_timestamp,
            algorithm=algorithm,
            extra=extra,
        )
    envelope = new_instance(cls)
    _set_provider(envelope, provider)
    _set_key_identifier(envelope, key_identifier)
    _set_key_version(envelope, key_version)
    _set_ciphertext(envelope, ciphertext)
    _set_nonce(envelope, nonce)
    _set_encrypted_dek(envelope, encrypted_dek)
    _set_context(envelope, context)
    _set_encryption_timestamp(envelope, encryption_timestamp)
    _set_algorithm(envelope, algorithm)
    _set_extra(envelope, extra)
    return envelope


def _extra(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The keys this version does not define (none, in what this package writes)."""
    if obj.keys() <= _KNOWN_KEYS:
        return {}
    return {key: value for key, value in obj.items() if key not in _KNOWN_KEYS}


def _key_version(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MalformedEnvelopeError("envelope field 'key_version' must be an integer >= 1")
    return value


def _timestamp(text: str) -> str:
    try:
        if not _RFC3339_UTC.fullmatch(text):
            raise ValueError(text)
        datetime.fromisoformat(text)
    except ValueError:
        raise MalformedEnvelopeError(
            "envelope field 'encryption_timestamp' is not an RFC 3339 time"
        ) from None
    return text


def _provider(name: str) -> ProviderName:
    provider = _PROVIDERS.get(name)
    if provider is None:
        raise MalformedEnvelopeError(f"unknown provider {_json.short(name)}")
    return provider
