"""The audit trail: events and the sinks they are written to."""

from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.sink import (
    AuditSink,
    FileAuditSink,
    MemoryAuditSink,
    StreamAuditSink,
    open_sink,
)

__all__ = [
    "AuditEvent",
    "AuditSink",
    "EventType",
    "FileAuditSink",
    "MemoryAuditSink",
    "Result",
    "StreamAuditSink",
    "open_sink",
]
