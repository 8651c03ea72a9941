"""``Crypto``: envelope encryption through the KMS, and the audit of each value.

Each operation is one straight path: check the inputs and who is asking (an
:class:`~heimdall_kms.audit_scope.AuditScope`), do the work in batched KMS calls (sealing,
opening), record one audit event per value before the result is handed back (fail closed),
count it. What each mode reads and writes is :mod:`heimdall_kms.modes`' to say. Batches share
KMS calls: ``encrypt_many`` and ``decrypt_many`` make one provider call per provider batch,
never one per value.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import cast

from prometheus_client import Counter as MetricCounter

from heimdall_kms import modes, primitives
from heimdall_kms.audit import AuditEvent, AuditSink, EventType
from heimdall_kms.audit_scope import AuditScope
from heimdall_kms.config import Settings
from heimdall_kms.context_json import CheckedContext
from heimdall_kms.envelope import (
    Envelope,
    EnvelopeFormat,
    KeyRef,
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
from heimdall_kms.kinds import ProviderName
from heimdall_kms.metrics import Metrics, unexported_metrics
from heimdall_kms.opening import EnvelopeInput, Opener
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import HashKey, KeyedHashing, WrappedKey
from heimdall_kms.scoping import current_scope
from heimdall_kms.sealing import seal_batches

__all__ = ["MAX_PLAINTEXT_BYTES", "Crypto", "EnvelopeInput"]

FailureEvents = Callable[[HeimdallKMSError], list[AuditEvent]]


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
        if modes.uses_kms(settings.mode) and kms is None:
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
        scope = self._writer_scope(actor, self._write_key)
        values = [(plaintext_bytes(text, limit), check_context(ctx)) for text, ctx in items]
        contexts = [ctx for _, ctx in values]

        def failed(error: HeimdallKMSError) -> list[AuditEvent]:
            return scope.without_envelopes(EventType.ENCRYPT, contexts, error)

        with self._kms_call("encrypt", self._write_label, len(values), failed):
            sealed = self._seal(values)
        done = scope.stamped()
        self.audit.emit(done.events(EventType.ENCRYPT, sealed, contexts))
        self._count(self.metrics.encrypt_total, sealed)
        return sealed

    def _seal(self, values: list[tuple[bytes, CheckedContext]]) -> list[Envelope]:
        if self._writes is EnvelopeFormat.KMS_V1 and self.kms is not None:
            return seal_batches(self.kms, values)
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
            if not isinstance(result, str):
                raise result
        return cast(list[str], results)  # every outcome is text: checked above

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
        scope = self._reader_scope(actor, reason)
        stated = list(contexts) if contexts is not None else [None] * len(envelopes)
        if len(stated) != len(envelopes):
            raise InvalidInputError("contexts must have one entry per envelope")
        prepared = [self._opener.prepare(e, c) for e, c in zip(envelopes, stated, strict=True)]

        def failed(error: HeimdallKMSError) -> list[AuditEvent]:
            # The whole call failed (KMS unreachable, refused, ...): every item failed with it.
            at_failure = scope.stamped()
            return [
                at_failure.event(EventType.DECRYPT, p.envelope, p.context, error) for p in prepared
            ]

        with self._kms_call("decrypt", self._read_label, len(prepared), failed):
            opened = self._opener.open_all(prepared)
        # Each item's outcome is read once (this runs once per value): text, or an error.
        outcomes = [o.result() for o in opened]
        errors = [None if isinstance(r, str) else r for r in outcomes]
        answered = scope.stamped()
        self.audit.emit(
            answered.events(
                EventType.DECRYPT,
                [o.envelope for o in opened],
                [o.context for o in opened],
                errors,
                [o.details for o in opened],
            )
        )
        done = [
            o.envelope
            for o, e in zip(opened, errors, strict=True)
            if e is None and o.envelope is not None
        ]
        self._count(self.metrics.decrypt_total, done)
        self._count_errors("decrypt", self._read_label, outcomes)
        return outcomes

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
        provider, hashing, key = self._hashing(version)
        scope = self._writer_scope(actor, KeyRef(provider, key.name))
        data = [plaintext_bytes(value) for value in values]
        stated: list[Mapping[str, str]] = (
            [check_context(c) for c in contexts] if contexts else [{}] * len(data)
        )

        def failed(error: HeimdallKMSError) -> list[AuditEvent]:
            return scope.without_envelopes(EventType.HMAC, stated, error)

        with self._kms_call("hmac", provider.value, len(data), failed):
            tags = hashing.hmac_many(data, key)
        self.audit.emit(scope.without_envelopes(EventType.HMAC, stated))
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

    def _hashing(self, version: int | None) -> tuple[ProviderName, KeyedHashing, HashKey]:
        """The provider, its keyed hashing and the hashing key at ``version`` (else the pinned
        one).

        Raises:
            ConfigurationError: the provider has no keyed hashing, or no hashing key is set.
        """
        kms, key_id = self.kms, self.settings.hmac_key_id
        if kms is None or not isinstance(kms, KeyedHashing) or key_id is None:
            name = kms.name.value if kms is not None else "none (legacy mode)"
            raise ConfigurationError(f"HMD_KMS_PROVIDER={name} has no keyed hashing (hmac)")
        return kms.name, kms, HashKey(key_id, version or self.settings.hmac_key_version)

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
        # Opener.owned's check written out (this runs once per value); its refusal otherwise.
        key = self._opener.key
        assert key is not None  # there is a KMS
        provider, identifier = key.provider, key.identifier
        refusals = [
            None
            if envelope.key_identifier == identifier and envelope.provider == provider
            else self._opener.owned(envelope)
            for envelope in envelopes
        ]
        mine = [e for e, refusal in zip(envelopes, refusals, strict=True) if refusal is None]
        with self.metrics.timed("rewrap", kms.name.value):
            answers = kms.rewrap_many([e.encrypted_dek for e in mine], [e.context for e in mine])
        if len(answers) != len(mine):
            raise KMSError("the KMS returned a different number of re-wrapped keys")
        rewrapped = iter(answers)
        results = [
            refusal if refusal is not None else _rewrapped(envelope, next(rewrapped))
            for envelope, refusal in zip(envelopes, refusals, strict=True)
        ]
        self._count_errors("rewrap", kms.name.value, results)
        return results

    # -- the shared steps -----------------------------------------------------------------------

    def _writer_scope(self, actor: str | None, fallback: KeyRef | None) -> AuditScope:
        """A call that writes (encrypt, hmac): the call's actor, else the scope's, else the
        default actor; the scope's reason and request id."""
        in_scope = current_scope()
        who = checked_label("actor", actor or in_scope.actor or self._default_actor)
        return AuditScope(who, in_scope.request_id or str(uuid.uuid4()), in_scope.reason, fallback)

    def _reader_scope(self, actor: str | None, reason: str | None) -> AuditScope:
        """A call that reads: actor and reason are required, from the call or the scope."""
        in_scope = current_scope()
        who = checked_label("actor", actor if actor is not None else in_scope.actor)
        why = checked_label("reason", reason if reason is not None else in_scope.reason)
        return AuditScope(who, in_scope.request_id or str(uuid.uuid4()), why, self._write_key)

    @contextmanager
    def _kms_call(
        self, operation: str, provider: str, count: int, failed: FailureEvents
    ) -> Iterator[None]:
        """Time the work of one call; if it fails as a whole, count and record each of its
        ``count`` values as failed (fail closed: AuditWriteError), then re-raise."""
        try:
            with self.metrics.timed(operation, provider):
                yield
        except HeimdallKMSError as exc:
            self.metrics.errors_total.labels(operation, provider, exc.error_type).inc(count)
            self.audit.emit(failed(exc))
            raise

    def _count(self, counter: MetricCounter, envelopes: Sequence[Envelope]) -> None:
        # The labels metric_labels gives, a kms_v1 version's text made once per call rather
        # than once per value.
        versions = Counter(
            [(e.provider, e.key_version) for e in envelopes if isinstance(e, KmsV1Envelope)]
        )
        labels = Counter([metric_labels(e) for e in envelopes if not isinstance(e, KmsV1Envelope)])
        for (provider, key_version), count in versions.items():
            labels[provider, str(key_version)] += count
        for (label, version), count in labels.items():
            counter.labels(label, version).inc(count)

    def _count_errors(self, operation: str, provider: str, outcomes: Iterable[object]) -> None:
        failed = Counter(o.error_type for o in outcomes if isinstance(o, HeimdallKMSError))
        for error_type, count in failed.items():
            self.metrics.errors_total.labels(operation, provider, error_type).inc(count)

    @property
    def _writes(self) -> EnvelopeFormat:
        return modes.writes(self.settings.mode, self.settings.hybrid_write)

    @property
    def _write_key(self) -> KeyRef | None:
        """The key new values are sealed under: named by events that have no envelope."""
        return self._opener.key if self._writes is EnvelopeFormat.KMS_V1 else None

    @property
    def _write_label(self) -> str:
        key = self._write_key
        return key.provider.value if key is not None else LEGACY_LABEL

    @property
    def _read_label(self) -> str:
        return self.kms.name.value if self.kms is not None else LEGACY_LABEL


def _rewrapped(
    envelope: KmsV1Envelope, answer: WrappedKey | HeimdallKMSError
) -> KmsV1Envelope | HeimdallKMSError:
    if isinstance(answer, HeimdallKMSError):
        return answer
    return envelope.rewrapped(answer.ciphertext, answer.key_version)
