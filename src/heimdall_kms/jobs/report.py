"""What a data job did, per target and in total: the JSON summary and the progress feed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from heimdall_kms.errors import HeimdallKMSError

__all__ = ["JobReport", "JobState", "ProgressCallback", "RowFailure", "TargetReport"]

MAX_LISTED_FAILURES = 1000


@dataclass(frozen=True, slots=True)
class RowFailure:
    target: str
    id: str
    error_type: str
    message: str


class JobState(StrEnum):
    """How a run ended: every row examined and none failed, some failed, or it had to stop."""

    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class TargetReport:
    target: str
    total: int = 0  # candidate values counted when the target started
    examined: int = 0
    completed: int = 0
    skipped: int = 0
    conflicts: int = 0
    failed: int = 0
    batches: int = 0
    throttled: int = 0  # KMS answers "slow down" so far (the job's, across its targets)
    kms_rate: float = 0.0  # KMS requests per second the job is paced at; 0: not paced

    @classmethod
    def sum(cls, name: str, parts: Iterable[TargetReport]) -> TargetReport:
        """One report whose counts are those of ``parts`` added up."""
        whole = cls(name)
        for part in parts:
            whole.total += part.total
            whole.examined += part.examined
            whole.completed += part.completed
            whole.skipped += part.skipped
            whole.conflicts += part.conflicts
            whole.failed += part.failed
            whole.batches += part.batches
        return whole

    def restore(self, saved: TargetReport) -> None:
        """Put back the counts of ``saved`` (a batch rolled back, to be tried again)."""
        self.examined, self.completed, self.skipped = saved.examined, saved.completed, saved.skipped
        self.conflicts, self.failed, self.batches = saved.conflicts, saved.failed, saved.batches

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total": self.total,
            "examined": self.examined,
            "completed": self.completed,
            "skipped": self.skipped,
            "conflicts": self.conflicts,
            "failed": self.failed,
            "batches": self.batches,
            "throttled": self.throttled,
        }


ProgressCallback = Callable[[TargetReport], None]


@dataclass
class JobReport:
    job: str
    run_id: str
    dry_run: bool
    targets: list[TargetReport] = field(default_factory=list)
    failures: list[RowFailure] = field(default_factory=list)
    failure_count: int = 0
    kms_calls: int = 0
    throttled: int = 0
    stopped_by: str | None = None
    stop_error: HeimdallKMSError | None = field(default=None, repr=False)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def fail(self, failure: RowFailure) -> None:
        self.failure_count += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(failure)

    def truncate_failures(self, count: int) -> None:
        """Forget the failures recorded after the first ``count`` (a batch tried again)."""
        del self.failures[min(count, MAX_LISTED_FAILURES) :]
        self.failure_count = count

    @property
    def totals(self) -> TargetReport:
        """The counts of every target added up (``failed`` counts the rows of the targets;
        :attr:`failure_count` is the run's, listed or not)."""
        return TargetReport.sum("all targets", self.targets)

    @property
    def state(self) -> JobState:
        if self.stopped_by is not None:
            return JobState.STOPPED
        return JobState.FAILED if self.failure_count else JobState.COMPLETED

    @property
    def duration_seconds(self) -> float:
        return round((self.finished or time.monotonic()) - self.started, 3)

    @property
    def kms_calls_per_value(self) -> float | None:
        completed = self.totals.completed
        return round(self.kms_calls / completed, 4) if completed else None

    def to_dict(self) -> dict[str, Any]:
        duration = (self.finished or time.monotonic()) - self.started
        totals = self.totals
        completed = totals.completed
        return {
            "job": self.job,
            "run_id": self.run_id,
            "state": self.state.value,
            "dry_run": self.dry_run,
            "total": totals.total,
            "examined": totals.examined,
            "completed": completed,
            "skipped": totals.skipped,
            "conflicts": totals.conflicts,
            "failed": self.failure_count,
            "kms_calls": self.kms_calls,
            "throttled": self.throttled,
            "kms_calls_per_value": self.kms_calls_per_value,
            "duration_seconds": round(duration, 3),
            "values_per_second": round(completed / duration, 1) if duration > 0 else None,
            "stopped_by": self.stopped_by,
            "targets": [target.to_dict() for target in self.targets],
            "failures": [
                {"target": f.target, "id": f.id, "error_type": f.error_type, "message": f.message}
                for f in self.failures
            ],
        }
