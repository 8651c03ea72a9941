"""Background jobs under a real OpenBao rate-limit quota (``sys/quotas/rate-limit``).

The job is given no rate: it must find the one the quota allows, finish every row, and keep
its request rate within the quota plus the burst. Online calls still fail fast, and a
refused token still stops a job at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hvac
import pytest
import requests
import requests.adapters

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import AuthenticationError
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.rate import TokenBucket
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.providers.resilient import CircuitBreaker, ResilientProvider, RetryPolicy
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable
from tests.integration.test_migrate_faults import (
    MASTER_HEX,
    assert_all_migrated_once,
    cli,
    legacy_rows,
)
from tests.servers import TRANSIT_KEY, OpenBao, run_cli


class TimedSession(requests.Session):
    """A real session that records when each request was sent, its status and Retry-After."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, int, str | None]] = []
        adapter = _TimedAdapter(self)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def sent_within(self, seconds: float) -> int:
        """The most requests sent in any window of ``seconds``."""
        times = [t for t, _, _ in self.log]
        return max((sum(1 for t in times if s <= t < s + seconds) for s in times), default=0)


class _TimedAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, owner: TimedSession) -> None:
        super().__init__()
        self._owner = owner

    def send(self, request: requests.PreparedRequest, *a: Any, **k: Any) -> requests.Response:
        sent = time.monotonic()
        response = super().send(request, *a, **k)
        self._owner.log.append((sent, response.status_code, response.headers.get("Retry-After")))
        return response


def set_quota(server: OpenBao, *, rate: float, interval: str = "1s", headers: bool) -> None:
    root = server.client()
    root.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": headers})
    root.write_data(
        "sys/quotas/rate-limit/transit",
        data={"path": "transit/", "rate": rate, "interval": interval},
    )


def clear_quota(server: OpenBao) -> None:
    server.client().delete("sys/quotas/rate-limit/transit")


def job_kms(server: OpenBao, session: TimedSession) -> MeteredProvider:
    """The provider as ``job_provider`` builds it (one attempt below, paced), on ``session``."""
    client = hvac.Client(url=server.addr, token=server.root_token, session=session)
    inner = ResilientProvider(
        VaultTransitProvider(client, TRANSIT_KEY),
        retry=RetryPolicy(attempts=1),
        breaker=CircuitBreaker(),
    )
    return MeteredProvider(inner, TokenBucket(0))


def hybrid_env(server: OpenBao, tmp_path: Path, **extra: str) -> dict[str, str]:
    return server.env(
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        **extra,
    )


@pytest.fixture
def rows_3000(tmp_path: Path) -> UserTable:
    table = UserTable.create("sqlite", tmp_path, None)
    table.insert(legacy_rows(3000))
    return table


class TestMigrationUnderAQuota:
    def test_finds_the_rate_and_finishes_every_row(
        self, fresh_openbao: OpenBao, rows_3000: UserTable, tmp_path: Path
    ) -> None:
        set_quota(fresh_openbao, rate=3, headers=False)
        env = hybrid_env(fresh_openbao, tmp_path)
        session = TimedSession()
        store = open_store(rows_3000.url, Target(rows_3000.table, "ssn"))
        settings = Settings.from_env(env)
        with Crypto(settings, kms=job_kms(fresh_openbao, session), audit=MemoryAuditSink()) as c:
            report = run_migration(c, [store], MigrationOptions(batch_size=50))
        assert report.stop_error is None, report.stopped_by
        assert report.totals.completed == 3000
        assert report.state == "completed"
        assert report.throttled >= 1  # it met the quota, and went on
        # The quota allows 3 per second; the bucket's burst is at most 3 more at once.
        assert session.sent_within(5.0) <= 3 * 5 + 3
        print(
            f"3000 rows: {len(session.log)} requests, {report.throttled} throttled, "
            f"max {session.sent_within(5.0)} in 5 s, {report.to_dict()['duration_seconds']} s"
        )
        clear_quota(fresh_openbao)
        assert_all_migrated_once(rows_3000, 3000, env)

    def test_the_command_finishes_at_one_request_per_second(
        self, fresh_openbao: OpenBao, tmp_path: Path
    ) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(600))
        set_quota(fresh_openbao, rate=1, headers=False)
        env = hybrid_env(fresh_openbao, tmp_path)
        args = ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"]
        done = run_cli([*args, "--batch-size", "50", "--json"], env, timeout=300)
        assert done.returncode == 0, done.stderr.decode()
        summary = json.loads(done.stdout)
        assert summary["state"] == "completed"
        assert summary["completed"] == 600
        assert summary["throttled"] >= 1
        clear_quota(fresh_openbao)
        assert_all_migrated_once(table, 600, env)

    def test_retry_after_is_honoured(self, fresh_openbao: OpenBao, tmp_path: Path) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(200))
        # 4 requests per 4 s, and the quota says when to come back.
        set_quota(fresh_openbao, rate=4, interval="4s", headers=True)
        env = hybrid_env(fresh_openbao, tmp_path)
        session = TimedSession()
        store = open_store(table.url, Target(table.table, "ssn"))
        with Crypto(
            Settings.from_env(env), kms=job_kms(fresh_openbao, session), audit=MemoryAuditSink()
        ) as crypto:
            from heimdall_kms.jobs.migrate import MigrationJob

            job = MigrationJob(JobServices.of(crypto), MigrationOptions(batch_size=20))
            report = job.run([store])
        assert report.totals.completed == 200
        asked = [(t, float(after)) for t, status, after in session.log if status == 429 and after]
        assert asked, "the quota sent no Retry-After"
        assert job.patience.waited_for_retry_after >= 1
        for sent, wait in asked:
            later = [t for t, _, _ in session.log if t > sent]
            if later and wait >= 1:
                assert min(later) - sent >= wait - 0.5  # nothing sent before it was asked


class TestCallersUnderAQuota:
    def test_an_online_encrypt_fails_fast_with_the_typed_error(
        self, fresh_openbao: OpenBao, tmp_path: Path
    ) -> None:
        set_quota(fresh_openbao, rate=2, interval="1m", headers=True)  # one encrypt: 2 requests
        env = fresh_openbao.env(HMD_AUDIT_LOG=str(tmp_path / "audit.log"))
        first = run_cli(["encrypt", "--field", "ssn"], env, stdin="123-45-6789")
        assert first.returncode == 0, first.stderr.decode()
        started = time.monotonic()
        second = run_cli(["encrypt", "--field", "ssn"], env, stdin="123-45-6789")
        elapsed = time.monotonic() - started
        assert second.returncode == 75
        assert b"rate limited" in second.stderr
        assert len(second.stderr.decode().strip().splitlines()) == 1
        assert elapsed < 10  # Retry-After 59 s: more than the online budget, so at once

    def test_a_revoked_token_stops_a_job_at_once(
        self, fresh_openbao: OpenBao, tmp_path: Path
    ) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(100))
        before = table.values()
        root = fresh_openbao.client()
        token = root.auth.token.create(policies=["root"])["auth"]["client_token"]
        root.auth.token.revoke(token)
        env = hybrid_env(fresh_openbao, tmp_path, HMD_VAULT_TOKEN=token)
        args = ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"]
        started = time.monotonic()
        done = run_cli(args, env)
        assert time.monotonic() - started < 15
        assert done.returncode == AuthenticationError.exit_code, done.stderr.decode()
        assert b"Traceback" not in done.stderr
        assert table.values() == before  # nothing written


class TestSeveralWorkersUnderOneQuota:
    def test_four_postgres_workers_finish_and_migrate_each_row_once(
        self, fresh_openbao: OpenBao, postgres_url: str, tmp_path: Path
    ) -> None:
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        try:
            table.insert(legacy_rows(1200))
            set_quota(fresh_openbao, rate=3, headers=False)
            env = hybrid_env(fresh_openbao, tmp_path)
            args = ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"]
            workers = [cli([*args, "--batch-size", "50", "--json"], env) for _ in range(4)]
            results = [worker.communicate(timeout=300) for worker in workers]
            assert [w.returncode for w in workers] == [0] * 4, [e.decode() for _, e in results]
            summaries = [json.loads(out) for out, _ in results]
            assert all(s["state"] == "completed" for s in summaries)
            assert sum(s["completed"] for s in summaries) == 1200
            assert sum(1 for s in summaries if s["completed"]) >= 2  # the work was shared
            print("workers:", [(s["completed"], s["throttled"]) for s in summaries])
            clear_quota(fresh_openbao)
            assert_all_migrated_once(table, 1200, env)
        finally:
            table.drop()
