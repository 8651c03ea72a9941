"""Background migration and re-encryption jobs of the admin API, and their status records.

A job is one thread running the same code as ``heimdall-kms migrate`` / ``reencrypt``
(:func:`~heimdall_kms.jobs.migrate.run_migration`, :func:`~heimdall_kms.jobs.reencrypt.
run_reencrypt`): same batches, compare-and-swap, journal, ``reencrypt.batch`` audit events
and ``heimdall_reencryption_progress`` gauge. The job id is the run id, so the journal
(``migrate --rollback RUN_ID``), the audit events and the status endpoint name the same run.
Records live in the service's database (:mod:`heimdall_kms.store.job_records`): every replica
reports every job, one replica (the owner, renewing a lease) runs it, and a job whose owner
died or stopped is resumed by the next replica that looks (migrate and re-encrypt are
idempotent: what was done no longer matches, what was not is done by the resumed run).
Everything that can be checked before the first write (mode, target, table and columns,
write access) is checked before the job is accepted, so a typo is a 4xx, not a failed job.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from heimdall_kms.admin.job_status import IDLE, JobSpec, now, params_of, to_dict
from heimdall_kms.admin.targets import open_checked
from heimdall_kms.audit import AuditEvent, AuditSink
from heimdall_kms.composition import job_services
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError, RefusedError
from heimdall_kms.jobs.batch_job import JobOptions, new_run_id
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import check_settings, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobReport, TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.store import FieldStore, Target
from heimdall_kms.store.job_records import JobCounts, JobRow, JobTable, wall_clock

__all__ = ["JobCancelledError", "JobRunner", "JobSpec", "SharedSink"]

_log = logging.getLogger(__name__)
_LISTED = 100  # failed row ids shown per job


class JobCancelledError(HeimdallKMSError):
    """The server is shutting down; the job stopped between two batches (rerun to finish)."""

    error_type = "cancelled"


class _LostJobError(HeimdallKMSError):
    """Another replica took the job over (this one missed its lease): stop, write nothing."""

    error_type = "lost"


class SharedSink:
    """The process's one audit sink, lent to a :class:`Crypto` that must not close it.

    One sink per process keeps a single writer (and, with a hash-chained log, a single
    chain); optionally it stamps the client's address on every event it forwards.
    """

    def __init__(self, inner: AuditSink, *, source_ip: str | None = None) -> None:
        self._inner = inner
        self._source_ip = source_ip

    def emit(self, events: Sequence[AuditEvent]) -> None:
        source = self._source_ip
        if source is not None:
            events = [e if e.source_ip else replace(e, source_ip=source) for e in events]
        self._inner.emit(events)

    def close(self) -> None:
        return None


@dataclass
class _Run:
    """One replica's run of a job: the record's id, and how it stops."""

    job_id: str
    spec: JobSpec
    actor: str
    lost: threading.Event
    before: JobCounts | None = None  # the counts of the runs before this one (a takeover)

    def counts(self, run: JobCounts) -> JobCounts:
        return run if self.before is None else self.before.resumed(run)


class JobRunner:
    """Starts jobs (one at a time per column, across replicas), records them in the
    database, heartbeats the ones it runs, and resumes orphaned ones."""

    def __init__(
        self,
        settings: Settings,
        audit: AuditSink,
        metrics: Metrics,
        provider_factory: Callable[[], KeyManagementService],
        *,
        database: str | None,
        lease_seconds: float,
    ) -> None:
        self.settings = settings
        self._audit = audit
        self._metrics = metrics
        self._provider_factory = provider_factory
        self._table = JobTable(database) if database is not None else None
        self._database = database
        self.lease = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._supervisor: threading.Thread | None = None

    def start(self, spec: JobSpec, actor: str) -> str:
        """Check the job can run, record it, then start it in a thread; its id.

        Raises:
            ConfigurationError: migrate outside hybrid mode. RefusedError: a job on the same
            column is running, or the server is stopping. StoreError: bad database/target.
        """
        if spec.mode == "migrate":
            check_settings(self.settings)
        if self._stop.is_set():
            raise RefusedError("the server is shutting down")
        table = self._table_for(spec.database)
        job_id = new_run_id()
        row = JobRow(
            job_id,
            spec.mode,
            str(spec.target),
            params_of(spec, actor),
            "running",
            JobCounts(0, 0, 0, 0, 0),
            self.owner,
            now(),
            None,
            None,
            [],
        )
        # Reserves the column (on every replica) while the store opens.
        table.create(row, f"{spec.target.table}.{spec.target.column}", wall_clock())
        try:
            store = self._open(spec)
        except BaseException:
            table.delete(job_id)
            raise
        self._launch(_Run(job_id, spec, actor, threading.Event()), store)
        return job_id

    def status(self, job_id: str | None = None) -> dict[str, Any] | None:
        """The record of ``job_id`` (default: the latest job), ``IDLE`` if there was none yet,
        None if ``job_id`` is unknown.

        Raises:
            StoreError: the job records cannot be read.
        """
        row = self._row(job_id)
        if row is None:
            return dict(IDLE) if job_id is None else None
        return to_dict(row)

    def _row(self, job_id: str | None) -> JobRow | None:
        """The record of ``job_id`` (default: the latest job); None if there is none."""
        table = self._table
        if table is None or not table.exists():
            return None
        return table.get(job_id)

    def start_supervisor(self) -> None:
        """Look for orphaned jobs now and every half lease, and resume them."""
        if self._table is None:
            return
        self._supervisor = threading.Thread(target=self._supervise, name="hmd-jobs", daemon=True)
        self._supervisor.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask running jobs to stop after their current batch, wait for them, and release
        them so that another replica (or this one, restarted) resumes them."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        if self._supervisor is not None:
            threads.append(self._supervisor)
        for thread in threads:
            thread.join(timeout)

    def _supervise(self) -> None:
        table = self._table
        if table is None:  # started only with a database
            return
        while not self._stop.is_set():
            try:
                self._resume_orphans(table)
            except HeimdallKMSError as exc:
                _log.warning("job records: %s", exc)
            self._stop.wait(self.lease / 2)

    def _resume_orphans(self, table: JobTable) -> None:
        if not table.exists():
            return
        for job_id in table.orphans(wall_clock(), self.lease):
            if self._stop.is_set():
                return
            self._resume(table, job_id)

    def _resume(self, table: JobTable, job_id: str) -> None:
        if not table.claim(job_id, self.owner, wall_clock(), self.lease):
            return  # another replica was first
        row = table.get(job_id)
        if row is None or self._database is None:  # just claimed: cannot be
            return
        try:
            spec = _spec_of(self._database, row.params)
            store = self._open(spec)
        except (HeimdallKMSError, KeyError, ValueError, TypeError) as exc:
            table.finish(job_id, self.owner, ("failed", _not_resumed(exc), now()), None, [])
            return
        _log.info("job %s: resumed by %s", job_id, self.owner)
        actor = str(row.params.get("actor", "admin"))
        self._launch(_Run(job_id, spec, actor, threading.Event(), row.counts), store)

    def _open(self, spec: JobSpec) -> FieldStore:
        return open_checked(spec.database, spec.target, writable=True)

    def _launch(self, run: _Run, store: FieldStore) -> None:
        thread = threading.Thread(target=self._run, args=(run, store), name=f"hmd-{run.job_id}")
        beat = threading.Thread(target=self._heartbeat, args=(run, thread), daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        beat.start()

    def _heartbeat(self, run: _Run, job: threading.Thread) -> None:
        table = self._table_for(run.spec.database)
        while True:
            job.join(self.lease / 3)
            if not job.is_alive():
                return
            try:
                if not table.heartbeat(run.job_id, self.owner, wall_clock()):
                    run.lost.set()
                    return
            except HeimdallKMSError as exc:
                _log.warning("job %s: heartbeat failed (%s)", run.job_id, exc.error_type)

    def _run(self, run: _Run, store: FieldStore) -> None:
        table = self._table_for(run.spec.database)
        try:
            kms = MeteredProvider(self._provider_factory())
            services = job_services(
                self.settings, kms, SharedSink(self._audit), self._metrics, actor=run.actor
            )
            with services.crypto:
                report = self._execute(services, run, store)
            self._finish(table, run, report)
        except _LostJobError:
            _log.warning("job %s: taken over by another replica; stopped here", run.job_id)
        except JobCancelledError:
            self._release(table, run)
        except HeimdallKMSError as exc:
            self._end(table, run, ("failed", f"{exc.error_type}: {exc}"), None, [])
        except Exception as exc:  # noqa: BLE001 - a job thread must always end with a state.
            _log.error("job %s: internal error (%s)", run.job_id, type(exc).__name__)
            self._end(table, run, ("failed", f"internal error ({type(exc).__name__})"), None, [])
        finally:
            store.close()

    def _execute(self, services: JobServices, run: _Run, store: FieldStore) -> JobReport:
        spec, table = run.spec, self._table_for(run.spec.database)

        def progress(target: TargetReport) -> None:
            counts = JobCounts(
                target.total, target.completed, target.failed, target.skipped, target.conflicts
            )
            if not table.progress(run.job_id, self.owner, run.counts(counts), wall_clock()):
                run.lost.set()
            if run.lost.is_set():
                raise _LostJobError("another replica runs this job now")
            # Pause only between two batches: not before the first, not after the last.
            between = 0 < target.examined < target.total
            if between and spec.interval_seconds > 0:
                self._stop.wait(spec.interval_seconds)
            if self._stop.is_set():
                raise JobCancelledError("the server is shutting down; another replica resumes")

        if spec.mode == "migrate":
            options = JobOptions(spec.batch_size, False, run.job_id, run.actor)
            return run_migration(services, [store], options, progress)
        reencrypt = ReencryptOptions(
            spec.batch_size, False, run.job_id, run.actor, mode=ReencryptMode(spec.mode)
        )
        return run_reencrypt(services, [store], reencrypt, progress)

    def _finish(self, table: JobTable, run: _Run, report: JobReport) -> None:
        """Record how the job ended (called inside :meth:`_run`'s handlers).

        Raises:
            _LostJobError, JobCancelledError: the job stopped on one of them; the batch loop
                turned it, raised by the progress callback, into ``stop_error``, and
                :meth:`_run` ends the job as for one raised anywhere else.
        """
        if isinstance(report.stop_error, _LostJobError | JobCancelledError):
            raise report.stop_error
        totals = report.totals
        counts = JobCounts(
            totals.total, totals.completed, report.failure_count, totals.skipped, totals.conflicts
        )
        failures = [{"id": f.id, "error_type": f.error_type} for f in report.failures[:_LISTED]]
        self._end(table, run, _outcome(report), run.counts(counts), failures)

    def _end(
        self,
        table: JobTable,
        run: _Run,
        end: tuple[str, str | None],
        counts: JobCounts | None,
        failures: list[dict[str, str]],
    ) -> None:
        try:
            if not table.finish(run.job_id, self.owner, (*end, now()), counts, failures):
                _log.warning("job %s: ended here, but another replica owns it", run.job_id)
        except HeimdallKMSError as exc:
            _log.error("job %s: cannot record its end (%s)", run.job_id, exc.error_type)

    def _release(self, table: JobTable, run: _Run) -> None:
        try:
            table.release(run.job_id, self.owner)
        except HeimdallKMSError as exc:
            _log.warning("job %s: cannot release it (%s)", run.job_id, exc.error_type)

    def _table_for(self, database: str) -> JobTable:
        if self._table is not None and self._table.url == database:
            return self._table
        return JobTable(database)


def _spec_of(database: str, params: dict[str, Any]) -> JobSpec:
    """The spec of a recorded job, from its parameters (as :func:`params_of` wrote them).

    Raises:
        KeyError, ValueError, TypeError: the record lacks a parameter or holds a wrong one.
        StoreError: the recorded target is not one of plain identifiers.
    """
    target = Target(params["table"], params["column"], params["id_column"], params.get("json_path"))
    return JobSpec(
        database,
        target,
        str(params["mode"]),
        int(params["batch_size"]),
        float(params["interval_seconds"]),
    )


def _not_resumed(exc: Exception) -> str:
    """Why a job record could not be resumed, as its recorded message."""
    if isinstance(exc, HeimdallKMSError):
        return f"{exc.error_type}: {exc}"
    return f"unreadable job record ({type(exc).__name__})"


def _outcome(report: JobReport) -> tuple[str, str | None]:
    """The state and message a job that ran to its end is recorded with."""
    if report.stopped_by is not None:
        return ("failed", f"stopped: {report.stopped_by}")
    if report.failure_count:
        return (
            "failed",
            f"{report.failure_count} values failed and were left as they were "
            "(ids under 'failures'); fix them and rerun",
        )
    return ("completed", None)
