"""Audit events (SPEC §8): who did what to which field, with which key, and how it ended.

An event never carries plaintext, key material, or a hash of a value. ``context`` is the
non-secret encryption context (table, field, record id) the value is bound to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from heimdall_kms.kinds import TextEnum

__all__ = ["AuditEvent", "EventType", "Result"]


class EventType(TextEnum):
    ENCRYPT = "crypto.encrypt"
    DECRYPT = "crypto.decrypt"
    HMAC = "crypto.hmac"
    KEY_CREATE = "key.create"
    KEY_DELETE = "key.delete"  # a throwaway key (demo, drills), never a configured one
    KEY_ROTATE = "key.rotate"
    KEY_RETIRE = "key.retire"
    REENCRYPT_BATCH = "reencrypt.batch"
    JOB_RUN = "job.run"
    REENCRYPT_ROLLBACK = "reencrypt.rollback"
    JOURNAL_PURGE = "journal.purge"
    ACCESS_DENIED = "access.denied"
    AUDIT_REPAIR = "audit.repair"  # a damaged (partial) tail moved aside, the chain continued


class Result(TextEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    # Written before a change, and followed by the change's success or failure under the same
    # event_type and request_id (heimdall_kms.audit.attempt).
    INTENT = "intent"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Not frozen: one event is made per value encrypted or decrypted, and a frozen dataclass's
# __init__ (object.__setattr__ per field) costs about five times as much. Treat it as immutable.
@dataclass(slots=True)
class AuditEvent:
    event_type: EventType
    actor: str
    request_id: str
    result: Result
    timestamp: str = field(default_factory=now_rfc3339)
    field_identifier: str | None = None
    key_identifier: str | None = None
    key_version: int | None = None
    provider: str | None = None
    encryption_version: str | None = None
    reason: str | None = None
    source_ip: str | None = None
    error_type: str | None = None
    context: Mapping[str, str] | None = None
    details: Mapping[str, Any] | None = None
    # Inside an admin API request: its X-Request-ID (the caller's, or the one generated and
    # echoed back) and its W3C trace id. ``request_id`` stays this package's own, unique per
    # call, so a caller reusing an id cannot pair one call's outcome with another's intent.
    correlation_id: str | None = None
    trace_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object; absent optional fields are left out."""
        document: dict[str, Any] = {
            "timestamp": self.timestamp,
            "event_type": self.event_type.value,
            "actor": self.actor,
            "request_id": self.request_id,
            "result": self.result.value,
        }
        optional = {
            "field_identifier": self.field_identifier,
            "key_identifier": self.key_identifier,
            "key_version": self.key_version,
            "provider": self.provider,
            "encryption_version": self.encryption_version,
            "reason": self.reason,
            "source_ip": self.source_ip,
            "error_type": self.error_type,
            "context": dict(self.context) if self.context is not None else None,
            "details": dict(self.details) if self.details is not None else None,
            "correlation_id": self.correlation_id,
            "trace_id": self.trace_id,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        return document
