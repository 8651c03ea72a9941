"""Every command in docs/runbooks/ runs, in order, against OpenBao and a SQLite table, so the
runbooks cannot rot: a renamed flag or a changed exit code fails this test."""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from tests.legacy_data import legacy_envelope
from tests.servers import OpenBao

pytestmark = pytest.mark.vault

RUNBOOKS = Path(__file__).resolve().parents[2] / "docs" / "runbooks"
EXE = str(Path(sys.executable).with_name("heimdall-kms"))
MASTER = "ab" * 32


def commands(runbook: str) -> list[str]:
    text = (RUNBOOKS / runbook).read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [
        line.strip()
        for block in blocks
        for line in block.splitlines()
        if line.strip().startswith("heimdall-kms ")
    ]


def run_all(lines: list[str], env: dict[str, str], values: dict[str, str]) -> list[str]:
    outputs = []
    for written in lines:
        line = written
        for name, value in values.items():
            line = line.replace(f'"${name}"', shlex.quote(value)).replace(f"${name}", value)
        args = shlex.split(line, comments=True)[1:]
        result = subprocess.run(
            [EXE, *args], env=env, capture_output=True, timeout=300, check=False
        )
        assert result.returncode == 0, f"{line}\n{result.stderr.decode()}"
        outputs.append(result.stdout.decode())
        if args[:2] == ["journal", "list"]:
            values["RUN_ID"] = _run_id(env)
    return outputs


def _run_id(env: dict[str, str]) -> str:
    out = subprocess.run(
        [EXE, "journal", "list", "--table", "customers", "--column", "ssn", "--json"],
        env=env,
        capture_output=True,
        check=True,
    )
    runs = json.loads(out.stdout)["customers.ssn"]
    # No run journaled (a full re-encryption keeps none): a purge of run "" deletes nothing.
    return str(runs[0]["run_id"]) if runs else ""


def environment(server: OpenBao, tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    return {
        **base,
        **server.env(
            HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}",
            HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
            **extra,
        ),
    }


def kms_table(env: dict[str, str], tmp_path: Path, rows: int = 50) -> None:
    with (
        heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto,
        sqlite3.connect(tmp_path / "app.db") as db,
    ):
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
        sealed = crypto.encrypt_many(
            [
                (f"ssn-{i}", {"table": "customers", "field": "ssn", "record": str(i)})
                for i in range(rows)
            ]
        )
        db.executemany(
            "INSERT INTO customers VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(sealed)]
        )


def test_routine_rotation_runbook(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    env = environment(fresh_openbao, tmp_path)
    kms_table(env, tmp_path)
    lines = commands("routine-rotation.md")
    assert any(line.startswith("heimdall-kms retire") for line in lines)
    run_all(lines, env, {"HMD_AUDIT_LOG": env["HMD_AUDIT_LOG"]})
    key = fresh_openbao.client().secrets.transit.read_key("heimdall-pii")["data"]
    assert key["min_decryption_version"] == 2


def test_key_compromise_runbook(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    env = environment(fresh_openbao, tmp_path)
    t1 = datetime.now(UTC) - timedelta(seconds=1)
    kms_table(env, tmp_path)
    with heimdall_kms.from_env(env) as crypto, sqlite3.connect(tmp_path / "app.db") as db:
        values = [v for (v,) in db.execute("SELECT ssn FROM customers LIMIT 5")]
        crypto.decrypt_many(values, actor="leaky-service", reason="before the incident")
    t2 = datetime.now(UTC) + timedelta(seconds=1)
    outputs = run_all(
        commands("key-compromise.md"),
        env,
        {"HMD_AUDIT_LOG": env["HMD_AUDIT_LOG"], "T1": t1.isoformat(), "T2": t2.isoformat()},
    )
    blast = [json.loads(line) for line in outputs[2].splitlines()]
    assert {e["actor"] for e in blast} == {"leaky-service"}
    assert len(blast) == 5
    with sqlite3.connect(tmp_path / "app.db") as db:
        versions = {
            json.loads(v)["key_version"] for (v,) in db.execute("SELECT ssn FROM customers")
        }
    assert versions == {2}


def test_migration_runbook(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    env = environment(
        fresh_openbao, tmp_path, HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=MASTER
    )
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
        db.executemany(
            "INSERT INTO customers VALUES (?, ?)",
            [(i, legacy_envelope(MASTER, f"ssn-{i}")) for i in range(40)],
        )
    before = dict(sqlite3.connect(tmp_path / "app.db").execute("SELECT id, ssn FROM customers"))
    run_all(commands("migration.md"), env, {"HMD_AUDIT_LOG": env["HMD_AUDIT_LOG"]})
    after = dict(sqlite3.connect(tmp_path / "app.db").execute("SELECT id, ssn FROM customers"))
    assert after == before  # the runbook ends with the rollback path: every value restored
