"""The loop every data job shares: batches, compare-and-swap, journal, audit, progress.

A job subclass says which rows are candidates (a SQL pre-filter) and how one batch of rows
turns into swaps; this class does the rest, identically for ``migrate`` and ``reencrypt``.
Per batch: read the next rows (keyset order; locked on PostgreSQL), convert, compare-and-swap
the new values back and journal the old ones, record the ``reencrypt.batch`` audit event, and
only then commit the transaction and publish progress: a batch whose event cannot be written
is rolled back. The run itself is one audited attempt (a ``job.run`` intent before anything is
touched, its outcome at the end).

A transient KMS failure (throttled, unavailable, sealed, no answer in time) rolls the batch
back, so no row stays locked while the job waits, and the batch is tried again after a
back-off (:class:`Patience`); the job stops only after the stall time without progress. Any
other failure of the KMS, the database or the audit sink stops the run at once with the batch
in flight rolled back. Either way rerunning finishes it.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from heimdall_kms.audit import AuditEvent, EventType, Result, audited
from heimdall_kms.audit.sync_scope import one_sync_per_batch
from heimdall_kms.errors import HeimdallKMSError, IncompleteError, InvalidInputError, StoreError
from heimdall_kms.jobs.fit import Need, unfit
from heimdall_kms.jobs.patience import Patience
from heimdall_kms.jobs.report import JobReport, ProgressCallback, RowFailure, TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.store import Batch, FieldStore, Match, Row, Swap

__all__ = ["BatchJob", "Changes", "JobOptions", "Planned", "new_run_id"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class JobOptions:
    batch_size: int = 250
    dry_run: bool = False
    run_id: str | None = None  # None: the run is named by new_run_id()
    actor: str = "heimdall-kms"

    def run_name(self) -> str:
        """The run's id: the one given, else a new one.

        Raises:
            InvalidInputError: an empty id was given (the journal and the audit name the run).
        """
        if self.run_id is None:
            return new_run_id()
        if not self.run_id.strip():
            raise InvalidInputError("a run id must not be empty")
        return self.run_id


@dataclass(frozen=True, slots=True)
class Planned:
    """A dry run's answer for a batch: how many rows would change, and (for a column with a
    bound) the characters each one's new text needs. Nothing is sealed and nothing is
    written."""

    rows: int
    needs: tuple[tuple[Row, Need], ...] = ()


Changes = list[Swap] | Planned


@dataclass(frozen=True, slots=True)
class _Gap:
    """Rows in (after, end] that a locked read skipped; ``seen``: the range's rows done."""

    after: object | None
    end: object | None
    seen: frozenset[object]
    missed: int


_END = object()  # the cursor after the last batch of a range


def new_run_id() -> str:
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class BatchJob(ABC):
    job: str
    match: Match
    # Whether replaced values are kept in the journal for a rollback. A job whose old values
    # must not survive it (a full re-encryption after a compromise) says False.
    journaled: bool = True

    def __init__(
        self, services: JobServices, options: JobOptions, progress: ProgressCallback | None = None
    ) -> None:
        self.services = services
        self.crypto = services.crypto  # seals and opens the values
        self.options = options
        self.progress = progress
        self.report = JobReport(self.job, options.run_name(), options.dry_run)
        self.patience = Patience(services.stall_seconds)

    @abstractmethod
    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        """Turn one batch of candidate rows into swaps; count skips and report failures.

        A dry run answers :class:`Planned` (how many rows would change); a dry run writes
        nothing, whatever it answers.
        """

    def prepare(self) -> None:
        """Work done once before the first target (e.g. asking the KMS for the latest version)."""
        return None

    def run(self, stores: Sequence[FieldStore]) -> JobReport:
        """Every target in turn; returns the report (``stop_error`` set if it had to stop).

        Raises:
            StoreError: a target is wrong or not writable (before any write).
        """
        for store in stores:
            store.check(writable=not self.options.dry_run)
        # The run's intent is recorded before the journal table, the KMS or any row is touched.
        with audited(self.services.audit, self._run_event(stores)) as attempt:
            self._run(stores)
            totals = self.report.totals
            attempt.details.update(
                examined=totals.examined, completed=totals.completed, failed=totals.failed
            )
            attempt.error = self.report.stop_error
        return self.report

    def _run(self, stores: Sequence[FieldStore]) -> None:
        if not self.options.dry_run:
            for store in stores:
                store.ensure_journal()
        running = self.services.metrics.jobs_running
        running.inc()
        try:
            self._patiently(self.prepare)
            for store in stores:
                self._target(store)
        except HeimdallKMSError as exc:
            self.report.stopped_by = f"{exc.error_type}: {exc}"
            self.report.stop_error = exc
        finally:
            running.dec()
            self.report.finished = time.monotonic()
            meter = self.services.meter
            if meter is not None:
                self.report.kms_calls = meter.total_calls
                self.report.throttled = meter.throttled

    def _run_event(self, stores: Sequence[FieldStore]) -> AuditEvent:
        return AuditEvent(
            event_type=EventType.JOB_RUN,
            actor=self.options.actor,
            request_id=self.report.run_id,
            result=Result.SUCCESS,
            details={
                "job": self.report.job,
                "dry_run": self.report.dry_run,
                "targets": [str(store.target) for store in stores],
            },
        )

    def _patiently(self, step: Callable[[], _T]) -> _T:
        """Run ``step``; on a transient KMS failure wait and run it again, until it passes or
        the job has stalled (then the failure is raised, saying so)."""
        while True:
            try:
                return step()
            except HeimdallKMSError as exc:
                if not exc.retryable:
                    raise
                self.patience.wait(exc)

    def _target(self, store: FieldStore) -> None:
        candidates = store.count(self.match)
        # Rows the SQL pre-filter rules out are never read; they count as skipped all the same.
        target = TargetReport(
            str(store.target), total=candidates, skipped=store.count(Match.ALL) - candidates
        )
        self.report.targets.append(target)
        self._publish(target)
        # PostgreSQL skips rows another transaction holds locked (SKIP LOCKED): the job comes
        # back for them until they are examined, and never reports completed without them.
        gaps = self._sweep(store, target, _Gap(None, None, frozenset(), 0))
        while gaps:
            locked = sum(gap.missed for gap in gaps)
            self.patience.wait(
                IncompleteError(
                    f"{locked} rows of {target.target} are locked by another transaction and "
                    "were not examined"
                )
            )
            gaps = [left for gap in gaps for left in self._sweep(store, target, gap)]

    def _sweep(self, store: FieldStore, target: TargetReport, gap: _Gap) -> list[_Gap]:
        """Examine every candidate row of the gap's range not seen yet, batch by batch;
        returns the parts of the range where rows were locked by someone else."""
        left: list[_Gap] = []
        after = gap.after
        while after is not _END:
            after, locked = self._patiently(lambda: self._batch(store, target, after, gap))  # noqa: B023
            if locked is not None:
                left.append(locked)
            self._publish(target)
        return left

    def _batch(
        self, store: FieldStore, target: TargetReport, after: object | None, gap: _Gap
    ) -> tuple[object | None, _Gap | None]:
        """One batch after ``after`` in the gap's range: the cursor for the next one (``_END``
        at the end) and the part of this batch's range whose rows were locked, if any.

        A failure leaves the counts as they were (the batch is rolled back, tried again).
        """
        counts, failures = dataclasses.replace(target), self.report.failure_count
        try:
            with store.batch(after, self.options.batch_size, self.match, gap.end) as batch:
                locked = None
                if batch.missed:
                    seen = gap.seen | {row.id for row in batch.rows}
                    locked = _Gap(after, batch.end, seen, batch.missed)
                if not batch.rows:
                    return _END, locked
                rows = [row for row in batch.rows if row.id not in gap.seen]
                if rows:
                    # The batch's audit lines are synced once, before its transaction commits.
                    with one_sync_per_batch():
                        self._convert_and_swap(store, target, batch, rows)
                    self.patience.progressed()
                return batch.rows[-1].id, locked
        except HeimdallKMSError:
            self._undo(target, counts, failures)
            self._publish(target)  # shows the throttling while the job waits
            raise

    def _convert_and_swap(
        self, store: FieldStore, target: TargetReport, batch: Batch, rows: list[Row]
    ) -> None:
        target.examined += len(rows)
        swaps = self.convert(store, rows, target)
        if isinstance(swaps, Planned):
            limit = store.max_chars
            refused = (
                0
                if limit is None
                else sum(not self._fits(target, row, need, limit) for row, need in swaps.needs)
            )
            target.completed += swaps.rows - refused
        elif swaps and not self.options.dry_run:
            swaps = self._fitting(store, target, swaps)
            run_id = self.report.run_id if self.journaled else None
            applied = batch.swap(swaps, run_id)
            target.completed += sum(applied)
            target.conflicts += len(applied) - sum(applied)
        target.batches += 1
        # Inside the transaction: a batch whose event cannot be written is rolled back.
        self._audit_batch(target)

    def _fitting(self, store: FieldStore, target: TargetReport, swaps: list[Swap]) -> list[Swap]:
        """The swaps whose new value fits the column; each other one fails its row, left as
        it was (a ``varchar(N)`` too short for the new envelope), and the rest is written."""
        limit = store.max_chars
        if limit is None:
            return swaps
        return [
            swap
            for swap in swaps
            if self._fits(target, swap.row, Need(len(swap.new_value), len(swap.new_value)), limit)
        ]

    def _fits(self, target: TargetReport, row: Row, need: Need, limit: int) -> bool:
        """Whether a value's new text certainly fits ``limit``; one that does not, or may not
        (a dry run's prediction), fails its row, saying how long it is or will be."""
        if need.fits(limit):
            return True
        target.failed += 1
        why = unfit(target.target, need, limit, predicted=self.options.dry_run)
        self.report.fail(RowFailure(target.target, row.key, StoreError.error_type, why))
        return False

    def _undo(self, target: TargetReport, counts: TargetReport, failures: int) -> None:
        target.restore(counts)
        self.report.truncate_failures(failures)

    def _audit_batch(self, target: TargetReport) -> None:
        self.services.audit.emit(
            [
                AuditEvent(
                    event_type=EventType.REENCRYPT_BATCH,
                    actor=self.options.actor,
                    request_id=self.report.run_id,
                    result=Result.SUCCESS,
                    field_identifier=target.target,
                    details={"job": self.job, "dry_run": self.report.dry_run, **target.to_dict()},
                )
            ]
        )

    def _publish(self, target: TargetReport) -> None:
        if self.services.meter is not None:
            pacing = self.services.meter.pacing
            target.throttled, target.kms_rate = pacing.throttled, pacing.rate
        totals = self.report.totals
        self.services.metrics.set_progress(
            total=totals.total,
            completed=totals.completed,
            failed=self.report.failure_count,
            throttled=target.throttled,
            kms_rate=target.kms_rate,
        )
        if self.progress is not None:
            self.progress(target)
