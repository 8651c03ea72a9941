"""Background migration and re-encryption jobs of the admin API, and their status records.

A job is one thread running the same code as ``heimdall-kms migrate`` / ``reencrypt``
(:func:`~heimdall_kms.jobs.migrate.run_migration`, :func:`~heimdall_kms.jobs.reencrypt.
run_reencrypt`): same batches, compare-and-swap, journal, ``reencrypt.batch`` audit events
and ``heimdall_reencryption_progress`` gauge. The job id is the run id, so the journal
(``migrate --rollback RUN_ID``), the audit events and the status endpoint name the same run.
Everything that can be checked before the first write (mode, target, table and columns,
write access) is checked before the job is accepted, so a typo is a 4xx, not a failed job.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from heimdall_kms.audit import AuditEvent, AuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError, RefusedError
from heimdall_kms.jobs.batch_job import JobOptions, new_run_id
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import check_settings, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobReport, TargetReport
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Target, open_store

__all__ = ["JobCancelledError", "JobRecord", "JobRunner", "JobSpec", "SharedSink"]

_log = logging.getLogger(__name__)
_HISTORY = 100
_LISTED = 100  # failed row ids shown per job


class JobCancelledError(HeimdallKMSError):
    """The server is shutting down; the job stopped between two batches (rerun to finish)."""

    error_type = "cancelled"


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


@dataclass(frozen=True, slots=True)
class JobSpec:
    database: str
    target: Target
    mode: str  # migrate | rewrap | full
    batch_size: int
    interval_seconds: float


@dataclass
class JobRecord:
    job_id: str
    mode: str
    target: str
    key: tuple[str, str, str]  # (database, table, column): the conflict key, never shown
    state: str = "running"
    total: int = 0
    completed: int = 0
    failed: int = 0
    skipped: int = 0
    conflicts: int = 0
    started_at: str = ""
    finished_at: str | None = None
    error: str | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "skipped": self.skipped,
            "conflicts": self.conflicts,
            "job_id": self.job_id,
            "mode": self.mode,
            "target": self.target,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "failures": list(self.failures),
        }


IDLE: dict[str, Any] = {"state": "idle", "total": 0, "completed": 0, "failed": 0, "skipped": 0}


class JobRunner:
    """Starts jobs, one at a time per column, and keeps the last 100 records."""

    def __init__(
        self,
        settings: Settings,
        audit: AuditSink,
        metrics: Metrics,
        provider_factory: Callable[[], KeyManagementService],
    ) -> None:
        self.settings = settings
        self._audit = audit
        self._metrics = metrics
        self._provider_factory = provider_factory
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._records: OrderedDict[str, JobRecord] = OrderedDict()
        self._threads: list[threading.Thread] = []

    def start(self, spec: JobSpec, actor: str) -> JobRecord:
        """Check the job can run, then start it in a thread.

        Raises:
            ConfigurationError: migrate outside hybrid mode. RefusedError: a job on the same
            column is running, or the server is stopping. StoreError: bad database/target.
        """
        if spec.mode == "migrate":
            check_settings(self.settings)
        key = (spec.database, spec.target.table, spec.target.column)
        record = JobRecord(new_run_id(), spec.mode, str(spec.target), key, started_at=_now())
        with self._lock:
            if self._stop.is_set():
                raise RefusedError("the server is shutting down")
            for other in self._records.values():
                if other.key == key and other.state == "running":
                    raise RefusedError(
                        f"job {other.job_id} ({other.mode}) is already running on {other.target}"
                    )
            self._records[record.job_id] = record  # reserves the column while the store opens
        try:
            store = open_store(spec.database, spec.target)
            try:
                store.check(writable=True)
            except BaseException:
                store.close()
                raise
        except BaseException:
            with self._lock:
                del self._records[record.job_id]
            raise
        thread = threading.Thread(
            target=self._run, args=(record, spec, store, actor), name=f"hmd-{record.job_id}"
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            self._trim()
        thread.start()
        return record

    def status(self, job_id: str | None = None) -> dict[str, Any] | None:
        """The record of ``job_id`` (default: the latest job), ``IDLE`` if there was none yet,
        None if ``job_id`` is unknown."""
        with self._lock:
            if job_id is None:
                latest = next(reversed(self._records.values()), None)
                return latest.to_dict() if latest is not None else dict(IDLE)
            record = self._records.get(job_id)
            return record.to_dict() if record is not None else None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask running jobs to stop after their current batch, and wait for them."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _run(self, record: JobRecord, spec: JobSpec, store: FieldStore, actor: str) -> None:
        try:
            kms = MeteredProvider(self._provider_factory())
            with Crypto(
                self.settings,
                kms=kms,
                audit=SharedSink(self._audit),
                default_actor=actor,
                metrics=self._metrics,
            ) as crypto:
                report = self._execute(crypto, record, spec, store, actor)
            self._finish(record, report)
        except HeimdallKMSError as exc:
            self._end(record, "failed", f"{exc.error_type}: {exc}")
        except Exception as exc:  # noqa: BLE001 - a job thread must always end with a state.
            _log.error("job %s: internal error (%s)", record.job_id, type(exc).__name__)
            self._end(record, "failed", f"internal error ({type(exc).__name__})")
        finally:
            store.close()

    def _execute(
        self, crypto: Crypto, record: JobRecord, spec: JobSpec, store: FieldStore, actor: str
    ) -> JobReport:
        def progress(target: TargetReport) -> None:
            with self._lock:
                record.total, record.completed = target.total, target.completed
                record.failed, record.skipped = target.failed, target.skipped
                record.conflicts = target.conflicts
            # Pause only between two batches: not before the first, not after the last.
            between = 0 < target.examined < target.total
            if between and spec.interval_seconds > 0:
                self._stop.wait(spec.interval_seconds)
            if self._stop.is_set():
                raise JobCancelledError("the server is shutting down; rerun the job to finish")

        if spec.mode == "migrate":
            options = JobOptions(spec.batch_size, False, record.job_id, actor)
            return run_migration(crypto, [store], options, progress)
        reencrypt = ReencryptOptions(
            spec.batch_size, False, record.job_id, actor, mode=ReencryptMode(spec.mode)
        )
        return run_reencrypt(crypto, [store], reencrypt, progress)

    def _finish(self, record: JobRecord, report: JobReport) -> None:
        with self._lock:
            record.total, record.completed = report.total("total"), report.total("completed")
            record.skipped, record.conflicts = report.total("skipped"), report.total("conflicts")
            record.failed = report.failure_count
            record.failures = [
                {"id": f.id, "error_type": f.error_type} for f in report.failures[:_LISTED]
            ]
        if report.stopped_by is not None:
            self._end(record, "failed", f"stopped: {report.stopped_by}")
        elif report.failure_count:
            self._end(
                record,
                "failed",
                f"{report.failure_count} values failed and were left as they were "
                "(ids under 'failures'); fix them and rerun",
            )
        else:
            self._end(record, "completed", None)

    def _end(self, record: JobRecord, state: str, error: str | None) -> None:
        with self._lock:
            record.state, record.error, record.finished_at = state, error, _now()

    def _trim(self) -> None:
        while len(self._records) > _HISTORY:
            oldest = next((k for k, r in self._records.items() if r.state != "running"), None)
            if oldest is None:
                return
            del self._records[oldest]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
