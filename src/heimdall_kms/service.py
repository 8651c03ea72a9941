"""``Crypto``: envelope encryption through the KMS, the mode rules, and the audit of each value.

The modes (SPEC §2) are explicit rules here, never a fallback inside a ``try``:

* ``legacy`` reads and writes only the env-key format;
* ``hybrid`` reads both, writes ``kms_v1`` (or legacy, with the documented rollback switch
  ``HMD_HYBRID_WRITE_FORMAT=legacy``);
* ``kms`` reads and writes only ``kms_v1`` and refuses a legacy envelope.

Every value encrypted or decrypted gets one audit event, recorded before the result is handed
back (fail closed). Batches share KMS calls: ``encrypt_many`` and ``decrypt_many`` make one
provider call per batch, never one per value.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from heimdall_kms import primitives
from heimdall_kms.audit import AuditEvent, AuditSink, EventType
from heimdall_kms.audit.events import now_rfc3339
from heimdall_kms.config import EncryptionMode, Settings, WriteFormat
from heimdall_kms.crypto_events import envelopeless_events, opened_events, sealed_events
from heimdall_kms.envelope import (
    Envelope,
    KmsV1Envelope,
    LegacyEnvelope,
    check_context,
)
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    InvalidInputError,
    KMSError,
    ModeViolationError,
)
from heimdall_kms.inputs import (
    LEGACY_LABEL,
    MAX_PLAINTEXT_BYTES,
    checked_label,
    metric_labels,
    plaintext_bytes,
)
from heimdall_kms.metrics import Metrics, unexported_metrics
from heimdall_kms.opening import EnvelopeInput, Opened, Opener
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import HashKey, KeyedHashing
from heimdall_kms.scoping import current_scope
from heimdall_kms.sealing import seal_batches

__all__ = ["MAX_PLAINTEXT_BYTES", "Crypto", "EnvelopeInput"]


class Crypto:
    """The facade of SPEC §5. Build it with :func:`heimdall_kms.from_env`."""

    def __init__(
        self,
        settings: Settings,
        *,
        kms: KeyWrapper | None,
        audit: AuditSink,
        default_actor: str = "application",
        metrics: Metrics | None = None,
    ) -> None:
        if settings.mode is not EncryptionMode.LEGACY and kms is None:
            raise ConfigurationError(
                f"HMD_KMS_PROVIDER: a KMS provider is required in {settings.mode.value} mode"
            )
        self.settings = settings
        self.kms = kms
        self.audit = audit
        self._default_actor = default_actor
        # Exported only where the caller chose the registry (heimdall_kms.composition does).
        self.metrics = metrics if metrics is not None else unexported_metrics()
        self._opener = Opener(settings, kms)

    def __enter__(self) -> Crypto:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.kms is not None:
            self.kms.close()
        self.audit.close()

    # -- encryption ---------------------------------------------------------------------------

    def encrypt(
        self, plaintext: str, *, context: Mapping[str, str] | None = None, actor: str | None = None
    ) -> Envelope:
        """Seal one value bound to ``context`` (e.g. ``{"field": "ssn", "record": "r1"}``).

        Raises:
            InvalidInputError: plaintext or context unusable.
            KMSError: the KMS failed. AuditWriteError: the event could not be recorded.
        """
        return self.encrypt_many([(plaintext, context or {})], actor=actor)[0]

    def encrypt_many(
        self,
        items: Iterable[tuple[str, Mapping[str, str]]],
        *,
        actor: str | None = None,
        limit: int = MAX_PLAINTEXT_BYTES,
    ) -> list[Envelope]:
        """Seal many values with one batched KMS call; see :meth:`encrypt`.

        ``limit`` bounds each plaintext; jobs re-encrypting stored values pass
        ``MAX_STORED_PLAINTEXT_BYTES`` (whatever the engine stored must stay migratable).
        """
        who, reason, request_id = self._writing_as(actor)
        values = [(plaintext_bytes(text, limit), check_context(ctx)) for text, ctx in items]
        contexts = [ctx for _, ctx in values]
        provider = self._write_label
        encoded: list[str] = []  # each context as the AAD encodes it, reused by the audit line
        try:
            with self.metrics.timed("encrypt", provider):
                if self._writes_legacy or self.kms is None:
                    sealed = self._seal_legacy(values)
                else:
                    sealed = seal_batches(self.kms, values, encoded)
        except HeimdallKMSError as exc:
            self.metrics.errors_total.labels("encrypt", provider, exc.error_type).inc(len(values))
            self.audit.emit(
                envelopeless_events(
                    EventType.ENCRYPT,
                    contexts,
                    actor=who,
                    request_id=request_id,
                    writer=self._writer,
                    error=exc,
                    reason=reason,
                )
            )
            raise
        # One call is recorded at one moment: one timestamp for all of its events.
        self.audit.emit(
            sealed_events(
                sealed,
                contexts,
                encoded or None,
                actor=who,
                request_id=request_id,
                at=now_rfc3339(),
                reason=reason,
            )
        )
        for (label, version), count in Counter(map(metric_labels, sealed)).items():
            self.metrics.encrypt_total.labels(label, version).inc(count)
        return sealed

    def _writing_as(self, actor: str | None) -> tuple[str, str | None, str]:
        """Actor, reason and request id of a call that writes (encrypt, hmac): the call's
        actor, else the scope's, else the default actor; the scope's reason and request id."""
        in_scope = current_scope()
        who = checked_label("actor", actor or in_scope.actor or self._default_actor)
        return who, in_scope.reason, in_scope.request_id or str(uuid.uuid4())

    @property
    def _writer(self) -> tuple[str | None, str | None]:
        """The key and provider an event names when it has no envelope to take them from."""
        if self.kms is not None and not self._writes_legacy:
            return self.kms.key_identifier, self.kms.name.value
        return None, None

    @property
    def _write_label(self) -> str:
        if self._writes_legacy or self.kms is None:
            return LEGACY_LABEL
        return self.kms.name.value

    @property
    def _writes_legacy(self) -> bool:
        mode = self.settings.mode
        return mode is EncryptionMode.LEGACY or (
            mode is EncryptionMode.HYBRID and self.settings.hybrid_write is WriteFormat.LEGACY
        )

    def _seal_legacy(self, values: list[tuple[bytes, dict[str, str]]]) -> list[Envelope]:
        # The legacy format binds no context; the audit event still records it.
        key_id = self.settings.legacy_key_id
        key = self.settings.legacy_keys[key_id].reveal()
        envelopes: list[Envelope] = []
        for plaintext, _ in values:
            ciphertext, nonce = primitives.seal(key, plaintext, b"")
            envelopes.append(LegacyEnvelope(ciphertext=ciphertext, nonce=nonce, key_id=key_id))
        return envelopes

    # -- decryption ---------------------------------------------------------------------------

    def decrypt(
        self,
        envelope: EnvelopeInput,
        *,
        actor: str | None = None,
        reason: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> str:
        """Open one envelope. ``context``, if given, states where the value was read from:
        every key it names must equal the envelope's own context.

        Raises:
            InvalidInputError: actor or reason missing (neither passed nor set by
            :func:`heimdall_kms.scope`). MalformedEnvelopeError: not an envelope.
            IntegrityError: tampered, or sealed for another context. ModeViolationError: the
            format is not readable in this mode. KMSError, AuditWriteError.
        """
        return self.decrypt_many([envelope], actor=actor, reason=reason, contexts=[context])[0]

    def decrypt_many(
        self,
        envelopes: Sequence[EnvelopeInput],
        *,
        actor: str | None = None,
        reason: str | None = None,
        contexts: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[str]:
        """Open many envelopes with one batched KMS call; raises the first item's error."""
        results = self.decrypt_outcomes(envelopes, actor=actor, reason=reason, contexts=contexts)
        for result in results:
            if isinstance(result, HeimdallKMSError):
                raise result
        return [result for result in results if isinstance(result, str)]

    def decrypt_outcomes(
        self,
        envelopes: Sequence[EnvelopeInput],
        *,
        actor: str | None = None,
        reason: str | None = None,
        contexts: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[str | HeimdallKMSError]:
        """Like :meth:`decrypt_many`, but each item's error is returned in its place.

        Raises:
            KMSError: a failure of the whole KMS call. AuditWriteError.
        """
        in_scope = current_scope()
        who = checked_label("actor", actor if actor is not None else in_scope.actor)
        why = checked_label("reason", reason if reason is not None else in_scope.reason)
        stated = list(contexts) if contexts is not None else [None] * len(envelopes)
        if len(stated) != len(envelopes):
            raise InvalidInputError("contexts must have one entry per envelope")
        request_id = in_scope.request_id or str(uuid.uuid4())
        prepared = [
            self._opener.prepare(source, ctx) for source, ctx in zip(envelopes, stated, strict=True)
        ]
        provider = self.kms.name.value if self.kms is not None else LEGACY_LABEL
        try:
            with self.metrics.timed("decrypt", provider):
                opened = self._opener.open_all(prepared)
        except HeimdallKMSError as exc:
            # The whole call failed (KMS unreachable, refused, ...): every item failed with it.
            opened = [Opened(exc, p.envelope, p.context) for p in prepared]
            self._record_decrypts(opened, who, why, request_id, provider)
            raise
        self._record_decrypts(opened, who, why, request_id, provider)
        return [item.outcome for item in opened]

    def _record_decrypts(
        self, opened: list[Opened], actor: str, reason: str, request_id: str, provider: str
    ) -> None:
        """Audit every outcome (fail closed: raises AuditWriteError) and count it."""
        self.audit.emit(
            opened_events(
                opened,
                actor=actor,
                request_id=request_id,
                reason=reason,
                at=now_rfc3339(),
                writer=self._writer,
            )
        )
        done: Counter[tuple[str, str]] = Counter()
        failed: Counter[str] = Counter()
        for item in opened:
            if isinstance(item.outcome, HeimdallKMSError):
                failed[item.outcome.error_type] += 1
            elif item.envelope is not None:
                done[metric_labels(item.envelope)] += 1
        for (label, version), count in done.items():
            self.metrics.decrypt_total.labels(label, version).inc(count)
        for error_type, count in failed.items():
            self.metrics.errors_total.labels("decrypt", provider, error_type).inc(count)

    # -- keyed hashing -------------------------------------------------------------------------

    def hmac_many(
        self,
        values: Sequence[str],
        *,
        actor: str | None = None,
        contexts: Sequence[Mapping[str, str]] | None = None,
        version: int | None = None,
    ) -> list[str]:
        """Keyed hashes (``hmac:<provider form>``) whose key stays in the KMS, one batched call.

        Made with the hashing key's own pinned version (``HMD_HMAC_KEY_ID`` at
        ``HMD_HMAC_KEY_VERSION``, or ``version``), never the encryption key: equal values give
        equal tags across every rotation and retirement of the encryption key, so the tags can
        be searched and joined; unlike ``sha256:``, they cannot be reversed by hashing every
        candidate.

        Raises:
            ConfigurationError: the provider has no keyed hashing. KMSError, AuditWriteError.
        """
        kms = self.kms
        key_id = self.settings.hmac_key_id
        if kms is None or not isinstance(kms, KeyedHashing) or key_id is None:
            name = kms.name.value if kms is not None else "none (legacy mode)"
            raise ConfigurationError(f"HMD_KMS_PROVIDER={name} has no keyed hashing (hmac)")
        key = HashKey(key_id, version or self.settings.hmac_key_version)
        who, reason, request_id = self._writing_as(actor)
        data = [plaintext_bytes(value) for value in values]
        stated = [check_context(c) for c in contexts] if contexts else [{}] * len(data)
        writer = (key.name, kms.name.value)

        def events(error: HeimdallKMSError | None = None) -> list[AuditEvent]:
            return envelopeless_events(
                EventType.HMAC,
                stated,
                actor=who,
                request_id=request_id,
                writer=writer,
                error=error,
                reason=reason,
            )

        try:
            with self.metrics.timed("hmac", kms.name.value):
                tags = kms.hmac_many(data, key)
        except HeimdallKMSError as exc:
            self.metrics.errors_total.labels("hmac", kms.name.value, exc.error_type).inc(len(data))
            self.audit.emit(events(exc))
            raise
        self.audit.emit(events())
        return ["hmac:" + tag for tag in tags]

    def hmac_lookup(
        self, values: Sequence[str], *, actor: str | None = None
    ) -> list[tuple[str, ...]]:
        """Per value, every tag a stored copy of it may carry: search with ``IN (...)``.

        The current tag, and during a re-index of the hashing key
        (``HMD_HMAC_PREVIOUS_VERSION`` set) the previous version's tag too, so that lookups
        match old and new rows alike until the re-index is done.

        Raises:
            As :meth:`hmac_many`.
        """
        current = self.hmac_many(values, actor=actor)
        previous = self.settings.hmac_previous_version
        if previous is None:
            return [(tag,) for tag in current]
        older = self.hmac_many(values, actor=actor, version=previous)
        return list(zip(current, older, strict=True))

    # -- rotation -----------------------------------------------------------------------------

    def rewrap_outcomes(
        self, envelopes: Sequence[KmsV1Envelope]
    ) -> list[KmsV1Envelope | HeimdallKMSError]:
        """Re-wrap each envelope's DEK under the latest key version, in one batched KMS call.

        Only ``encrypted_dek`` and ``key_version`` change; ``ciphertext``, ``nonce`` and
        ``context`` stay byte-identical, and where the KMS re-wraps server-side (Vault
        ``rewrap``) no DEK or plaintext enters this process.

        Raises:
            ModeViolationError: legacy mode (no KMS). KMSError: the whole call failed.
        """
        kms = self.kms
        if kms is None:
            raise ModeViolationError("rewrap needs a KMS; HMD_ENCRYPTION_MODE=legacy has none")
        results: list[KmsV1Envelope | HeimdallKMSError] = []
        ours = [self._opener.owned(env) for env in envelopes]
        mine = [env for env, error in zip(envelopes, ours, strict=True) if error is None]
        with self.metrics.timed("rewrap", kms.name.value):
            rewrapped = kms.rewrap_many([e.encrypted_dek for e in mine], [e.context for e in mine])
        if len(rewrapped) != len(mine):
            raise KMSError("the KMS returned a different number of re-wrapped keys")
        answers = iter(rewrapped)
        for envelope, error in zip(envelopes, ours, strict=True):
            answer = error if error is not None else next(answers)
            if isinstance(answer, HeimdallKMSError):
                self.metrics.errors_total.labels("rewrap", kms.name.value, answer.error_type).inc()
                results.append(answer)
            else:
                results.append(
                    dataclasses.replace(
                        envelope, encrypted_dek=answer.ciphertext, key_version=answer.key_version
                    )
                )
        return results
