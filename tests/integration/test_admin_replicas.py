"""Issue 23 item 4 (SPEC §7): job records live in the service's database, so several
``serve`` replicas report the same jobs, one runs each job, and a job whose replica died
(SIGKILL) or stopped (SIGTERM) is resumed by another replica, or by the same one restarted.

Real ``heimdall-kms serve`` processes on free ports, over one SQLite file or one PostgreSQL
schema; a migrate job paced between batches, so that it is mid-job when its replica dies.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.providers.local import LocalKeyring
from tests.integration.test_admin_api import write_tokens
from tests.legacy_data import legacy_envelope
from tests.servers import free_port, stop_process

MASTER_HEX = "cd" * 32
ROWS = 1200
LEASE = 2.0


@dataclass
class Database:
    """The service's database: one SQLite file or one PostgreSQL schema of its own."""

    url: str
    query: Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "app.db"

        def on_sqlite(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as db:
                return db.execute(sql).fetchall()

        on_sqlite("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        yield Database(f"sqlite:///{path}", on_sqlite)
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = f"hmd_replicas_{uuid.uuid4().hex[:10]}"
    url = f"{base}?options=-csearch_path%3D{schema}"

    def on_postgres(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as db:
            cursor = db.execute(sql.replace("?", "%s"))
            return list(cursor.fetchall()) if cursor.description else []

    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {schema}")
    on_postgres("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    yield Database(url, on_postgres)
    with psycopg.connect(base, autocommit=True) as db:
        db.execute(f"DROP SCHEMA {schema} CASCADE")


def fill(database: Database) -> None:
    values = ", ".join(
        f"({i}, '{legacy_envelope(MASTER_HEX, f'ssn-{i}')}')" for i in range(1, ROWS + 1)
    )
    database.query(f"INSERT INTO t VALUES {values}")


@dataclass
class Replica:
    url: str
    process: subprocess.Popen[bytes]
    audit: Path
    stderr: Path

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=10, **kwargs)


class Fleet:
    """Replicas of one service (same settings, tokens and database), started one by one."""

    def __init__(self, tmp_path: Path, database: Database) -> None:
        self.tmp_path = tmp_path
        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        self.env = {
            "HMD_ENCRYPTION_MODE": "hybrid",
            "HMD_PII_MASTER_KEY": MASTER_HEX,
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
            "HMD_DATABASE_URL": database.url,
            "HMD_ADMIN_JOB_LEASE_SECONDS": str(LEASE),
        }
        self.tokens_file = tmp_path / "tokens.txt"
        self.tokens = write_tokens(self.tokens_file)
        self.replicas: list[Replica] = []

    def start(self) -> Replica:
        n = len(self.replicas)
        port = free_port()
        audit, stderr = self.tmp_path / f"audit-{n}.log", self.tmp_path / f"serve-{n}.stderr"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "OTEL_"))},
            **self.env,
            "HMD_AUDIT_LOG": str(audit),
            "HMD_ADMIN_TOKENS_FILE": str(self.tokens_file),
        }
        with stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "heimdall_kms", "serve", "--port", str(port)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        replica = Replica(f"http://127.0.0.1:{port}", process, audit, stderr)
        self.replicas.append(replica)
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, stderr.read_text()
            try:
                if httpx.get(f"{replica.url}/metrics", timeout=2).status_code == 200:
                    return replica
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)

    def status(self, replica: Replica, job: str | None = None) -> dict[str, Any]:
        query = f"?job={job}" if job else ""
        answer = replica.call("GET", f"/admin/crypto/reencrypt/status{query}", self.tokens["audit"])
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def start_job(self, replica: Replica) -> str:
        body = {"table": "t", "column": "v", "batch_size": 40, "interval_seconds": 0.15}
        started = replica.call("POST", "/admin/crypto/reencrypt", self.tokens["admin"], json=body)
        assert started.status_code == 202, started.text
        assert set(started.json()) == {"job_id"}
        return str(started.json()["job_id"])

    def wait(
        self, replica: Replica, job: str, until: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(replica, job)
            if until(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"job {job} on {replica.url}: {self.status(replica, job)}")

    def stop_all(self) -> None:
        for replica in self.replicas:
            stop_process(replica.process)


@pytest.fixture
def fleet(tmp_path: Path, database: Database) -> Iterator[Fleet]:
    fill(database)
    running = Fleet(tmp_path, database)
    yield running
    running.stop_all()


def assert_migrated_once(fleet: Fleet, database: Database, job: str) -> None:
    """Every row holds its own value under the KMS, and the journal of the run names each
    row exactly once (no row was migrated twice by two replicas)."""
    values = dict(database.query("SELECT id, v FROM t ORDER BY id"))
    with heimdall_kms.from_env(fleet.env, audit=MemoryAuditSink()) as crypto:
        for i in (1, ROWS // 2, ROWS):
            assert crypto.decrypt(values[i], actor="t", reason="verify") == f"ssn-{i}"
    assert all('"kms_v1"' in v for v in values.values())
    journal = database.query(
        f"SELECT row_key, count(*) FROM heimdall_kms_journal WHERE run_id = '{job}' "
        "GROUP BY row_key"
    )
    assert len(journal) == ROWS and {count for _, count in journal} == {1}


def batches_of(replica: Replica, job: str) -> int:
    lines = replica.audit.read_text().splitlines() if replica.audit.exists() else []
    return sum(1 for line in lines if '"reencrypt.batch"' in line and job in line)


class TestReplicasShareJobs:
    def test_a_job_of_a_killed_replica_is_taken_over_and_finished_once(
        self, fleet: Fleet, database: Database
    ) -> None:
        a, b = fleet.start(), fleet.start()
        idle = fleet.status(b)
        assert {k: idle[k] for k in ("state", "total", "completed", "failed", "skipped")} == {
            "state": "idle",
            "total": 0,
            "completed": 0,
            "failed": 0,
            "skipped": 0,
        }
        job = fleet.start_job(a)
        # B reports A's job, the latest one and by its id, while A runs it.
        seen = fleet.wait(b, job, lambda s: s["completed"] >= 200, timeout=30)
        assert seen["state"] == "running" and seen["total"] == ROWS
        assert fleet.status(b)["job_id"] == job
        assert batches_of(b, job) == 0  # only A runs it
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        killed_at = time.monotonic()
        done = fleet.wait(b, job, lambda s: s["state"] != "running", timeout=90)
        assert done.get("error") is None, done
        assert time.monotonic() - killed_at >= LEASE * 0.9  # not before the lease ran out
        assert {k: done[k] for k in ("state", "total", "failed")} == {
            "state": "completed",
            "total": ROWS,
            "failed": 0,
        }
        # A batch A committed after its last recorded progress counts as skipped on B's rerun
        # (docs/admin-api.md): at most one batch of 40, and every row is still migrated once.
        assert done["completed"] + done["skipped"] == ROWS and done["skipped"] <= 40, done
        assert batches_of(b, job) > 0  # B ran the rest
        assert_migrated_once(fleet, database, job)
        # A replica started later reports the same record.
        c = fleet.start()
        assert fleet.status(c, job) == done and fleet.status(c) == done

    def test_a_second_job_on_the_same_column_is_refused_by_the_other_replica(
        self, fleet: Fleet
    ) -> None:
        a, b = fleet.start(), fleet.start()
        job = fleet.start_job(a)
        body = {"table": "t", "column": "v"}
        refused = b.call("POST", "/admin/crypto/reencrypt", fleet.tokens["admin"], json=body)
        assert refused.status_code == 409 and job in refused.text
        assert fleet.wait(a, job, lambda s: s["state"] != "running", timeout=90)["state"] == (
            "completed"
        )

    def test_a_restarted_replica_reports_and_resumes_its_job(
        self, fleet: Fleet, database: Database
    ) -> None:
        first = fleet.start()
        job = fleet.start_job(first)
        fleet.wait(first, job, lambda s: s["completed"] >= 200, timeout=30)
        stop_process(first.process)  # SIGTERM: stops between two batches, releases the job
        assert "Application shutdown complete" in first.stderr.read_text()
        left = database.query(f"SELECT completed, owner FROM heimdall_kms_jobs WHERE id = '{job}'")
        assert left[0][1] is None and 0 < left[0][0] < ROWS
        again = fleet.start()
        done = fleet.wait(again, job, lambda s: s["state"] != "running", timeout=90)
        assert done["state"] == "completed" and done["completed"] == ROWS, done
        assert batches_of(again, job) > 0
        assert_migrated_once(fleet, database, job)
