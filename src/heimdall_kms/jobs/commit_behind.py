"""A job batch's commit, on a worker thread while the next batch is converted.

The commit is a wait (the database's disk sync, or its round trip) that holds no lock this
process needs and gives up the GIL for its whole length, so the job's thread reads,
classifies, opens and seals the next batch meanwhile. The order of a batch's steps does not
change: its audit lines are synced, then its transaction commits; the next batch writes only
once that commit is done (one commit in flight). Nothing else runs on the worker: the audit
sync's several system calls and the many short database calls of a batch's writes would each
wait for the GIL again behind the converting thread (a batch's 500 compare-and-swap and
journal statements on SQLite took 5 to 15 times as long beside a busy thread).
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
        """Sync ``lines`` here, then commit ``batch`` on the worker; :meth:`wait` says how
        the commit went.

        Raises:
            AuditWriteError: the sync failed (the caller rolls the batch back). As
                :meth:`wait`, for the commit before (waited for first).
        """
        self.wait()
        # The sync stays on this thread: each of its system calls gives up the GIL, and on
        # the worker each would wait for it again behind the converting thread.
        lines.sync()
        context = contextvars.copy_context()
        self._pending = self._worker.submit(context.run, batch.commit)

    def wait(self) -> bool:
        """Wait for the commit in flight; whether there was one (it is done now).

        Raises:
            StoreError: the commit failed (the batch is rolled back).
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
