"""Opening envelopes: the mode's read rule, the stated-context check, and batched unwrapping.

A context the reader states must match the envelope's, key by key, or the value is refused
with the integrity error; what a mode reads is :func:`heimdall_kms.modes.read_refusal`'s to
say. All ``kms_v1`` DEKs of a batch are unwrapped in one provider call per provider batch and
wiped after use.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, cast

from heimdall_kms import modes, primitives
from heimdall_kms.config import Settings
from heimdall_kms.envelope import (
    Envelope,
    KeyRef,
    KmsV1Envelope,
    LegacyEnvelope,
    check_context,
    parse,
)
from heimdall_kms.errors import (
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KMSError,
    MalformedEnvelopeError,
    ModeViolationError,
)
from heimdall_kms.inputs import utf8_text
from heimdall_kms.kinds import EnvelopeFormat
from heimdall_kms.legacy_context import LegacyContext
from heimdall_kms.overlap import in_order
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import batching_of

__all__ = ["PENDING", "EnvelopeInput", "Opened", "Opener", "Pending"]

EnvelopeInput = Envelope | str | bytes | Mapping[str, Any]


class Pending(Enum):
    """The outcome of an item that was checked and waits for its batch to be opened."""

    PENDING = "pending"


PENDING = Pending.PENDING
_UNVERIFIED = {"legacy_context": "unverified"}


@dataclass(slots=True)
class Opened:
    """One decrypt outcome plus what its audit event needs to say."""

    outcome: str | HeimdallKMSError | Literal[Pending.PENDING]
    envelope: Envelope | None
    context: Mapping[str, str]
    # A legacy value read with a stated record context it cannot prove, where that is flagged
    # (HMD_LEGACY_CONTEXT=flag): its audit event says so in ``details``.
    details: Mapping[str, str] | None = None

    @property
    def error(self) -> HeimdallKMSError | None:
        return self.outcome if isinstance(self.outcome, HeimdallKMSError) else None

    def result(self) -> str | HeimdallKMSError:
        """The outcome, once :meth:`Opener.open_all` has opened the item."""
        outcome = self.outcome
        assert not isinstance(outcome, Pending), "an item is opened before its result is read"
        return outcome


class Opener:
    """Opens envelopes for one configuration (settings and, outside legacy mode, a KMS)."""

    def __init__(self, settings: Settings, kms: KeyWrapper | None) -> None:
        self.settings = settings
        self.kms = kms
        self.key = KeyRef(kms.name, kms.key_identifier) if kms is not None else None
        # The formats the mode reads (read_refusal's None), worked out once, not per value.
        self._readable = frozenset(
            found for found in EnvelopeFormat if modes.read_refusal(settings.mode, found) is None
        )

    def prepare(self, source: EnvelopeInput, stated: Mapping[str, str] | None) -> Opened:
        """Parse and check one envelope against the mode and the stated context."""
        claimed = check_context(stated) if stated is not None else {}
        try:
            envelope = source if isinstance(source, Envelope) else parse(source)
        except MalformedEnvelopeError as exc:
            return Opened(exc, None, claimed)
        version = envelope.encryption_version
        refusal: HeimdallKMSError | None = (
            None if version in self._readable else modes.read_refusal(self.settings.mode, version)
        )
        if isinstance(envelope, KmsV1Envelope):
            if refusal is None and claimed and _differs(envelope.context, claimed):
                # Deliberately unspecific: which key differs is no business of the reader.
                refusal = IntegrityError("envelope failed authentication (wrong field/context)")
            return Opened(refusal or PENDING, envelope, envelope.context)
        if refusal is not None:
            return Opened(refusal, envelope, claimed)
        return self._legacy(envelope, claimed)

    def _legacy(self, envelope: Envelope, claimed: Mapping[str, str]) -> Opened:
        """A legacy value binds no context: on a migrated target a stated record context on
        one is refused or flagged (heimdall_kms.legacy_context)."""
        rule = self.settings.legacy_context
        if not rule.applies(claimed):
            return Opened(PENDING, envelope, claimed)
        if rule.action is LegacyContext.FLAG:
            return Opened(PENDING, envelope, claimed, details=_UNVERIFIED)
        error = ModeViolationError(
            "legacy envelope refused: it cannot prove the stated record context, and its "
            "target is declared migrated (HMD_MIGRATED_TARGETS)"
        )
        return Opened(error, envelope, claimed)

    def open_all(self, prepared: list[Opened]) -> list[Opened]:
        """Fill in each pending item's outcome (in place; the same list is returned)."""
        kms_v1: list[Opened] = []
        legacy: list[tuple[Opened, LegacyEnvelope]] = []
        for item in prepared:
            if item.outcome is not PENDING:
                continue
            envelope = item.envelope  # a caller's own Envelope class is neither
            if isinstance(envelope, KmsV1Envelope):
                kms_v1.append(item)
            elif isinstance(envelope, LegacyEnvelope):
                legacy.append((item, envelope))
            elif isinstance(envelope, KmsV1Envelope):
                kms_v1.append(item)
            elif isinstance(envelope, LegacyEnvelope):
                legacy.append((item, envelope))
            else:
                item.outcome = MalformedEnvelopeError("not an envelope format this version reads")
        self._open_kms(kms_v1)
        self._open_legacy(legacy)
        return prepared

    def _open_kms(self, items: list[Opened]) -> None:
        if not items:
            return
        assert self.key is not None
        provider, identifier = self.key.provider, self.key.identifier
        sent = []
        for item in items:
            envelope = item.envelope
            assert isinstance(envelope, KmsV1Envelope)
            # owned(), written out: this runs once per value.
            if envelope.key_identifier == identifier and envelope.provider == provider:
                sent.append(item)
            else:
                item.outcome = self._not_owned(envelope)
        assert self.kms is not None
        self._unwrap_and_open(self.kms, sent)

    def _unwrap_and_open(self, kms: KeyWrapper, sent: list[Opened]) -> None:
        """Unwrap in batches, several in flight; open each batch while the next is unwrapped."""
        batching = batching_of(kms)
        size = max(1, batching.size)
        chunks = [sent[start : start + size] for start in range(0, len(sent), size)]
        jobs = (functools.partial(_unwrap, kms, chunk) for chunk in chunks)
        with contextlib.closing(in_order(jobs, batching.in_flight, discard=_wipe_all)) as answers:
            for chunk, deks in zip(chunks, answers, strict=False):
                try:
                    if len(deks) != len(chunk):
                        raise KMSError("the KMS returned a different number of unwrapped keys")
                    _open_chunk(chunk, deks)
                finally:
                    _wipe_all(deks)

    def _open_legacy(self, items: list[tuple[Opened, LegacyEnvelope]]) -> None:
        """Each legacy item's outcome; the values under one env key are opened by one
        primitives call (one key schedule for the batch, not one per value)."""
        by_key: dict[str, list[tuple[Opened, LegacyEnvelope]]] = {}
        for item in items:
            by_key.setdefault(item[1].key_id, []).append(item)
        for key_id, under in by_key.items():
            key = self.settings.legacy_keys.get(key_id)
            if key is None:
                for refused, _ in under:
                    refused.outcome = KeyNotFoundError(
                        f"legacy key id {key_id!r} is not configured "
                        "(HMD_PII_MASTER_KEY with HMD_PII_KEY_ID, or HMD_PII_LEGACY_KEYS)"
                    )
                continue
            opened = primitives.open_under(
                key.reveal(),
                [envelope.nonce for _, envelope in under],
                [envelope.ciphertext for _, envelope in under],
            )
            _set_texts([item for item, _ in under], opened)

    def owned(self, envelope: KmsV1Envelope) -> HeimdallKMSError | None:
        """None if this deployment's key wrapped ``envelope``'s DEK, else the error to report."""
        assert self.key is not None
        if self.key.sealed(envelope):
            return None
        return self._not_owned(envelope)

    def _not_owned(self, envelope: KmsV1Envelope) -> KeyNotFoundError:
        return KeyNotFoundError(
            f"envelope was sealed by {envelope.provider} key {envelope.key_identifier!r}; "
            f"this deployment uses {self.key}"
        )


def _differs(context: Mapping[str, str], claimed: Mapping[str, str]) -> bool:
    return any(context.get(key) != value for key, value in claimed.items())


def _unwrap(kms: KeyWrapper, chunk: list[Opened]) -> list[bytearray | HeimdallKMSError]:
    envelopes = [item.envelope for item in chunk if isinstance(item.envelope, KmsV1Envelope)]
    return kms.unwrap_many([e.encrypted_dek for e in envelopes], [e.context for e in envelopes])


def _open_chunk(chunk: list[Opened], deks: list[bytearray | HeimdallKMSError]) -> None:
    """Each item's outcome: its value as text, or the error its DEK or its opening gave. One
    batch is opened by one primitives call (this runs once per value)."""
    unwrapped: list[tuple[Opened, bytearray]] = []
    for item, dek in zip(chunk, deks, strict=True):
        if isinstance(dek, bytearray):
            unwrapped.append((item, dek))
        else:
            item.outcome = dek
    envelopes = [cast(KmsV1Envelope, item.envelope) for item, _ in unwrapped]
    opened = primitives.open_each(
        [dek for _, dek in unwrapped],
        [envelope.nonce for envelope in envelopes],
        [envelope.ciphertext for envelope in envelopes],
        [envelope.aad() for envelope in envelopes],
    )
    _set_texts([item for item, _ in unwrapped], opened)


def _set_texts(items: list[Opened], opened: list[bytes | IntegrityError]) -> None:
    """Each item's outcome: its plaintext as text, or the error opening or decoding gave."""
    for item, plaintext in zip(items, opened, strict=True):
        if isinstance(plaintext, IntegrityError):
            item.outcome = plaintext
            continue
        try:
            item.outcome = utf8_text(plaintext)
        except HeimdallKMSError as exc:
            item.outcome = exc


def _wipe_all(deks: list[bytearray | HeimdallKMSError]) -> None:
    primitives.wipe_all([dek for dek in deks if isinstance(dek, bytearray)])
