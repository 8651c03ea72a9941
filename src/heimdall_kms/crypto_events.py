"""The audit events of one encrypt, decrypt or hmac call: one event per value.

A call's events share actor, request id, timestamp and (mostly) key; they differ in the
field, the context and the outcome. Sealed values take a short path, since a bulk encrypt
makes one event per value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from heimdall_kms.audit import AuditEvent, EventType, Result
from heimdall_kms.audit.events import now_rfc3339
from heimdall_kms.envelope import KMS_V1, LEGACY, Envelope, KmsV1Envelope, LegacyEnvelope
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.opening import Opened

__all__ = ["envelopeless_events", "event_for", "opened_events", "sealed_events"]


def event_for(
    event_type: EventType,
    actor: str,
    request_id: str,
    envelope: Envelope | None,
    context: Mapping[str, str],
    *,
    at: str,
    writer: tuple[str | None, str | None] = (None, None),
    error: HeimdallKMSError | None = None,
    reason: str | None = None,
    encoded_context: str | None = None,
) -> AuditEvent:
    """The event for one value. ``writer`` is the ``(key_identifier, provider)`` named when
    there is no envelope to take them from (a failed encrypt)."""
    key_identifier, provider = writer
    key_version: int | None = None
    version: str | None = None
    if isinstance(envelope, KmsV1Envelope):
        key_identifier, key_version = envelope.key_identifier, envelope.key_version
        provider, version = envelope.provider, KMS_V1
    elif isinstance(envelope, LegacyEnvelope):
        key_identifier, provider, version = envelope.key_id, None, LEGACY
    return AuditEvent(
        timestamp=at,
        event_type=event_type,
        actor=actor,
        request_id=request_id,
        result=Result.FAILURE if error is not None else Result.SUCCESS,
        field_identifier=context.get("field"),
        key_identifier=key_identifier,
        key_version=key_version,
        provider=provider,
        encryption_version=version,
        reason=reason,
        error_type=error.error_type if error is not None else None,
        context=dict(context) if context else None,
        encoded_context=encoded_context if context else None,
    )


def envelopeless_events(
    event_type: EventType,
    contexts: Sequence[Mapping[str, str]],
    *,
    actor: str,
    request_id: str,
    writer: tuple[str | None, str | None],
    error: HeimdallKMSError | None = None,
    reason: str | None = None,
) -> list[AuditEvent]:
    """The events of values that have no envelope: a failed encrypt, keyed hashes."""
    at = now_rfc3339()
    return [
        event_for(
            event_type,
            actor,
            request_id,
            None,
            ctx,
            at=at,
            writer=writer,
            error=error,
            reason=reason,
        )
        for ctx in contexts
    ]


def sealed_events(
    envelopes: Sequence[Envelope],
    contexts: Sequence[dict[str, str]],
    encoded: Sequence[str] | None,
    *,
    actor: str,
    request_id: str,
    at: str,
    reason: str | None = None,
) -> list[AuditEvent]:
    """The success events of one encrypt call, in order.

    ``encoded`` are the contexts' AAD encodings, when the call made them; ``reason`` is the
    scope's, when one is in force.
    """
    events = []
    codes = encoded if encoded is not None else [None] * len(envelopes)
    for envelope, context, code in zip(envelopes, contexts, codes, strict=True):
        if type(envelope) is not KmsV1Envelope:
            events.append(
                event_for(
                    EventType.ENCRYPT, actor, request_id, envelope, context, at=at, reason=reason
                )
            )
            continue
        events.append(
            _kms_success(
                EventType.ENCRYPT,
                envelope,
                dict(context),  # the envelope handed back holds the call's own copy
                code,
                actor=actor,
                request_id=request_id,
                at=at,
                reason=reason,
            )
        )
    return events


def opened_events(
    opened: Sequence[Opened],
    *,
    actor: str,
    request_id: str,
    reason: str,
    at: str,
    writer: tuple[str | None, str | None],
) -> list[AuditEvent]:
    """The events of one decrypt call, in order, failures included."""
    events = []
    for item in opened:
        if item.unverified_context:
            events.append(
                _unverified(item, actor=actor, request_id=request_id, reason=reason, at=at)
            )
            continue
        envelope, outcome, context = item.envelope, item.outcome, item.context
        if type(envelope) is KmsV1Envelope and type(outcome) is str:
            # The envelope's context may be the caller's own mapping: the event keeps a copy.
            events.append(
                _kms_success(
                    EventType.DECRYPT,
                    envelope,
                    dict(context),
                    item.encoded_context,
                    actor=actor,
                    request_id=request_id,
                    at=at,
                    reason=reason,
                )
            )
            continue
        events.append(
            event_for(
                EventType.DECRYPT,
                actor,
                request_id,
                envelope,
                context,
                at=at,
                writer=writer,
                reason=reason,
                error=outcome if isinstance(outcome, HeimdallKMSError) else None,
                encoded_context=item.encoded_context,
            )
        )
    return events


def _unverified(item: Opened, actor: str, request_id: str, reason: str, at: str) -> AuditEvent:
    """A legacy value read under a stated record context it cannot prove (flag mode)."""
    event = event_for(
        EventType.DECRYPT,
        actor,
        request_id,
        item.envelope,
        item.context,
        at=at,
        reason=reason,
        error=item.outcome if isinstance(item.outcome, HeimdallKMSError) else None,
    )
    event.details = {"legacy_context": "unverified"}
    return event


def _kms_success(
    event_type: EventType,
    envelope: KmsV1Envelope,
    context: dict[str, str],
    encoded_context: str | None,
    *,
    actor: str,
    request_id: str,
    at: str,
    reason: str | None = None,
) -> AuditEvent:
    """What :func:`event_for` gives for a ``kms_v1`` value that succeeded, made directly."""
    return AuditEvent(
        timestamp=at,
        event_type=event_type,
        actor=actor,
        request_id=request_id,
        result=Result.SUCCESS,
        field_identifier=context.get("field"),
        key_identifier=envelope.key_identifier,
        key_version=envelope.key_version,
        provider=envelope.provider,
        encryption_version=KMS_V1,
        reason=reason,
        context=context or None,
        encoded_context=encoded_context if context else None,
    )
