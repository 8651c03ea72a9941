"""Audit events as chained JSON lines, with what consecutive events share encoded once.

A batch of ``encrypt_many`` or ``decrypt_many`` writes one event per value, and those events
differ only in a few fields (the context, the field, the outcome); actor, request id,
timestamp, key and reason are the same for the whole batch. So each line is put together from
pre-encoded pieces: the shared members are encoded once per distinct combination, the
per-value members once per value, and only ``seq``, ``prev_hash`` and ``hash`` are filled in
per line. The bytes are exactly those of :func:`heimdall_kms.audit.chain.seal_line` applied to
``event.to_dict()`` (sorted keys, compact, UTF-8): ``tests/unit/test_audit_lines.py`` checks
that against an independent writing of the definition, for generated events.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from heimdall_kms.audit.chain import encode_json, seal_line
from heimdall_kms.audit.events import AuditEvent
from heimdall_kms.context_json import line_json

__all__ = ["chain_events"]


def chain_events(events: Sequence[AuditEvent], seq: int, prev: str) -> tuple[str, int, str]:
    """The lines (joined, each with its newline) continuing the chain at ``seq``/``prev``.

    Returns:
        ``(lines, last_seq, last_hash)``.

    Raises:
        UnicodeEncodeError: ``prev`` is not ASCII (a damaged tail is not continued) or an
            event holds text that is not valid Unicode.
    """
    prev.encode("ascii")  # a damaged tail (not the hex of a hash) is not continued
    shared: dict[tuple[object, ...], _Shared] = {}
    fields: dict[str, str] = {}
    lines: list[str] = []
    sha256 = hashlib.sha256
    last: AuditEvent | None = None  # the last event whose shared members are ``parts``
    parts: _Shared | None = None
    for event in events:
        seq += 1
        if event.details is not None:
            # Lifecycle events carry free-form details and come one at a time.
            line, prev = seal_line(event.to_dict(), seq, prev)
            lines.append(line)
            continue
        # A call's events share the very same objects (one AuditScope built them): the
        # identity checks answer for most lines what the key's hash and lookup would.
        if parts is None or last is None or not _shares_members(event, last):
            key = (
                event.actor,
                event.event_type,
                event.encryption_version,
                event.error_type,
                event.key_identifier,
                event.key_version,
                event.provider,
                event.reason,
                event.request_id,
                event.result,
                event.source_ip,
                event.timestamp,
                event.trace_id,
                event.correlation_id,
            )
            parts = shared.get(key)
            if parts is None:
                parts = shared[key] = _Shared.of(event)
            last = event
        field = event.field_identifier
        member = ""
        if field is not None:
            found = fields.get(field)
            if found is None:
                found = fields[field] = ',"field_identifier":' + encode_json(field)
            member = found
        context = event.context
        head = (
            f'{parts.actor},"context":{line_json(context)}{parts.middle}{member}'
            if context is not None
            else f"{parts.actor}{parts.middle}{member}"
        )
        tail = f'{parts.keys}"prev_hash":"{prev}",{parts.request}"seq":{seq}{parts.end}'
        # prev is ASCII: checked above, and a hexdigest after that (seal_line's bytes).
        prev = sha256(f"{prev}\n{head},{tail}".encode()).hexdigest()
        lines.append(f'{head},"hash":"{prev}",{tail}\n')
    return "".join(lines), seq, prev


def _shares_members(event: AuditEvent, last: AuditEvent) -> bool:
    """Whether ``event``'s shared members are the very objects of ``last``'s (then its line
    takes ``last``'s pre-encoded ones). Identity, not equality: the cheap test that one
    :class:`~heimdall_kms.audit_scope.AuditScope` built both; equal but distinct values take
    the lookup by key instead, to the same bytes."""
    return (
        event.timestamp is last.timestamp
        and event.request_id is last.request_id
        and event.actor is last.actor
        and event.event_type is last.event_type
        and event.result is last.result
        and event.key_identifier is last.key_identifier
        and event.key_version is last.key_version
        and event.provider is last.provider
        and event.encryption_version is last.encryption_version
        and event.reason is last.reason
        and event.error_type is last.error_type
        and event.source_ip is last.source_ip
        and event.trace_id is last.trace_id
        and event.correlation_id is last.correlation_id
    )


class _Shared(NamedTuple):
    """The pre-encoded members of a line around its per-value ones, in sorted key order.

    A line without ``hash`` reads ``actor [context] middle [field_identifier] , keys
    prev_hash request seq end``; ``hash`` sorts between ``field_identifier`` and
    ``key_identifier``.
    """

    actor: str  # '{"actor":...'
    middle: str  # ',"correlation_id":...,"encryption_version":...,"event_type":...'
    keys: str  # '"key_identifier":...,"key_version":...,' (each optional)
    request: str  # '"provider":...,"reason":...,"request_id":...,"result":...,'
    end: str  # ',"source_ip":...,"timestamp":...,"trace_id":...}'

    @classmethod
    def of(cls, event: AuditEvent) -> _Shared:
        return cls(
            actor='{"actor":' + encode_json(event.actor),
            middle=_members(
                ("correlation_id", event.correlation_id),
                ("encryption_version", event.encryption_version),
                ("error_type", event.error_type),
                ("event_type", event.event_type.value),
                lead=",",
            ),
            keys=_members(
                ("key_identifier", event.key_identifier),
                ("key_version", event.key_version),
                trail=",",
            ),
            request=_members(
                ("provider", event.provider),
                ("reason", event.reason),
                ("request_id", event.request_id),
                ("result", event.result.value),
                trail=",",
            ),
            end=_members(
                ("source_ip", event.source_ip),
                ("timestamp", event.timestamp),
                ("trace_id", event.trace_id),
                lead=",",
            )
            + "}",
        )


def _members(*pairs: tuple[str, object], lead: str = "", trail: str = "") -> str:
    """``"name":value`` for each pair whose value is not None, each with ``lead``/``trail``."""
    return "".join(
        f'{lead}"{name}":{encode_json(value)}{trail}' for name, value in pairs if value is not None
    )
