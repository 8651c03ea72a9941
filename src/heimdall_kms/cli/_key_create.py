"""The bootstrap commands' audited ``key.create``: one for each master key they create."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from secrets import token_hex
from typing import Any

from heimdall_kms.audit import AuditEvent, EventType, Result, open_sink
from heimdall_kms.audit.attempt import audited

__all__ = ["audited_key_create"]


def audited_key_create(
    apply: Callable[[], object],
    *,
    log: str,
    actor: str,
    key: str,
    provider: str,
    details: Mapping[str, Any],
) -> None:
    """Run ``apply``, which creates the master key, as an audited ``key.create``: its intent
    is written before anything is applied, so with an unwritable log nothing is."""
    event = AuditEvent(
        EventType.KEY_CREATE,
        actor,
        f"bootstrap-{token_hex(6)}",
        Result.SUCCESS,
        key_identifier=key,
        provider=provider,
        details=dict(details),
    )
    sink = open_sink(log)
    try:
        with audited(sink, event) as attempt:
            apply()
            attempt.key_version = 1
    finally:
        sink.close()
