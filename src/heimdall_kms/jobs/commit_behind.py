"""A job batch's audit sync and commit, on a worker thread while the next batch is converted.

Both are waits (a disk sync of the audit log, the database's commit) that hold no lock this
process needs and release the GIL for their whole length, so the job's thread reads,
classifies, opens and seals the next batch meanwhile. The order of a batch's steps does not
change: its audit lines are synced, then its transaction commits; the next batch writes only
once that commit is done (one commit in flight). What runs on the worker is nothing else: the
many short database calls of a batch's writes stay on the job's thread, since each of them
would wait for the GIL behind the converting thread.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import Executor, Future

from heimdall_kms.audit.sync_scope import UnsyncedLines
from heimdall_kms.store import Batch

__all__ = ["CommitBehind"]


class CommitBehind:
    """At most one batch's sync and commit in flight on ``worker`` (a single thread)."""

    def __init__(self, worker: Executor) -> None:
        self._worker = worker
        self._pending: Future[None] | None = None

    def submit(self, batch: Batch, lines: UnsyncedLines) -> None:
        """Sync ``lines``, then commit ``batch``, on the worker; :meth:`wait` says how it went.

        Raises:
            As :meth:`wait`, for the commit before (waited for first).
        """
        self.wait()
        context = contextvars.copy_context()
        self._pending = self._worker.submit(context.run, _sync_and_commit, batch, lines)

    def wait(self) -> bool:
        """Wait for the commit in flight; whether there was one (it is done now).

        Raises:
            AuditWriteError, StoreError: its sync or commit failed (the batch is rolled back).
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return False
        pending.result()
        return True

    def settle(self) -> tuple[bool, BaseException | None]:
        """After a failure elsewhere: wait for the commit in flight, if any; whether it was
        committed, and its failure (not raised)."""
        try:
            return self.wait(), None
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, which raises one
            return False, exc


def _sync_and_commit(batch: Batch, lines: UnsyncedLines) -> None:
    try:
        lines.sync()
    except BaseException:
        batch.roll_back()
        raise
    batch.commit()
