"""Where audit events go: a hash-chained JSON-lines file, or stderr (never stdout).

The policy is *fail closed*: callers record the event before they hand back a result, and
if the line cannot be written they raise :class:`AuditWriteError` instead, so an operation
whose audit event is lost does not happen. A batch of events is chained, written and fsynced
with one ``write`` call, so bulk operations cost one I/O per batch, not one per value, and the
order is kept. Several processes may append to one file: each batch takes an exclusive lock,
reads the chain's last line, and continues it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from heimdall_kms.audit.chain import GENESIS
from heimdall_kms.audit.events import AuditEvent
from heimdall_kms.audit.lines import chain_events
from heimdall_kms.audit.sync_scope import DeferredSync, unsynced_writers
from heimdall_kms.errors import AuditWriteError

if TYPE_CHECKING:
    from heimdall_kms.audit.checkpointer import Checkpointer
    from heimdall_kms.config import Settings
    from heimdall_kms.metrics import Metrics

__all__ = [
    "AuditSink",
    "FailureCountingSink",
    "FileAuditSink",
    "MemoryAuditSink",
    "StreamAuditSink",
    "head_path",
    "open_sink",
    "write_head",
]

_TAIL_CHUNK = 65536
# Far above any line this sink writes (contexts, reasons and actors are bounded before an
# operation runs); only a file that is not an audit log has a last line this long.
_MAX_LINE_BYTES = 64 * 1024 * 1024
_HEAD_BYTES = 128  # the checkpoint record, padded: {"seq": N, "hash": "<64 hex>"} and spaces


class AuditSink(Protocol):
    def emit(self, events: Sequence[AuditEvent]) -> None:
        """Record the events in order, durably enough for the sink, or raise.

        Raises:
            AuditWriteError: the events could not be recorded.
        """

    def close(self) -> None: ...


def head_path(log: Path) -> Path:
    return log.with_name(log.name + ".head")


class FileAuditSink:
    """Appends chained JSON lines to a file (mode 0600), fsyncs, and updates the checkpoint."""

    def __init__(self, path: Path, *, checkpointer: Checkpointer | None = None) -> None:
        self.path = path
        # Signs the chain head periodically (HMD_AUDIT_SIGNING_KEY), off this hot path.
        self._checkpointer = checkpointer
        self._lock = threading.Lock()
        # The file is created, its directory never: a mistyped directory is an error, not a
        # new audit log nobody reads.
        if not path.parent.is_dir():
            raise AuditWriteError(
                f"HMD_AUDIT_LOG: cannot open {path}: directory {path.parent} does not exist"
            )
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise AuditWriteError(f"HMD_AUDIT_LOG: cannot open {path}: {exc.strerror}") from None
        # A raw descriptor, not a buffered file: a failed write must not leave bytes in a
        # buffer that a later flush (or close) would write after the fact.
        self._fd: int | None = fd
        self._head: int | None = None
        self._end: tuple[int, int, str] | None = None  # (file size, seq, hash) after our write
        self._unsynced = 0  # lines written in a one_sync_per_batch scope, not yet synced

    def emit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        deferred = unsynced_writers()
        with self._lock, self._writing():
            fd = self._locked_fd()
            try:
                size = os.fstat(fd).st_size
                seq, prev = self._tail(fd, size)
                data, seq, prev = chain_events(events, seq, prev)
                encoded = data.encode("utf-8")
                self._end = None  # unknown until the write is complete
                _write_all(fd, encoded)
                self._end = (size + len(encoded), seq, prev)
                if deferred is not None:
                    self._unsynced += len(events)
                    deferred[self] = None
                    return
                os.fdatasync(fd)  # appends: the new size is flushed too
                self._checkpoint(seq, prev)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if self._checkpointer is not None:
                self._checkpointer.note(seq, prev, len(events))

    def sync_deferred(self) -> None:
        """Sync what this sink wrote in a :func:`one_sync_per_batch` scope, then move the
        checkpoint to the chain's end (another writer's lines after ours are synced too)."""
        with self._lock, self._writing():
            if not self._unsynced:
                return
            fd = self._locked_fd()
            try:
                os.fdatasync(fd)
                seq, prev = self._tail(fd, os.fstat(fd).st_size)
                self._checkpoint(seq, prev)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            lines, self._unsynced = self._unsynced, 0
            if self._checkpointer is not None:
                self._checkpointer.note(seq, prev, lines)

    def _locked_fd(self) -> int:
        """The log's descriptor, under the writers' exclusive lock (the caller unlocks)."""
        if self._fd is None:
            raise ValueError("closed")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self._fd

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or (
                "an event is not valid Unicode"
                if isinstance(exc, UnicodeEncodeError)
                else str(exc)
                if isinstance(exc, _ChainError)
                else "the log is closed"
            )
            raise AuditWriteError(f"cannot write audit log {self.path}: {reason}") from None

    def _tail(self, fd: int, size: int) -> tuple[int, str]:
        """The chain's last ``seq`` and ``hash``, read from the end of the file."""
        if self._end is not None and self._end[0] == size:
            # Nobody appended since this sink's last batch (the lock is held): its end stands.
            return self._end[1], self._end[2]
        if size == 0:
            return 0, GENESIS
        last = _last_line(fd, size)
        try:
            event = json.loads(last)
            return int(event["seq"]), str(event["hash"])
        except (ValueError, KeyError, TypeError):
            raise _ChainError("its last line is not a chained audit event") from None

    def _checkpoint(self, seq: int, digest: str) -> None:
        # One fixed-size record overwritten in place at offset 0 (a record this small sits in
        # one disk sector), after the log itself is on disk: the checkpoint can never run
        # ahead of the lines it vouches for. It is not synced on its own: every reader on this
        # machine sees it at once; a process killed between the two writes, or a power loss,
        # leaves it behind the log's end, which `audit verify` reports as a crash (exit 3)
        # and this sink's next batch brings up to date. That
        # saves a second disk sync per batch, which is most of a single value's audit cost.
        write_head(self._head_fd(), seq, digest)

    def _head_fd(self) -> int:
        head = head_path(self.path)
        fd = self._head
        if fd is not None:
            try:
                if os.stat(head).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            # Replaced or removed since (another writer's rename, an operator): follow the
            # name, as verify does.
            os.close(fd)
            self._head = None
        self._head = os.open(head, os.O_RDWR | os.O_CREAT, 0o600)
        return self._head

    def checkpoint_now(self) -> None:
        """Sign the chain head this sink wrote last, now (when checkpoints are configured)."""
        if self._checkpointer is not None:
            self._checkpointer.checkpoint_now()

    def close(self) -> None:
        if self._checkpointer is not None:
            # The last head is signed and anchored (bounded wait) before the log is closed.
            self._checkpointer.close()
            self._checkpointer = None
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._head is not None:
                os.close(self._head)
                self._head = None


def write_head(fd: int, seq: int, digest: str) -> None:
    """Overwrite the ``.head`` checkpoint open at ``fd`` with ``seq``/``digest``."""
    record = json.dumps({"seq": seq, "hash": digest}).ljust(_HEAD_BYTES - 1) + "\n"
    os.pwrite(fd, record.encode("ascii"), 0)
    if os.fstat(fd).st_size != _HEAD_BYTES:
        os.ftruncate(fd, _HEAD_BYTES)


def _last_line(fd: int, size: int) -> bytes:
    """The file's last newline-terminated line, however long: read back chunk by chunk until
    the newline before it (or the start of the file) is found.

    Raises:
        _ChainError: the file ends with a partial line, or its last line is over the bound.
    """
    if os.pread(fd, 1, size - 1) != b"\n":
        raise _ChainError(
            "it ends with a partial line (a crash or a full disk mid-write); "
            "run `heimdall-kms audit repair`"
        )
    end = size - 1  # the last line is [start, end), its newline at end
    pieces: list[bytes] = []
    position = end
    while position > 0:
        if end - position > _MAX_LINE_BYTES:
            raise _ChainError("its last line is longer than any audit event")
        start = max(0, position - _TAIL_CHUNK)
        chunk = os.pread(fd, position - start, start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            pieces.append(chunk[newline + 1 :])
            break
        pieces.append(chunk)
        position = start
    return b"".join(reversed(pieces))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _ChainError(ValueError):
    """The existing file cannot be continued safely."""


class StreamAuditSink:
    """Writes chained JSON lines to a text stream (stderr by default), chained per process."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._seq = 0
        self._prev = GENESIS

    def emit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        stream = self._stream or sys.stderr
        with self._lock:
            data, seq, prev = chain_events(events, self._seq, self._prev)
            try:
                stream.write(data)
                stream.flush()
            except (OSError, ValueError):
                raise AuditWriteError("cannot write audit events to stderr") from None
            self._seq, self._prev = seq, prev

    def close(self) -> None:
        return None


class FailureCountingSink:
    """Forwards to ``inner`` and calls ``on_failure`` for every batch it could not record
    (``heimdall_audit_write_failures_total``); the error still propagates, failing closed."""

    def __init__(self, inner: AuditSink, on_failure: Callable[[], None]) -> None:
        self.inner = inner
        self._on_failure = on_failure

    def emit(self, events: Sequence[AuditEvent]) -> None:
        writers = unsynced_writers()
        if writers is not None and isinstance(self.inner, DeferredSync):
            # Registered before the inner sink, so its sync at the scope's end is counted too.
            writers[self] = None
        try:
            self.inner.emit(events)
        except AuditWriteError:
            self._on_failure()
            raise

    def sync_deferred(self) -> None:
        """The inner sink's deferred sync (one_sync_per_batch), a failure counted."""
        if not isinstance(self.inner, DeferredSync):
            return
        try:
            self.inner.sync_deferred()
        except AuditWriteError:
            self._on_failure()
            raise

    def close(self) -> None:
        self.inner.close()


class MemoryAuditSink:
    """Keeps events in a list: for tests and for embedding applications that forward them."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    def emit(self, events: Sequence[AuditEvent]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        return None


def open_sink(
    destination: str, settings: Settings | None = None, *, metrics: Metrics | None = None
) -> AuditSink:
    """The sink for ``HMD_AUDIT_LOG``: ``stderr`` or a file path; a file's head is signed and
    anchored when the ``settings`` name a signing key (HMD_AUDIT_SIGNING_KEY).

    ``metrics``: where failed signatures and anchor writes are counted (without it, in a
    registry nothing exports: the composition root passes the one it exports).

    Raises:
        AuditWriteError: the file cannot be opened for appending.
        ConfigurationError: the checkpoint settings are wrong.
    """
    if destination == "stderr":
        return StreamAuditSink()
    path = Path(destination)
    sink = FileAuditSink(path)
    if settings is None or settings.audit_anchoring is None:
        return sink
    from heimdall_kms.audit.anchoring import checkpointer_for  # noqa: PLC0415

    try:
        sink._checkpointer = checkpointer_for(path, settings, metrics)
    except BaseException:
        sink.close()
        raise
    return sink
