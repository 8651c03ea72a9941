"""Background jobs under faults: rows locked by the application, a KMS that goes away or
answers one byte at a time. Every row is checked afterwards."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psycopg

from tests.integration.dbtables import UserTable
from tests.integration.test_migrate_faults import (
    assert_all_migrated_once,
    cli,
    legacy_rows,
    local_env,
)


def hold_row_lock(url: str, table: str, row_id: int, seconds: float) -> threading.Event:
    """An application transaction that locks one row (SELECT ... FOR UPDATE) for a while;
    the returned event is set once the lock is held."""
    held = threading.Event()

    def run() -> None:
        with psycopg.connect(url) as db:
            db.execute(f"SELECT ssn FROM {table} WHERE id = %s FOR UPDATE", [row_id])
            held.set()
            time.sleep(seconds)
            db.commit()

    threading.Thread(target=run, daemon=True).start()
    assert held.wait(10)
    return held


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
        hold_row_lock(postgres_url, table.table, 250, seconds=15)
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
        time.sleep(13)  # the application lets go; the rerun finishes
        rerun = cli([*migrate_args(table), "--json"], env)
        out, err = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, err.decode()
        assert json.loads(out)["completed"] == 1
        assert_all_migrated_once(table, 500, env)
