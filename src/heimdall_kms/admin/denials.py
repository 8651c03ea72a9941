"""``access.denied`` without a synced line per refused request, and without losing one.

A flood of requests without a valid token (or with a token whose role does not fit) would
otherwise cost one synced audit line each: about 1,000 in 5 s, filling the disk and slowing
every honest writer. Refusals are grouped per source address, actor and status into windows of
one second. The first refusal of a window is written at once, exactly as before (fail closed:
when it cannot be written the request gets 503, and the next refusal tries again). The others
of the window are counted, and written as one ``access.denied`` event with ``details.count``,
the paths and the first and last time, when the window is over (a background flush), or when
the service stops. No refusal goes unrecorded; a burst costs two lines per second per source.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from heimdall_kms.audit import AuditEvent, AuditSink, EventType, Result
from heimdall_kms.audit.events import now_rfc3339
from heimdall_kms.errors import AuditWriteError

__all__ = ["DeniedRequests"]

_LOG = logging.getLogger(__name__)
_MAX_PATHS = 20  # distinct paths named in one aggregated event; the rest under "other"
_MAX_SOURCES = 10_000  # windows open at once; past that, refusals are written one by one

_Key = tuple[str | None, str, int]  # (source ip, actor, status)


@dataclass
class _Window:
    opened: float
    count: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    first: str | None = None
    last: str | None = None

    def add(self, path: str, timestamp: str) -> None:
        self.count += 1
        self.paths[path if path in self.paths or len(self.paths) < _MAX_PATHS else "other"] += 1
        self.first = self.first or timestamp
        self.last = timestamp

    def is_over(self, now: float, length: float) -> bool:
        return now - self.opened >= length

    def merge(self, other: _Window) -> None:
        self.count += other.count
        self.paths.update(other.paths)
        self.first = min(filter(None, (self.first, other.first)), default=None)
        self.last = max(filter(None, (self.last, other.last)), default=None)


class DeniedRequests:
    def __init__(
        self,
        sink: AuditSink,
        *,
        window_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._window = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[_Key, _Window] = {}
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def record(self, event: AuditEvent, path: str) -> None:
        """Record one refusal (``event`` as it would be written on its own).

        Raises:
            AuditWriteError: it had to be written at once and could not be (the counts of
                the source's previous window are kept for the next attempt).
        """
        key = _key_of(event)
        now = self._clock()
        with self._lock:
            if self._counted(key, now, path, event.timestamp):
                return
            previous = self._open.pop(key, _Window(now))
            room = len(self._open) < _MAX_SOURCES
        self._write_first(key, event, previous)
        if room:
            with self._lock:
                self._open.setdefault(key, _Window(now))
            self._start()

    def _counted(self, key: _Key, now: float, path: str, timestamp: str) -> bool:
        """Count the refusal in its source's window if that is still open (lock held)."""
        window = self._open.get(key)
        if window is None or window.is_over(now, self._window):
            return False
        window.add(path, timestamp)
        return True

    def _write_first(self, key: _Key, event: AuditEvent, previous: _Window) -> None:
        """Write the first refusal of a window, after the count of the source's last window."""
        due = [_summary(key, previous)] if previous.count else []
        try:
            self._sink.emit([*due, event])
        except AuditWriteError:
            if due:
                self._keep(key, previous)
            raise

    def flush(self) -> None:
        """Write the counts of every window that is over (kept when the write fails)."""
        counted = self._close_over(self._clock())
        if not counted:
            return
        try:
            self._sink.emit([_summary(k, w) for k, w in counted.items()])
        except AuditWriteError:
            _LOG.warning("could not write %d access.denied counts; kept", len(counted))
            for k, w in counted.items():
                self._keep(k, w)

    def _close_over(self, now: float) -> dict[_Key, _Window]:
        """Take out every window that is over; those that counted refusals are returned."""
        with self._lock:
            over = [k for k, w in self._open.items() if w.is_over(now, self._window)]
            closed = [(k, self._open.pop(k)) for k in over]
        return {k: w for k, w in closed if w.count}

    def _keep(self, key: _Key, window: _Window) -> None:
        with self._lock:
            current = self._open.get(key)
            if current is None:
                self._open[key] = window
            else:
                current.merge(window)

    def close(self) -> None:
        """Stop the background flush and write every count still open."""
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        with self._lock:
            for window in self._open.values():
                window.opened = float("-inf")
        self.flush()

    def _start(self) -> None:
        with self._lock:
            if self._flusher is not None or self._stop.is_set():
                return
            self._flusher = threading.Thread(target=self._run, name="heimdall-denials", daemon=True)
            self._flusher.start()

    def _run(self) -> None:
        while not self._stop.wait(self._window):
            self.flush()


def _key_of(event: AuditEvent) -> _Key:
    return (event.source_ip, event.actor, int((event.details or {}).get("status", 0)))


def _summary(key: _Key, window: _Window) -> AuditEvent:
    source_ip, actor, status = key
    return AuditEvent(
        event_type=EventType.ACCESS_DENIED,
        actor=actor,
        request_id=str(uuid.uuid4()),
        result=Result.FAILURE,
        timestamp=now_rfc3339(),
        source_ip=source_ip,
        error_type="unauthenticated" if status == 401 else "forbidden",
        details={
            "status": status,
            "count": window.count,
            "paths": dict(sorted(window.paths.items())),
            "first": window.first,
            "last": window.last,
            "aggregated": True,
        },
    )
