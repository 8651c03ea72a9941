"""One audit disk sync per job batch, instead of one per call inside it.

A data job's batch has no effect anyone can see until its transaction commits, and it commits
only after its last audit event (``reencrypt.batch``) is written. Inside
:func:`one_sync_per_batch`, a :class:`~heimdall_kms.audit.sink.FileAuditSink` still chains and
writes every call's lines at once, in order (a crash of this process loses none: they are in
the file), but leaves them to one ``fdatasync`` when the block ends, and moves its checkpoint
only then, so the checkpoint never runs ahead of the lines on disk. What this saves is the
decrypt and encrypt calls' own syncs (two of a migration batch's three);
``benchmarks/throughput_bench.py`` measures the jobs with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from heimdall_kms.errors import AuditWriteError

__all__ = ["DeferredSync", "UnsyncedLines", "one_sync_per_batch", "unsynced_writers"]


@runtime_checkable
class DeferredSync(Protocol):
    def sync_deferred(self) -> None:
        """Sync the lines written since the scope began, then move the checkpoint.

        Raises:
            AuditWriteError: the sync failed.
        """


# The sinks written to in the current scope, in the order they were first written to.
_WRITERS: ContextVar[dict[DeferredSync, None] | None] = ContextVar("_WRITERS", default=None)


def unsynced_writers() -> dict[DeferredSync, None] | None:
    """Where a sink registers its unsynced write; None outside a scope (sync at once)."""
    return _WRITERS.get()


class UnsyncedLines:
    """The sinks one batch wrote to without syncing them, synced once at its end.

    The lines are written by the thread in :meth:`deferring`; :meth:`sync` may run on another
    thread afterwards (a job syncs and commits one batch while it converts the next).
    """

    def __init__(self) -> None:
        self._writers: dict[DeferredSync, None] = {}

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Leave the syncs of this thread's emits in the block to :meth:`sync` (inside another
        scope: to that scope's end)."""
        if _WRITERS.get() is not None:
            yield
            return
        token = _WRITERS.set(self._writers)
        try:
            yield
        finally:
            _WRITERS.reset(token)

    def sync(self) -> None:
        """Sync every sink written to (another writer's lines after ours are synced too).

        Raises:
            AuditWriteError: a sync failed.
        """
        for sink in self._writers:
            sink.sync_deferred()

    def sync_quietly(self) -> None:
        """:meth:`sync` after a failure: the lines are synced where the disk allows (a later
        batch's sync would flush them too); the failure that led here is what is reported."""
        for sink in self._writers:
            with suppress(AuditWriteError):
                sink.sync_deferred()


@contextmanager
def one_sync_per_batch() -> Iterator[None]:
    """Defer the audit syncs of this thread's emits to the end of the block (nested: the
    outermost block's end). A sync that fails at the end raises, so the batch is rolled back.

    Raises:
        AuditWriteError: the final sync failed (after a block that did not raise).
    """
    lines = UnsyncedLines()
    try:
        with lines.deferring():
            yield
    except BaseException:
        lines.sync_quietly()
        raise
    lines.sync()
