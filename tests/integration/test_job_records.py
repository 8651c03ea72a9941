"""The job records table (``heimdall_kms_jobs``) on SQLite and PostgreSQL: one claimant wins
an orphaned job, a replica that lost its lease can no longer write, counts survive a takeover."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from heimdall_kms.errors import RefusedError
from heimdall_kms.store.job_records import JobCounts, JobRow, JobTable

LEASE = 5.0


@pytest.fixture(params=["sqlite", "postgres"])
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobTable]:
    if request.param == "sqlite":
        path = tmp_path / "app.db"
        sqlite3.connect(path).close()
        yield JobTable(f"sqlite:///{path}")
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = f"hmd_jobs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    yield JobTable(f"{base}?options=-csearch_path%3D{schema}")
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


def job(owner: str, job_id: str = "run-1") -> JobRow:
    params = {"table": "t", "column": "v", "mode": "migrate"}
    zero = JobCounts(0, 0, 0, 0, 0)
    return JobRow(
        job_id,
        "migrate",
        "t.v",
        params,
        "running",
        zero,
        owner,
        "2026-12-01T10:00:00.000001Z",
        None,
        None,
        [],
    )


class TestJobTable:
    def test_one_running_job_per_column_across_replicas(self, table: JobTable) -> None:
        table.create(job("a"), "t.v", now=100.0)
        with pytest.raises(RefusedError, match="run-1"):
            table.create(job("b", "run-2"), "t.v", now=100.0)
        assert table.get(None) is not None and table.get("run-2") is None

    def test_a_live_owner_keeps_its_job_and_exactly_one_claimant_takes_an_orphan(
        self, table: JobTable
    ) -> None:
        table.create(job("a"), "t.v", now=100.0)
        assert table.orphans(100.0 + LEASE - 1, LEASE) == []
        assert not table.claim("run-1", "b", 100.0 + LEASE - 1, LEASE)  # lease not over
        later = 100.0 + LEASE + 1
        assert table.orphans(later, LEASE) == ["run-1"]
        wins: list[str] = []
        barrier = threading.Barrier(4)

        def claim(owner: str) -> None:
            barrier.wait()
            if table.claim("run-1", owner, later, LEASE):
                wins.append(owner)

        threads = [threading.Thread(target=claim, args=(f"r{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1
        row = table.get("run-1")
        assert row is not None and row.owner == wins[0]
        # The old owner lost its lease: its heartbeats, progress and end are refused.
        counts = JobCounts(10, 5, 0, 0, 0)
        assert not table.heartbeat("run-1", "a", later)
        assert not table.progress("run-1", "a", counts, later)
        assert not table.finish("run-1", "a", ("completed", None, "x"), counts, [])
        assert table.progress("run-1", wins[0], counts, later)
        assert table.finish(
            "run-1", wins[0], ("completed", None, "2026-12-01T10:01:00Z"), counts, []
        )
        done = table.get(None)
        assert done is not None and (done.state, done.counts, done.owner) == (
            "completed",
            counts,
            None,
        )

    def test_a_released_job_is_an_orphan_at_once(self, table: JobTable) -> None:
        table.create(job("a"), "t.v", now=100.0)
        assert table.release("run-1", "a")
        assert table.orphans(100.0, LEASE) == ["run-1"]
        assert table.claim("run-1", "b", 100.0, LEASE)


class TestResumedCounts:
    def test_the_values_done_before_the_takeover_move_from_skipped_to_completed(self) -> None:
        before = JobCounts(total=1200, completed=400, failed=0, skipped=2, conflicts=0)
        run = JobCounts(total=800, completed=800, failed=0, skipped=402, conflicts=1)
        assert before.resumed(run) == JobCounts(1200, 1200, 0, 2, 1)
