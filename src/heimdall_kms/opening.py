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

from heimdall_kms import crypto
from heimdall_kms.config import EncryptionMode, Settings
from heimdall_kms.envelope import Envelope, KmsV1Envelope, LegacyEnvelope, check_context, parse
from heimdall_kms.errors import (
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KMSError,
    MalformedEnvelopeError,
    ModeViolationError,
)
from heimdall_kms.inputs import utf8_text
from heimdall_kms.overlap import in_order
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.base import batching_of

__all__ = ["EnvelopeInput", "Opened", "Opener"]

EnvelopeInput = Envelope | str | bytes | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Opened:
    """One decrypt outcome plus what its audit event needs to say."""

    outcome: str | HeimdallKMSError
    envelope: Envelope | None
    context: Mapping[str, str]


class Opener:
    """Opens envelopes for one configuration (settings and, outside legacy mode, a KMS)."""

    def __init__(self, settings: Settings, kms: KeyManagementService | None) -> None:
        self.settings = settings
        self.kms = kms

    def prepare(self, source: EnvelopeInput, stated: Mapping[str, str] | None) -> Opened:
        """Parse and check one envelope against the mode and the stated context."""
        claimed = check_context(stated) if stated is not None else {}
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
        return Opened("", envelope, claimed)

    def open_all(self, prepared: list[Opened]) -> list[Opened]:
        outcomes: list[str | HeimdallKMSError] = [p.outcome for p in prepared]
        pending = [i for i, p in enumerate(prepared) if not isinstance(p.outcome, HeimdallKMSError)]
        kms_items = [i for i in pending if isinstance(prepared[i].envelope, KmsV1Envelope)]
        for i, result in zip(
            kms_items, self._open_kms([prepared[i] for i in kms_items]), strict=True
        ):
            outcomes[i] = result
        for i in pending:
            envelope = prepared[i].envelope
            if isinstance(envelope, LegacyEnvelope):
                outcomes[i] = self._open_legacy(envelope)
        return [
            Opened(outcome, p.envelope, p.context)
            for outcome, p in zip(outcomes, prepared, strict=True)
        ]

    def _open_kms(self, items: list[Opened]) -> list[str | HeimdallKMSError]:
        if not items:
            return []
        kms = self.kms
        assert kms is not None
        envelopes = [item.envelope for item in items if isinstance(item.envelope, KmsV1Envelope)]
        ours = [self.owned(env) for env in envelopes]
        sent = [env for env, error in zip(envelopes, ours, strict=True) if error is None]
        opened = iter(self._unwrap_and_open(kms, sent))
        return [error if error is not None else next(opened) for error in ours]

    def _unwrap_and_open(
        self, kms: KeyManagementService, sent: list[KmsV1Envelope]
    ) -> list[str | HeimdallKMSError]:
        """Unwrap in batches, several in flight; open each batch while the next is unwrapped."""
        batching = batching_of(kms)
        size = max(1, batching.size)
        chunks = [sent[start : start + size] for start in range(0, len(sent), size)]
        jobs = (
            functools.partial(
                kms.unwrap_many, [e.encrypted_dek for e in chunk], [e.context for e in chunk]
            )
            for chunk in chunks
        )
        results: list[str | HeimdallKMSError] = []
        with contextlib.closing(in_order(jobs, batching.in_flight, discard=_wipe_all)) as answers:
            for chunk, deks in zip(chunks, answers, strict=False):
                try:
                    if len(deks) != len(chunk):
                        raise KMSError("the KMS returned a different number of unwrapped keys")
                    for envelope, dek in zip(chunk, deks, strict=True):
                        results.append(
                            dek if isinstance(dek, HeimdallKMSError) else _open(envelope, dek)
                        )
                finally:
                    _wipe_all(deks)
        return results

    def _open_legacy(self, envelope: LegacyEnvelope) -> str | HeimdallKMSError:
        key = self.settings.legacy_keys.get(envelope.key_id)
        if key is None:
            return KeyNotFoundError(
                f"legacy key id {envelope.key_id!r} is not configured "
                "(HMD_PII_MASTER_KEY with HMD_PII_KEY_ID, or HMD_PII_LEGACY_KEYS)"
            )
        try:
            return utf8_text(crypto.open_(key.reveal(), envelope.nonce, envelope.ciphertext, b""))
        except HeimdallKMSError as exc:
            return exc

    def owned(self, envelope: KmsV1Envelope) -> HeimdallKMSError | None:
        kms = self.kms
        assert kms is not None
        if envelope.provider == kms.name.value and envelope.key_identifier == kms.key_identifier:
            return None
        return KeyNotFoundError(
            f"envelope was sealed by {envelope.provider} key {envelope.key_identifier!r}; "
            f"this deployment uses {kms.name.value} key {kms.key_identifier!r}"
        )


def _open(envelope: KmsV1Envelope, dek: bytearray) -> str | HeimdallKMSError:
    try:
        return utf8_text(crypto.open_(dek, envelope.nonce, envelope.ciphertext, envelope.aad()))
    except HeimdallKMSError as exc:
        return exc


def _wipe_all(deks: list[bytearray | HeimdallKMSError]) -> None:
    for dek in deks:
        if isinstance(dek, bytearray):
            crypto.wipe(dek)
