"""Migration under real faults: Vault sealed midway, a worker killed, four workers at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.audit.verify import verify
from heimdall_kms.config import Settings
from heimdall_kms.envelope import parse
from heimdall_kms.errors import KMSUnavailableError
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.providers.base import KeyContext, WrappedKey
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable
from tests.legacy_data import legacy_envelope
from tests.servers import OpenBao

MASTER_HEX = "ab" * 32


def legacy_rows(count: int) -> list[tuple[int, str | None]]:
    return [(i, legacy_envelope(MASTER_HEX, f"ssn-{i}")) for i in range(1, count + 1)]


def cli(args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    exe = str(Path(sys.executable).with_name("heimdall-kms"))
    return subprocess.Popen(
        [exe, *args], env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def local_env(tmp_path: Path) -> dict[str, str]:
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    return {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }


def assert_all_migrated_once(table: UserTable, count: int, env: dict[str, str]) -> None:
    stored = table.values()
    kms_env = {k: v for k, v in env.items() if not k.startswith("HMD_PII_")}
    with heimdall_kms.from_env(
        {**kms_env, "HMD_ENCRYPTION_MODE": "kms"}, audit=MemoryAuditSink()
    ) as crypto:
        texts = crypto.decrypt_many(
            [stored[i] or "" for i in range(1, count + 1)], actor="t", reason="verify"
        )
    assert texts == [f"ssn-{i}" for i in range(1, count + 1)]
    journal = Counter(key for _, key in table.journal())
    assert len(journal) == count
    assert set(journal.values()) == {1}  # no row was migrated twice


class SealingProvider(VaultTransitProvider):
    """The real Vault provider; the test seals the real server before the third wrap."""

    server: OpenBao
    calls = 0

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        self.calls += 1
        if self.calls == 3:
            self.server.client().sys.seal()
        return super().wrap_many(deks, contexts)


def test_vault_sealed_midway_then_rerun_finishes(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    table = UserTable.create("sqlite", tmp_path, None)
    table.insert(legacy_rows(300))
    env = fresh_openbao.env(
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        HMD_JOB_STALL_SECONDS="2",  # the seal outlasts it: the job stops
    )
    settings = Settings.from_env(env)
    assert settings.vault is not None
    provider = SealingProvider.from_settings(settings)
    provider.server = fresh_openbao
    store = open_store(table.url, Target(table.table, "ssn"))
    with Crypto(settings, kms=provider, audit=MemoryAuditSink()) as crypto:
        report = run_migration(crypto, [store], MigrationOptions(batch_size=50))
    assert isinstance(report.stop_error, KMSUnavailableError)
    assert report.totals.completed == 100  # two batches committed before the seal
    stored = table.values()
    kinds = Counter(type(parse(v or "")).__name__ for v in stored.values())
    assert kinds == {"KmsV1Envelope": 100, "LegacyEnvelope": 200}  # nothing half-written
    fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)
    rerun = cli(
        ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn", "--json"],
        env,
    )
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert json.loads(out)["completed"] == 200
    assert_all_migrated_once(table, 300, env)


def test_cli_stops_with_one_line_when_vault_is_down(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    table = UserTable.create("sqlite", tmp_path, None)
    table.insert(legacy_rows(20))
    before = table.values()
    env = fresh_openbao.env(
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        HMD_JOB_STALL_SECONDS="3",  # a job waits out a seal this long, then stops
    )
    fresh_openbao.client().sys.seal()
    started = time.monotonic()
    run = cli(["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"], env)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 69
    assert 3 <= time.monotonic() - started < 60
    errors = [line for line in err.decode().splitlines() if line.startswith("heimdall-kms:")]
    assert errors == [errors[0]]
    assert "sealed or unavailable" in errors[0]
    assert "no progress for 3s (HMD_JOB_STALL_SECONDS=3)" in errors[0]
    assert b"rerun to finish" in out
    assert table.values() == before


def test_sigkill_midway_then_rerun_finishes(tmp_path: Path) -> None:
    table = UserTable.create("sqlite", tmp_path, None)
    table.insert(legacy_rows(2000))
    env = local_env(tmp_path)
    args = ["migrate", "--database", table.url, "--table", table.table, "--column", "ssn"]
    worker = cli([*args, "--batch-size", "20", "--rate-limit", "20"], env)
    deadline = time.monotonic() + 60
    while len(table.journal()) < 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    done_before = len(table.journal())
    assert 100 <= done_before < 2000
    rerun = cli([*args, "--json"], env)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert json.loads(out)["completed"] == 2000 - done_before
    assert_all_migrated_once(table, 2000, env)


def test_four_workers_split_a_postgres_table(postgres_url: str, tmp_path: Path) -> None:
    table = UserTable.create("postgres-text", tmp_path, postgres_url)
    try:
        table.insert(legacy_rows(4000))
        env = local_env(tmp_path)
        args = [
            "migrate",
            "--database",
            table.url,
            "--table",
            table.table,
            "--column",
            "ssn",
            "--batch-size",
            "50",
            "--json",
        ]
        workers = [cli(args, env) for _ in range(4)]
        results = [worker.communicate(timeout=300) for worker in workers]
        assert [w.returncode for w in workers] == [0, 0, 0, 0], [e for _, e in results]
        completed = [json.loads(out)["completed"] for out, _ in results]
        assert sum(completed) == 4000
        assert sum(1 for n in completed if n > 0) >= 2  # the work was really shared
        assert_all_migrated_once(table, 4000, env)
        # Four processes appended to one audit log; it is still one intact chain.
        assert verify(Path(env["HMD_AUDIT_LOG"]), require_checkpoint=True).lines > 8000
    finally:
        table.drop()
