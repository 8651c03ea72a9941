"""What an admin job is (:class:`JobSpec`), how its record is stored (its parameters) and how
it is shown (the status JSON of SPEC §7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from heimdall_kms.store import Target
from heimdall_kms.store.job_records import JobRow

__all__ = ["IDLE", "JobSpec", "now", "params_of", "to_dict"]


@dataclass(frozen=True, slots=True)
class JobSpec:
    database: str
    target: Target
    mode: str  # migrate | rewrap | full
    batch_size: int
    interval_seconds: float


IDLE: dict[str, Any] = {"state": "idle", "total": 0, "completed": 0, "failed": 0, "skipped": 0}


def to_dict(row: JobRow) -> dict[str, Any]:
    """The status JSON of SPEC §7 (and the details beyond it) for one record."""
    c = row.counts
    return {
        "state": row.state,
        "total": c.total,
        "completed": c.completed,
        "failed": c.failed,
        "skipped": c.skipped,
        "conflicts": c.conflicts,
        "job_id": row.job_id,
        "mode": row.mode,
        "target": row.target,
        "started_at": _seconds(row.created_at),
        "finished_at": _seconds(row.finished_at) if row.finished_at else None,
        "error": row.error,
        "failures": list(row.failures),
    }


def params_of(spec: JobSpec, actor: str) -> dict[str, Any]:
    t = spec.target
    return {
        "table": t.table,
        "column": t.column,
        "id_column": t.id_column,
        "json_path": t.json_path,
        "mode": spec.mode,
        "batch_size": spec.batch_size,
        "interval_seconds": spec.interval_seconds,
        "actor": actor,
    }


def _seconds(stamp: str) -> str:
    return stamp[:19] + "Z"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
