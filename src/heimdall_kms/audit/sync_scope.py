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

__all__ = ["DeferredSync", "one_sync_per_batch", "unsynced_writers"]


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


@contextmanager
def one_sync_per_batch() -> Iterator[None]:
    """Defer the audit syncs of this thread's emits to the end of the block (nested: the
    outermost block's end). A sync that fails at the end raises, so the batch is rolled back.

    Raises:
        AuditWriteError: the final sync failed (after a block that did not raise).
    """
    if _WRITERS.get() is not None:
        yield
        return
    writers: dict[DeferredSync, None] = {}
    token = _WRITERS.set(writers)
    try:
        yield
    except BaseException:
        _WRITERS.reset(token)
        # The block's own failure is what is reported; its lines are still synced where the
        # disk allows (a later batch's sync would flush them too).
        for sink in writers:
            with suppress(AuditWriteError):
                sink.sync_deferred()
        raise
    _WRITERS.reset(token)
    for sink in writers:
        sink.sync_deferred()
