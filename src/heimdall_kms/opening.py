"""Opening envelopes: the mode rules, the stated-context check, and batched unwrapping.

The modes are explicit rules here, never a fallback inside a ``try``: a legacy envelope in
``kms`` mode and a ``kms_v1`` envelope in ``legacy`` mode are refused; a context the reader
states must match the envelope's, key by key, or the value is refused with the integrity error.
All ``kms_v1`` DEKs of a batch are unwrapped in one provider call and wiped after use.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from heimdall_kms import primitives
from heimdall_kms.config import EncryptionMode, Settings
from heimdall_kms.context_json import context_json_ascii
from heimdall_kms.envelope import (
    Envelope,
    KmsV1Envelope,
    LegacyEnvelope,
    aad_of_encoded,
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
from heimdall_kms.legacy_context import LegacyContext
from heimdall_kms.overlap import in_order
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import batching_of

__all__ = ["EnvelopeInput", "Opened", "Opener"]

_LEGACY = EncryptionMode.LEGACY

EnvelopeInput = Envelope | str | bytes | Mapping[str, Any]


@dataclass(slots=True)
class Opened:
    """One decrypt outcome plus what its audit event needs to say."""

    outcome: str | HeimdallKMSError
    envelope: Envelope | None
    context: Mapping[str, str]
    encoded_context: str | None = None  # the AAD's encoding of ``context``, when it was made
    # A legacy value read with a stated record context it cannot prove, where that is flagged
    # (HMD_LEGACY_CONTEXT=flag): its audit event says so.
    unverified_context: bool = False


class Opener:
    """Opens envelopes for one configuration (settings and, outside legacy mode, a KMS)."""

    def __init__(self, settings: Settings, kms: KeyWrapper | None) -> None:
        self.settings = settings
        self.kms = kms

    def prepare(self, source: EnvelopeInput, stated: Mapping[str, str] | None) -> Opened:
        """Parse and check one envelope against the mode and the stated context."""
        claimed = check_context(stated) if stated is not None else {}
        if type(source) is KmsV1Envelope and not claimed and self.settings.mode is not _LEGACY:
            return Opened("", source, source.context)  # the common case, decided at once
        try:
            envelope = source if isinstance(source, Envelope) else parse(source)
        except MalformedEnvelopeError as exc:
            return Opened(exc, None, claimed)
        mode = self.settings.mode
        if isinstance(envelope, LegacyEnvelope) and mode is EncryptionMode.KMS:
            error: HeimdallKMSError = ModeViolationError(
                "legacy env-key envelope refused: HMD_ENCRYPTION_MODE=kms reads kms_v1 only"
            )
            return Opened(error, envelope, claimed)
        if isinstance(envelope, KmsV1Envelope):
            if mode is EncryptionMode.LEGACY:
                error = ModeViolationError(
                    "kms_v1 envelope refused: HMD_ENCRYPTION_MODE=legacy reads env-key data only"
                )
                return Opened(error, envelope, envelope.context)
            if any(envelope.context.get(key) != value for key, value in claimed.items()):
                # Deliberately unspecific: which key differs is no business of the reader.
                error = IntegrityError("envelope failed authentication (wrong field/context)")
                return Opened(error, envelope, envelope.context)
            return Opened("", envelope, envelope.context)
        return self._legacy(envelope, claimed)

    def _legacy(self, envelope: Envelope, claimed: dict[str, str]) -> Opened:
        """A legacy value binds no context: on a migrated target a stated record context on
        one is refused or flagged (heimdall_kms.legacy_context)."""
        rule = self.settings.legacy_context
        if not rule.applies(claimed):
            return Opened("", envelope, claimed)
        if rule.action is LegacyContext.FLAG:
            return Opened("", envelope, claimed, unverified_context=True)
        error = ModeViolationError(
            "legacy envelope refused: it cannot prove the stated record context, and its "
            "target is declared migrated (HMD_MIGRATED_TARGETS)"
        )
        return Opened(error, envelope, claimed)

    def open_all(self, prepared: list[Opened]) -> list[Opened]:
        """Fill in each prepared item's outcome (in place; the same list is returned)."""
        pending = [p for p in prepared if not isinstance(p.outcome, HeimdallKMSError)]
        self._open_kms([p for p in pending if isinstance(p.envelope, KmsV1Envelope)])
        for item in pending:
            if isinstance(item.envelope, LegacyEnvelope):
                item.outcome = self._open_legacy(item.envelope)
        return prepared

    def _open_kms(self, items: list[Opened]) -> None:
        if not items:
            return
        kms = self.kms
        assert kms is not None
        ours = (kms.name.value, kms.key_identifier)
        sent = []
        for item in items:
            envelope = item.envelope
            assert isinstance(envelope, KmsV1Envelope)
            if (envelope.provider, envelope.key_identifier) == ours:
                sent.append(item)
            else:
                item.outcome = self._not_ours(envelope)
        self._unwrap_and_open(kms, sent)

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
                    for item, dek in zip(chunk, deks, strict=True):
                        if isinstance(dek, HeimdallKMSError):
                            item.outcome = dek
                        else:
                            _open(item, dek)
                finally:
                    _wipe_all(deks)

    def _open_legacy(self, envelope: LegacyEnvelope) -> str | HeimdallKMSError:
        key = self.settings.legacy_keys.get(envelope.key_id)
        if key is None:
            return KeyNotFoundError(
                f"legacy key id {envelope.key_id!r} is not configured "
                "(HMD_PII_MASTER_KEY with HMD_PII_KEY_ID, or HMD_PII_LEGACY_KEYS)"
            )
        try:
            return utf8_text(
                primitives.open_(key.reveal(), envelope.nonce, envelope.ciphertext, b"")
            )
        except HeimdallKMSError as exc:
            return exc

    def owned(self, envelope: KmsV1Envelope) -> HeimdallKMSError | None:
        kms = self.kms
        assert kms is not None
        if envelope.provider == kms.name.value and envelope.key_identifier == kms.key_identifier:
            return None
        return self._not_ours(envelope)

    def _not_ours(self, envelope: KmsV1Envelope) -> HeimdallKMSError:
        kms = self.kms
        assert kms is not None
        return KeyNotFoundError(
            f"envelope was sealed by {envelope.provider} key {envelope.key_identifier!r}; "
            f"this deployment uses {kms.name.value} key {kms.key_identifier!r}"
        )


def _unwrap(kms: KeyWrapper, chunk: list[Opened]) -> list[bytearray | HeimdallKMSError]:
    envelopes = [item.envelope for item in chunk if isinstance(item.envelope, KmsV1Envelope)]
    return kms.unwrap_many([e.encrypted_dek for e in envelopes], [e.context for e in envelopes])


def _open(item: Opened, dek: bytearray) -> None:
    envelope = item.envelope
    assert isinstance(envelope, KmsV1Envelope)
    item.encoded_context = encoded = context_json_ascii(envelope.context)
    try:
        aad = aad_of_encoded(encoded)
        item.outcome = utf8_text(primitives.open_(dek, envelope.nonce, envelope.ciphertext, aad))
    except HeimdallKMSError as exc:
        item.outcome = exc


def _wipe_all(deks: list[bytearray | HeimdallKMSError]) -> None:
    for dek in deks:
        if isinstance(dek, bytearray):
            primitives.wipe(dek)
