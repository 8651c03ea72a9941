"""``migrate --estimate`` and ``drill compromise`` project real targets against the 24 h SLA."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.audit.verify import verify
from heimdall_kms.cli import _estimate, main
from heimdall_kms.composition import job_provider
from heimdall_kms.config import Settings
from heimdall_kms.drill import sample
from heimdall_kms.drill.sample import TABLE, measure_migration
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import Target, open_store
from tests.integration.dbtables import UserTable, target_args
from tests.legacy_data import legacy_envelope
from tests.servers import OpenBao

MASTER_HEX = "ab" * 32


# The estimate reads what the census reads: SQLite and PostgreSQL text (the shared table fixture).
TABLES = pytest.mark.parametrize("table", ["sqlite", "postgres-text"], indirect=True)


@pytest.fixture(params=["local", pytest.param("vault", marks=pytest.mark.vault)])
def kms_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("HMD_", "VAULT_")):
            monkeypatch.delenv(name)
    if request.param == "local":
        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        values = {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json")}
    else:
        openbao: OpenBao = request.getfixturevalue("openbao")
        values = openbao.env()
    values |= {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def journaled_runs(table: UserTable) -> list[tuple[str, int, str]]:
    store = open_store(table.url, Target(table.table, "ssn", "id"))
    try:
        return store.runs() if store.has_journal() else []
    finally:
        store.close()


def snapshot(table: UserTable, tmp_path: Path) -> dict[str, object]:
    """The configured table's rows, and the bytes of its SQLite file, audit log and keyring."""
    files = [tmp_path / "audit.log", tmp_path / "keyring.json"]
    if table.url.startswith("sqlite:///"):
        files.append(Path(table.url.removeprefix("sqlite:///")))
    found: dict[str, object] = {"rows": table.values()}
    found |= {str(f): f.read_bytes() if f.exists() else None for f in files}
    return found


def sqlite_only(table: UserTable) -> bool:
    return table.url.startswith("sqlite:///")


class TestMigrateEstimate:
    @TABLES
    def test_names_every_target_with_its_count_and_changes_nothing(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table.insert([(i, legacy_envelope(MASTER_HEX, f"{i:03d}-12-0000")) for i in range(1, 41)])
        table.insert([(41, None), (42, "[REDACTED]"), (43, '{"ciphertext": "!!", "nonce": 1}')])
        before = snapshot(table, tmp_path)
        code = main(["migrate", *target_args(table), "--estimate", "--json"])
        found = json.loads(capsys.readouterr().out)
        assert code == 0
        assert found["targets"] == [
            {"target": f"{table.table}.ssn", "values": 40, "unclassified": 1}
        ]
        assert found["values"] == 40 and found["rate_per_second"] > 0
        # The rate is a real migration's, batch by batch: 16 batches of 250 by default.
        sample = found["rate_sample"]
        assert sample["values"] == 4000 and sample["batches"] == 16
        assert 0 < sample["batch_rate_min"] <= sample["batch_rate_median"]
        assert sample["batch_rate_median"] <= sample["batch_rate_max"]
        for step in ("decrypt", "seal", "compare-and-swap", "journal", "audit", "commit"):
            assert step in found["rate_source"]
        assert snapshot(table, tmp_path) == before
        assert journaled_runs(table) == []  # a migration journals every run
        assert main(["migrate", *target_args(table), "--estimate"]) == 0
        text = capsys.readouterr().out
        assert f"{table.table}.ssn: 40 values (and 1 unparseable" in text
        if sqlite_only(table):
            assert found["verdict"] == "within" and found["within_sla"] is True
            assert found["lower_bound"] is False and found["not_in_the_rate"] == []
            assert "within the 24 h SLA" in text
        else:
            # Measured on SQLite: PostgreSQL's own reads and writes are not in the rate, so
            # the time is a lower bound and the estimate never says "within".
            assert found["verdict"] == "unconfirmed" and found["within_sla"] is False
            assert found["lower_bound"] is True
            assert found["not_in_the_rate"] == [f"{table.table}.ssn (PostgreSQL)"]
            assert "projected at least" in text and "at most" in text
            assert "NOT CONFIRMED against the 24 h SLA" in text
            assert "within the" not in text
        assert snapshot(table, tmp_path) == before

    @TABLES
    def test_a_target_set_the_sla_cannot_hold_is_reported_over(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table.insert([(i, legacy_envelope(MASTER_HEX, f"{i:03d}-12-0000")) for i in range(1, 101)])
        before = snapshot(table, tmp_path)
        # At one request per 100,000 s (the ceiling asked for), carrying a batch of 100 values
        # (the local provider seals a batch in one call), 100 values take 100,000 s > 24 h.
        args = ["migrate", *target_args(table), "--estimate", "--rate-limit", "0.00001"]
        assert main([*args, "--batch-size", "100"]) == 0
        text = capsys.readouterr().out
        assert f"{table.table}.ssn: 100 values" in text
        assert "OVER the 24 h SLA: add workers (see docs/performance.md)" in text
        assert snapshot(table, tmp_path) == before


class _CountedClose(MeteredProvider):
    """The configured provider as the job opens it, counting its closes."""

    closes = 0

    def close(self) -> None:
        type(self).closes += 1
        super().close()


class TestTheProviderIsClosed:
    @pytest.mark.parametrize("table", ["sqlite"], indirect=True)
    def test_when_the_throwaway_directory_cannot_be_made(
        self, table: UserTable, kms_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A failure after the provider is opened, before the measurement takes it over,
        still closes it."""
        table.insert([(1, legacy_envelope(MASTER_HEX, "001-12-0000"))])
        opened: list[_CountedClose] = []

        def counted(settings: Settings) -> MeteredProvider:
            opened.append(_CountedClose(job_provider(settings).inner))
            return opened[-1]

        monkeypatch.setattr(_estimate, "job_provider", counted)
        monkeypatch.setattr(_CountedClose, "closes", 0)
        monkeypatch.setattr(tempfile, "tempdir", os.path.join(os.devnull, "no-such-directory"))
        assert main(["migrate", *target_args(table), "--estimate"]) != 0
        assert len(opened) == 1 and _CountedClose.closes == 1


class TestMeasureMigration:
    def test_the_measured_step_is_a_real_migration_of_a_throwaway_table(
        self, kms_env: dict[str, str], tmp_path: Path
    ) -> None:
        """Every seeded value is read, decrypted, sealed, swapped and journaled in the
        throwaway database; its own audit log holds the run; the configured log is untouched."""
        settings = Settings.from_env(os.environ)
        where = tmp_path / "sample"
        where.mkdir()
        measured = measure_migration(settings, where, job_provider(settings), batch_size=500)
        assert measured.values == 4000 and len(measured.batch_rates) == 8  # at least 8 batches
        store = open_store(f"sqlite:///{where / 'sample.db'}", Target(TABLE, "ssn"))
        try:
            census = take_census(store)
            (run,) = store.runs()
            journaled = store.journal(run[0])
        finally:
            store.close()
        assert census.legacy == 0 and census.kinds[ValueKind.KMS_V1] == 4000
        assert len(journaled) == 4000  # each swap replaced a legacy value, kept for rollback
        events = [json.loads(line) for line in (where / "audit.log").read_text().splitlines()]
        batches = [e for e in events if e["event_type"] == "reencrypt.batch"]
        assert [e["details"]["job"] for e in batches] == ["migrate"] * 8
        assert verify(where / "audit.log").lines == len(events)  # raises if the chain broke
        assert not (tmp_path / "audit.log").exists()

    def test_the_throwaway_env_key_is_wiped_when_the_run_is_over(
        self, kms_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The key the sample values were sealed and opened under is zeros afterwards."""
        made: list[bytearray] = []

        def kept() -> bytearray:
            made.append(primitives.new_dek())
            return made[-1]

        monkeypatch.setattr(sample, "new_dek", kept)
        settings = Settings.from_env(os.environ)
        assert measure_migration(settings, tmp_path, job_provider(settings), batch_size=2000)
        assert len(made) == 1 and made[0].count(0) == primitives.DEK_BYTES  # shows no key


def seal_kms_values(kms_env: dict[str, str], table: UserTable, count: int) -> None:
    kms_only = {k: v for k, v in kms_env.items() if not k.startswith("HMD_PII_")}
    with heimdall_kms.from_env(
        {**kms_only, "HMD_ENCRYPTION_MODE": "kms"}, audit=MemoryAuditSink()
    ) as crypto:
        sealed = crypto.encrypt_many([(f"v{i}", {"record": str(i)}) for i in range(count)])
    table.insert([(i, e.to_json()) for i, e in enumerate(sealed)])


class TestDrillProjection:
    @TABLES
    def test_projects_the_configured_targets_at_the_drills_rate(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        seal_kms_values(kms_env, table, 30)
        table.insert([(100, legacy_envelope(MASTER_HEX, "000-00-0000"))])
        before = table.values()
        workdir = tmp_path / "drill"
        args = ["drill", "compromise", "--workdir", str(workdir), "--records", "60", "--json"]
        code = main([*args, *target_args(table)])
        report = json.loads(capsys.readouterr().out)
        projection = report["projection"]
        assert projection["targets"] == [
            {"target": f"{table.table}.ssn", "values": 30, "unclassified": 0}
        ]
        if sqlite_only(table):
            assert code == 0
            assert projection["within_sla"] is True and report["passed"] is True
        else:
            # The drill's rate is measured on its own SQLite table: PostgreSQL's reads and
            # writes are not in it, so the drill cannot confirm the SLA (a gate fails closed).
            assert code == 3
            assert projection["verdict"] == "unconfirmed" and projection["lower_bound"] is True
            assert projection["within_sla"] is False and report["passed"] is False
        steps = {s["name"]: s for s in report["steps"]}
        full = steps["re-encrypt (full)"]
        assert all(s["ok"] for s in report["steps"])
        assert projection["rate_per_second"] == round(60 / full["seconds"], 1)
        assert "compare-and-swap" in projection["rate_source"]
        markdown = Path(report["report_files"][1]).read_text()
        assert "## Projection for the configured targets" in markdown
        assert table.values() == before

    @pytest.mark.parametrize("table", ["sqlite"], indirect=True)
    def test_the_admin_targets_file_names_the_configured_targets(
        self,
        table: UserTable,
        kms_env: dict[str, str],
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        seal_kms_values(kms_env, table, 12)
        targets = tmp_path / "targets.toml"
        targets.write_text(
            f'database = "{table.url}"\n[[targets]]\ntable = "{table.table}"\ncolumn = "ssn"\n'
        )
        monkeypatch.setenv("HMD_ADMIN_TARGETS_FILE", str(targets))
        args = ["drill", "compromise", "--workdir", str(tmp_path / "d"), "--records", "20"]
        assert main([*args, "--json"]) == 0
        projection = json.loads(capsys.readouterr().out)["projection"]
        assert projection["targets"] == [
            {"target": f"{table.table}.ssn", "values": 12, "unclassified": 0}
        ]

    def test_without_targets_it_says_none_are_configured(
        self, kms_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        args = ["drill", "compromise", "--workdir", str(tmp_path / "d"), "--records", "20"]
        assert main([*args, "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["projection"] is None
        assert report["projection_note"].startswith("no targets are configured")
        assert "HMD_ADMIN_TARGETS_FILE" in report["projection_note"]
        markdown = Path(report["report_files"][1]).read_text()
        assert "no targets are configured, so nothing was projected" in markdown
