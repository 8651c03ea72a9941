"""The audit trail: events and the sinks they are written to."""

from heimdall_kms.audit.attempt import Attempt, audited
from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.sink import (
    AuditSink,
    FileAuditSink,
    MemoryAuditSink,
    StreamAuditSink,
    open_sink,
)

__all__ = [
    "Attempt",
    "AuditEvent",
    "AuditSink",
    "EventType",
    "FileAuditSink",
    "MemoryAuditSink",
    "Result",
    "StreamAuditSink",
    "audited",
    "open_sink",
]
