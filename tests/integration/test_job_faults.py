"""Background jobs under faults: rows locked by the application, a KMS that goes away or
answers one byte at a time. Every row is checked afterwards."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.fault_proxy import FaultProxy, Mode
from tests.integration.dbtables import UserTable
from tests.integration.raft_openbao import start_raft_openbao
from tests.integration.test_migrate_faults import (
    MASTER_HEX,
    assert_all_migrated_once,
    cli,
    legacy_rows,
    local_env,
)
from tests.servers import OpenBao


def hold_row_lock(url: str, table: str, row_id: int, seconds: float) -> Callable[[], None]:
    """An application transaction that locks one row (SELECT ... FOR UPDATE) for ``seconds``,
    held once this returns; the returned function lets go of it earlier (and waits until the
    transaction has committed)."""
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with psycopg.connect(url) as db:
            db.execute(f"SELECT ssn FROM {table} WHERE id = %s FOR UPDATE", [row_id])
            held.set()
            release.wait(seconds)
            db.commit()

    holder = threading.Thread(target=run, daemon=True)
    holder.start()
    assert held.wait(10)

    def let_go() -> None:
        release.set()
        holder.join()

    return let_go


def migrate_args(table: UserTable) -> list[str]:
    return ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"]


class TestRowsLockedByTheApplication:
    def test_the_job_comes_back_for_a_locked_row(self, postgres_url: str, tmp_path: Path) -> None:
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        table.insert(legacy_rows(2000))
        env = local_env(tmp_path)
        hold_row_lock(postgres_url, table.table, 1000, seconds=4)
        run = cli([*migrate_args(table), "--batch-size", "100", "--json"], env)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
        summary = json.loads(out)
        assert summary["state"] == "completed"
        assert (summary["examined"], summary["completed"]) == (2000, 2000)
        assert_all_migrated_once(table, 2000, env)

    def test_a_lock_held_past_the_stall_time_is_not_completed(
        self, postgres_url: str, tmp_path: Path
    ) -> None:
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        table.insert(legacy_rows(500))
        env = {**local_env(tmp_path), "HMD_JOB_STALL_SECONDS": "3"}
        let_go = hold_row_lock(postgres_url, table.table, 250, seconds=60)
        run = cli([*migrate_args(table), "--batch-size", "100", "--json"], env)
        out, err = run.communicate(timeout=120)
        assert run.returncode == 3, err.decode()
        summary = json.loads(out)
        assert summary["state"] == "stopped"
        assert summary["examined"] == 499
        lines = [
            line for line in err.decode().splitlines() if line.startswith("heimdall-kms: error")
        ]
        assert len(lines) == 1
        assert "1 rows of" in lines[0] and "locked by another transaction" in lines[0]
        let_go()  # the application lets go (held through the whole run); the rerun finishes
        rerun = cli([*migrate_args(table), "--json"], env)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        assert json.loads(out)["completed"] == 1
        assert_all_migrated_once(table, 500, env)


@pytest.fixture
def proxy(fresh_openbao: OpenBao) -> Iterator[FaultProxy]:
    port = int(fresh_openbao.addr.rsplit(":", 1)[1])
    faults = FaultProxy(port, trickle_seconds=2.0)
    yield faults
    faults.close()


def vault_env(server: OpenBao, proxy: FaultProxy, tmp_path: Path, **extra: str) -> dict[str, str]:
    return server.env(
        HMD_VAULT_ADDR=proxy.addr,
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        **extra,
    )


class TestAKMSThatTrickles:
    def test_a_trickling_answer_is_cut_at_the_deadline_and_no_row_stays_locked(
        self, fresh_openbao: OpenBao, proxy: FaultProxy, postgres_url: str, tmp_path: Path
    ) -> None:
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        table.insert(legacy_rows(200))
        env = vault_env(
            fresh_openbao, proxy, tmp_path, HMD_VAULT_TIMEOUT="3", HMD_JOB_STALL_SECONDS="12"
        )
        proxy.mode = Mode.TRICKLE  # one byte every 2 s: no single read ever times out
        started = time.monotonic()
        run = cli([*migrate_args(table), "--batch-size", "50"], env)
        time.sleep(2)  # the first batch is locked and waiting on Vault
        before = time.monotonic()
        with psycopg.connect(postgres_url, autocommit=True) as app:
            # Waits while the batch holds the row: at most one deadline, never for ever.
            app.execute("SET lock_timeout = '8s'")
            app.execute(f"UPDATE {table.table} SET ssn = 'changed by the application' WHERE id = 1")
        assert time.monotonic() - before < 3 + 2
        out, err = run.communicate(timeout=120)
        assert run.returncode == 69, err.decode()
        assert 12 <= time.monotonic() - started < 60
        assert b"no complete answer within 3s" in err
        assert b"rerun to finish" in out
        proxy.mode = Mode.PASS
        rerun = cli([*migrate_args(table), "--json"], env)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        assert json.loads(out)["completed"] == 199
        assert table.values()[1] == "changed by the application"


class TestAKMSThatGoesAway:
    def test_a_job_rides_out_a_restart(
        self, fresh_openbao: OpenBao, proxy: FaultProxy, tmp_path: Path
    ) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(600))
        env = vault_env(fresh_openbao, proxy, tmp_path)
        run = cli([*migrate_args(table), "--batch-size", "20", "--rate-limit", "4", "--json"], env)
        wait_for_journal(table, 100)
        proxy.down()  # connections refused, open ones cut, for longer than the retry budget
        time.sleep(8)
        proxy.up()
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err.decode()
        assert json.loads(out)["completed"] == 600
        assert_all_migrated_once(table, 600, env)

    def test_a_job_rides_out_a_seal(self, fresh_openbao: OpenBao, tmp_path: Path) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(600))
        env = fresh_openbao.env(
            HMD_ENCRYPTION_MODE="hybrid",
            HMD_PII_MASTER_KEY=MASTER_HEX,
            HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        )
        run = cli([*migrate_args(table), "--batch-size", "20", "--rate-limit", "4", "--json"], env)
        wait_for_journal(table, 100)
        fresh_openbao.client().sys.seal()
        time.sleep(8)
        fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err.decode()
        assert json.loads(out)["completed"] == 600
        assert_all_migrated_once(table, 600, env)


class TestAKMSKilledAndRestarted:
    """OpenBao on raft storage, SIGKILLed mid-migration and started again (sealed, then
    unsealed with its key): the job rides it out and every row is migrated once."""

    def test_a_job_rides_out_a_killed_and_restarted_openbao(self, tmp_path: Path) -> None:
        server = start_raft_openbao(tmp_path / "bao")
        try:
            table = UserTable.create("sqlite", tmp_path, None)
            table.insert(legacy_rows(2000))
            env = server.env(
                HMD_ENCRYPTION_MODE="hybrid",
                HMD_PII_MASTER_KEY=MASTER_HEX,
                HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
                HMD_JOB_STALL_SECONDS="120",  # the restart and unseal take well under this
            )
            run = cli(
                [*migrate_args(table), "--batch-size", "20", "--rate-limit", "8", "--json"], env
            )
            wait_for_journal(table, 300)
            server.kill()
            assert run.poll() is None  # killed mid-run
            time.sleep(3)
            server.start()  # sealed until unsealed: the job waits through both
            out, err = run.communicate(timeout=240)
            assert run.returncode == 0, err.decode()
            assert json.loads(out)["completed"] == 2000
            assert_all_migrated_once(table, 2000, env)
        finally:
            server.stop()


def wait_for_journal(table: UserTable, rows: int) -> None:
    deadline = time.monotonic() + 60
    while len(table.journal()) < rows:
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.1)


class TestADatabaseThatGoesAway:
    def test_a_lost_connection_is_reported_with_its_cause(
        self, postgres_url: str, tmp_path: Path
    ) -> None:
        table = UserTable.create("postgres-text", tmp_path, postgres_url)
        table.insert(legacy_rows(400))
        env = local_env(tmp_path)
        # Slow on purpose: each batch waits for its token with its rows locked.
        run = cli([*migrate_args(table), "--batch-size", "10", "--rate-limit", "2"], env)
        wait_for_journal(table, 20)
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query LIKE %s",
                [f"%{table.table}%"],
            ).fetchall()
        assert killed
        _, err = run.communicate(timeout=120)
        assert run.returncode == 73, err.decode()
        lines = [
            line for line in err.decode().splitlines() if line.startswith("heimdall-kms: error")
        ]
        assert len(lines) == 1
        assert "roll back" not in lines[0]  # the cause, not the failed rollback after it
        assert "terminat" in lines[0] or "closed" in lines[0] or "lost" in lines[0]
        rerun = cli([*migrate_args(table), "--json"], env)
        _, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        assert_all_migrated_once(table, 400, env)
