"""The admin API's job records, in the service's own database (SQLite or PostgreSQL).

Every ``serve`` replica on one database reads and writes the same ``heimdall_kms_jobs`` table
(created if absent, like the journal), so any replica reports any job. A job is run by the one
replica named in ``owner``, which renews ``heartbeat_at`` while it runs; a running job whose
owner is gone (no owner, or a heartbeat older than the lease) is claimed by one atomic
``UPDATE ... WHERE owner IS NULL OR heartbeat_at < ?``, so exactly one replica takes it over.
Heartbeats use the replicas' clocks: the lease must be longer than their skew.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from heimdall_kms.errors import RefusedError, StoreError
from heimdall_kms.store.sqlite import sqlite_path

__all__ = ["JOBS_TABLE", "JobCounts", "JobRow", "JobTable"]

JOBS_TABLE = "heimdall_kms_jobs"
_DDL = (
    f"CREATE TABLE IF NOT EXISTS {JOBS_TABLE} ("
    "id TEXT PRIMARY KEY, mode TEXT NOT NULL, target TEXT NOT NULL, "
    "conflict_key TEXT NOT NULL, params TEXT NOT NULL, state TEXT NOT NULL, "
    "total BIGINT NOT NULL DEFAULT 0, completed BIGINT NOT NULL DEFAULT 0, "
    "failed BIGINT NOT NULL DEFAULT 0, skipped BIGINT NOT NULL DEFAULT 0, "
    "conflicts BIGINT NOT NULL DEFAULT 0, "
    "owner TEXT, heartbeat_at DOUBLE PRECISION, created_at TEXT NOT NULL, "
    "updated_at TEXT NOT NULL, finished_at TEXT, error TEXT, failures TEXT NOT NULL)"
)
_SELECT = (
    "SELECT id, mode, target, params, state, total, completed, failed, skipped, conflicts, "
    "owner, created_at, finished_at, error, failures FROM heimdall_kms_jobs"
)


@dataclass(frozen=True, slots=True)
class JobCounts:
    """The counts of a job, over all its runs (see :meth:`resumed`)."""

    total: int
    completed: int
    failed: int
    skipped: int
    conflicts: int

    def resumed(self, run: JobCounts) -> JobCounts:
        """These counts (of the runs before a takeover) plus those of the resumed ``run``.

        The resumed run finds the values already done as not to do (skipped), so they move
        from its skipped to completed; the total stays the one counted when the job started,
        unless more was done since. Values done after the last recorded batch of a dead
        replica (at most one batch) are counted as skipped.
        """
        completed = self.completed + run.completed
        return JobCounts(
            max(self.total, completed + run.failed),
            completed,
            run.failed,
            max(0, run.skipped - self.completed),
            run.conflicts,
        )


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    mode: str
    target: str
    params: dict[str, Any]
    state: str
    counts: JobCounts
    owner: str | None
    created_at: str
    finished_at: str | None
    error: str | None
    failures: list[dict[str, str]]


class JobTable:
    """One connection per call (a replica's few status reads and heartbeats a second)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._postgres = url.startswith(("postgresql://", "postgres://"))
        self._ready = False

    def exists(self) -> bool:
        """False when the SQLite file is missing (no job can have run there); else True."""
        return self._postgres or sqlite_path(self.url).is_file()

    def create(self, row: JobRow, conflict_key: str, now: float) -> None:
        """Insert a running job owned by ``row.owner``, unless one runs on the same column.

        Raises:
            RefusedError: a job on that column is running (on any replica). StoreError.
        """
        with self._cursor(exclusive=True) as cur:
            cur.execute(
                self._sql(
                    "SELECT id, mode, target FROM heimdall_kms_jobs "
                    "WHERE conflict_key = ? AND state = 'running'"
                ),
                [conflict_key],
            )
            other = cur.fetchone()
            if other is not None:
                raise RefusedError(f"job {other[0]} ({other[1]}) is already running on {other[2]}")
            cur.execute(
                self._sql(
                    "INSERT INTO heimdall_kms_jobs (id, mode, target, conflict_key, params, state, "
                    "owner, heartbeat_at, created_at, updated_at, failures) "
                    "VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?, '[]')"
                ),
                [
                    row.job_id,
                    row.mode,
                    row.target,
                    conflict_key,
                    json.dumps(row.params),
                    row.owner,
                    now,
                    row.created_at,
                    row.created_at,
                ],
            )

    def delete(self, job_id: str) -> None:
        with self._cursor() as cur:
            cur.execute(self._sql("DELETE FROM heimdall_kms_jobs WHERE id = ?"), [job_id])

    def get(self, job_id: str | None) -> JobRow | None:
        """The job ``job_id``, or the latest one when None; None when there is none."""
        with self._cursor(read=True) as cur:
            if job_id is None:
                cur.execute(_SELECT + " ORDER BY created_at DESC, id DESC LIMIT 1")
            else:
                query = _SELECT + " WHERE id = ?"
                cur.execute(self._sql(query), [job_id])
            found = cur.fetchone()
        return _row(found) if found is not None else None

    def orphans(self, now: float, lease: float) -> list[str]:
        """Running jobs nobody owns, or whose owner's heartbeat is older than ``lease``."""
        with self._cursor(read=True) as cur:
            cur.execute(
                self._sql(
                    "SELECT id FROM heimdall_kms_jobs WHERE state = 'running' AND "
                    "(owner IS NULL OR heartbeat_at IS NULL OR heartbeat_at < ?) "
                    "ORDER BY created_at"
                ),
                [now - lease],
            )
            return [str(r[0]) for r in cur.fetchall()]

    def claim(self, job_id: str, owner: str, now: float, lease: float) -> bool:
        """Take over an orphaned running job; True for exactly one claimant."""
        return self._update(
            "owner = ?, heartbeat_at = ? WHERE id = ? AND "
            "state = 'running' AND (owner IS NULL OR heartbeat_at IS NULL OR heartbeat_at < ?)",
            [owner, now, job_id, now - lease],
        )

    def heartbeat(self, job_id: str, owner: str, now: float) -> bool:
        """Renew the lease; False when this replica no longer owns the job."""
        return self._update(
            "heartbeat_at = ? WHERE id = ? AND owner = ? AND state = 'running'",
            [now, job_id, owner],
        )

    def progress(self, job_id: str, owner: str, counts: JobCounts, now: float) -> bool:
        return self._update(
            "total = ?, completed = ?, failed = ?, "
            "skipped = ?, conflicts = ?, heartbeat_at = ? WHERE id = ? AND owner = ? "
            "AND state = 'running'",
            [
                counts.total,
                counts.completed,
                counts.failed,
                counts.skipped,
                counts.conflicts,
                now,
                job_id,
                owner,
            ],
        )

    def finish(
        self,
        job_id: str,
        owner: str,
        end: tuple[str, str | None, str],
        counts: JobCounts | None,
        failures: list[dict[str, str]],
    ) -> bool:
        """Record the end (state, error, finished_at) and, given, the final counts."""
        state, error, finished_at = end
        sets, params = "", []
        if counts is not None:
            sets = "total = ?, completed = ?, failed = ?, skipped = ?, conflicts = ?, "
            params = [
                counts.total,
                counts.completed,
                counts.failed,
                counts.skipped,
                counts.conflicts,
            ]
        return self._update(
            f"{sets}state = ?, error = ?, finished_at = ?, failures = ?, owner = NULL "
            "WHERE id = ? AND owner = ?",
            [*params, state, error, finished_at, json.dumps(failures), job_id, owner],
        )

    def release(self, job_id: str, owner: str) -> bool:
        """Give a running job up (the server stops): the next replica to look resumes it."""
        return self._update(
            "owner = NULL, heartbeat_at = NULL WHERE id = ? AND owner = ? AND state = 'running'",
            [job_id, owner],
        )

    def _update(self, clause: str, params: list[Any]) -> bool:
        with self._cursor() as cur:
            cur.execute(self._sql(f"UPDATE {JOBS_TABLE} SET {clause}"), params)  # noqa: S608
            return bool(cur.rowcount == 1)

    def _sql(self, query: str) -> str:
        return query.replace("?", "%s") if self._postgres else query

    @contextmanager
    def _cursor(self, *, exclusive: bool = False, read: bool = False) -> Iterator[Any]:
        """A transaction; SQLite takes its write lock up front unless ``read``."""
        errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
        if self._postgres:
            import psycopg  # noqa: PLC0415 - the postgres extra, only with a PostgreSQL URL.

            errors = (psycopg.Error,)
        connection = self._connect()
        try:
            cur = connection.cursor()
            try:
                self._begin(cur, exclusive=exclusive, read=read)
                yield cur
                cur.execute("COMMIT")
                self._ready = True
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except errors as exc:
            raise StoreError(
                f"job records ({JOBS_TABLE}): {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        finally:
            connection.close()

    def _begin(self, cur: Any, *, exclusive: bool, read: bool) -> None:
        cur.execute("BEGIN" if self._postgres or read else "BEGIN IMMEDIATE")
        if self._postgres and (exclusive or not self._ready):
            # One creation (of the table, of a job) at a time across replicas.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [JOBS_TABLE])
        if not self._ready:
            cur.execute(_DDL)

    def _connect(self) -> Any:
        if self._postgres:
            try:
                import psycopg  # noqa: PLC0415

                return psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise StoreError(
                    f"job records: cannot connect to PostgreSQL: {_first_line(exc)}"
                ) from None
        path = sqlite_path(self.url)
        if not path.is_file():
            raise StoreError(f"job records: no SQLite database at {path}")
        try:
            return sqlite3.connect(
                f"file:{path}?mode=rw", uri=True, isolation_level=None, timeout=30
            )
        except sqlite3.Error as exc:
            raise StoreError(f"job records: cannot open SQLite database {path}: {exc}") from None


def _row(found: Any) -> JobRow:
    (
        job_id,
        mode,
        target,
        params,
        state,
        total,
        completed,
        failed,
        skipped,
        conflicts,
        owner,
        created_at,
        finished_at,
        error,
        failures,
    ) = found
    return JobRow(
        str(job_id),
        str(mode),
        str(target),
        json.loads(params),
        str(state),
        JobCounts(int(total), int(completed), int(failed), int(skipped), int(conflicts)),
        owner,
        str(created_at),
        finished_at,
        error,
        json.loads(failures),
    )


def wall_clock() -> float:
    return time.time()


def _first_line(exc: BaseException) -> str:
    """The first line of an error's text: drivers add context lines (SQL, hints) after it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
