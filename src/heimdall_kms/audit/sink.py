"""Where audit events go: JSON lines appended to a file, or stderr (never stdout).

The policy is *fail closed*: callers record the event before they hand back a result, and
if the line cannot be written they raise :class:`AuditWriteError` instead, so an operation
whose audit event is lost does not happen. A batch of events is written and flushed with one
``write`` call, so bulk operations cost one I/O per batch, not one per value.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TextIO

from heimdall_kms.audit.events import AuditEvent
from heimdall_kms.errors import AuditWriteError

__all__ = ["AuditSink", "FileAuditSink", "MemoryAuditSink", "StreamAuditSink", "open_sink"]


class AuditSink(Protocol):
    def emit(self, events: Sequence[AuditEvent]) -> None:
        """Record the events in order, durably enough for the sink, or raise.

        Raises:
            AuditWriteError: the events could not be recorded.
        """

    def close(self) -> None: ...


def _lines(events: Sequence[AuditEvent]) -> str:
    return "".join(
        json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False) + "\n"
        for event in events
    )


class FileAuditSink:
    """Appends JSON lines to a file created with mode 0600 and fsyncs after each batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditWriteError(f"HMD_AUDIT_LOG: cannot open {path}: {exc.strerror}") from None
        self._handle = os.fdopen(fd, "a", encoding="utf-8")

    def emit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        data = _lines(events)
        with self._lock:
            try:
                self._handle.write(data)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or (
                    "an event is not valid Unicode"
                    if isinstance(exc, UnicodeEncodeError)
                    else "the log is closed"
                )
                raise AuditWriteError(f"cannot write audit log {self.path}: {reason}") from None

    def close(self) -> None:
        with self._lock:
            self._handle.close()


class StreamAuditSink:
    """Writes JSON lines to a text stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        stream = self._stream or sys.stderr
        with self._lock:
            try:
                stream.write(_lines(events))
                stream.flush()
            except (OSError, ValueError):
                raise AuditWriteError("cannot write audit events to stderr") from None

    def close(self) -> None:
        return None


class MemoryAuditSink:
    """Keeps events in a list: for tests and for embedding applications that forward them."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        return None


def open_sink(destination: str) -> AuditSink:
    """The sink for ``HMD_AUDIT_LOG``: ``stderr`` or a file path.

    Raises:
        AuditWriteError: the file cannot be opened for appending.
    """
    if destination == "stderr":
        return StreamAuditSink()
    return FileAuditSink(Path(destination))
