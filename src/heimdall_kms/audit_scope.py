"""The audit events of one facade call: one :class:`AuditScope` builds every one of them.

A call's events share who asked (actor), which call (request id), when, and why (reason), and
name the same key where they have no envelope to take it from (a failed encrypt, a keyed
hash); they differ in the value's envelope, context and outcome. The context an event holds
is the checked one the AAD was made from, so its audit line reuses that encoding
(:mod:`heimdall_kms.context_json`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from heimdall_kms.audit import AuditEvent, EventType, Result
from heimdall_kms.audit.events import now_rfc3339
from heimdall_kms.context_json import CheckedContext
from heimdall_kms.envelope import Envelope, KeyRef, KmsV1Envelope, LegacyEnvelope
from heimdall_kms.errors import HeimdallKMSError

__all__ = ["AuditScope"]


@dataclass(frozen=True, slots=True)
class AuditScope:
    """Who, which request, when and why, for every event of one call.

    ``fallback`` is the key an event names when it has no envelope: the key the call writes
    with (None where it writes legacy values, whose key the envelope alone names).
    """

    actor: str
    request_id: str
    reason: str | None = None
    fallback: KeyRef | None = None
    # When the call's outcome was known: stamped once, after the KMS answered (or failed), so
    # a slow or retried call is recorded when it happened and the chain stays in time order.
    at: str | None = None

    def stamped(self) -> AuditScope:
        """This scope at the present moment: every event it then builds carries that time."""
        return replace(self, at=now_rfc3339())

    def event(
        self,
        event_type: EventType,
        envelope: Envelope | None,
        context: Mapping[str, str],
        error: HeimdallKMSError | None = None,
        details: Mapping[str, str] | None = None,
    ) -> AuditEvent:
        """The event of one value: its envelope (if it has one), context and outcome."""
        fallback = self.fallback
        provider = fallback.provider if fallback is not None else None
        key_identifier = fallback.identifier if fallback is not None else None
        key_version = version = None
        if isinstance(envelope, KmsV1Envelope):
            provider, key_identifier = envelope.provider, envelope.key_identifier
            key_version, version = envelope.key_version, envelope.encryption_version
        elif isinstance(envelope, LegacyEnvelope):
            provider, key_identifier = None, envelope.key_id
            version = envelope.encryption_version
        # Positional, in AuditEvent's field order: one event per value, and matching fifteen
        # keywords costs more than the rest of this method (test_audit_scope compares).
        return AuditEvent(
            event_type,
            self.actor,
            self.request_id,
            Result.SUCCESS if error is None else Result.FAILURE,
            self.at if self.at is not None else now_rfc3339(),
            context.get("field"),  # field_identifier
            key_identifier,
            key_version,
            provider,
            version,  # encryption_version
            self.reason,
            None,  # source_ip
            error.error_type if error is not None else None,
            # A checked context is read-only, so the event shares it; any other mapping is
            # copied, so that its owner cannot change the event.
            (context if type(context) is CheckedContext else dict(context)) if context else None,
            details,
        )

    def events(
        self,
        event_type: EventType,
        envelopes: Sequence[Envelope | None],
        contexts: Sequence[Mapping[str, str]],
        errors: Sequence[HeimdallKMSError | None] | None = None,
        details: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[AuditEvent]:
        """``event(event_type, envelope, context, error, details)`` of each value of a call
        (``errors`` and ``details`` default to None for every value).

        One per value, in one loop: what the events share is read once, and the event of a
        ``kms_v1`` or legacy envelope is built here as :meth:`event` builds it
        (test_audit_scope compares).
        """
        count = len(envelopes)
        outcomes = [None] * count if errors is None else errors
        extras = [None] * count if details is None else details
        values = zip(envelopes, contexts, outcomes, extras, strict=True)
        at = self.at
        if at is None:  # each event stamped when it is made, as event() does
            return [self.event(event_type, *value) for value in values]
        actor, request_id, reason = self.actor, self.request_id, self.reason
        success, failure = Result.SUCCESS, Result.FAILURE
        events: list[AuditEvent] = []
        for envelope, context, error, detail in values:
            provider: str | None
            key_version: int | None
            if isinstance(envelope, KmsV1Envelope):
                provider, key_identifier = envelope.provider, envelope.key_identifier
                key_version = envelope.key_version
            elif isinstance(envelope, LegacyEnvelope):
                provider, key_identifier, key_version = None, envelope.key_id, None
            else:
                events.append(self.event(event_type, envelope, context, error, detail))
                continue
            events.append(
                AuditEvent(
                    event_type,
                    actor,
                    request_id,
                    success if error is None else failure,
                    at,
                    context.get("field"),
                    key_identifier,
                    key_version,
                    provider,
                    envelope.encryption_version,
                    reason,
                    None,
                    error.error_type if error is not None else None,
                    (context if type(context) is CheckedContext else dict(context))
                    if context
                    else None,
                    detail,
                )
            )
        return events

    def without_envelopes(
        self,
        event_type: EventType,
        contexts: Sequence[Mapping[str, str]],
        error: HeimdallKMSError | None = None,
    ) -> list[AuditEvent]:
        """The events of values that have no envelope: a failed encrypt, keyed hashes."""
        scope = self if self.at is not None else self.stamped()
        return [scope.event(event_type, None, context, error) for context in contexts]
