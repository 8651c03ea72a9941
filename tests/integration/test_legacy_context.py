"""Legacy copies cannot defeat a stated record context once a target is migrated (issue 15
item 8), and a migration's decrypt/encrypt events name the record they read (SPEC §8)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError, ModeViolationError
from heimdall_kms.legacy_context import LegacyContext, LegacyContextRule
from heimdall_kms.providers.local import LocalKeyring
from tests.legacy_data import legacy_envelope
from tests.servers import run_cli

MASTER = "ab" * 32
ROWS = 5


def ssn(i: int) -> str:
    return f"{i:03d}-00-{i:04d}"


@dataclass
class Migrated:
    """Table t.v migrated (run ``r-1``), then record 0's legacy copy planted into record 1."""

    env: dict[str, str]
    url: str
    db: Path
    log: Path
    planted: str

    def targets(self) -> list[str]:
        return ["--database", self.url, "--table", "t", "--column", "v"]

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Migrated:
    log = tmp_path / "audit.log"
    env = {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_PII_MASTER_KEY": MASTER,
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
        "HMD_AUDIT_LOG": str(log),
    }
    LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, legacy_envelope(MASTER, ssn(i))) for i in range(ROWS)],
        )
    url = f"sqlite:///{db}"
    assert (
        main(["migrate", "--database", url, "--table", "t", "--column", "v", "--run-id", "r-1"])
        == 0
    )
    with sqlite3.connect(db) as c:
        (planted,) = c.execute(
            "SELECT old_value FROM heimdall_kms_journal WHERE row_key = '0'"
        ).fetchone()
        c.execute("UPDATE t SET v = ? WHERE id = 1", (planted,))
    return Migrated(env, url, db, log, planted)


def decrypt(env: dict[str, str], value: str, *context: str) -> tuple[int, str, str]:
    args = ["decrypt", "--actor", "app", "--reason", "r", "--field", "v"]
    for item in context:
        args += ["--context", item]
    done = run_cli(args, env, value)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


class TestLegacyContextRule:
    @pytest.mark.parametrize(
        ("entry", "stated", "applies"),
        [
            ("t.v", {"table": "t", "field": "v", "record": "1"}, True),
            ("t.v", {"field": "v", "record": "1"}, True),  # leaving the table out does not help
            ("t.v", {"table": "u", "field": "v", "record": "1"}, False),
            ("v", {"table": "u", "field": "v", "record": "1"}, True),
            ("*", {"field": "x", "record": "1"}, True),
            ("t.v", {"table": "t", "field": "v"}, False),  # no record stated: nothing to defeat
            ("t.w", {"table": "t", "field": "v", "record": "1"}, False),
        ],
    )
    def test_which_reads_it_covers(self, entry: str, stated: dict[str, str], applies: bool) -> None:
        rule = LegacyContextRule.parse(entry, LegacyContext.REFUSE)
        assert rule.applies(stated) is applies

    def test_settings_read_both_variables_and_name_a_bad_value(self) -> None:
        base = {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER}
        rule = Settings.from_env(
            {**base, "HMD_MIGRATED_TARGETS": "t.v, ssn", "HMD_LEGACY_CONTEXT": "flag"}
        ).legacy_context
        assert rule == LegacyContextRule(LegacyContext.FLAG, frozenset({"t.v", "ssn"}))
        assert Settings.from_env(base).legacy_context.action is LegacyContext.REFUSE
        with pytest.raises(ConfigurationError, match="HMD_LEGACY_CONTEXT"):
            Settings.from_env({**base, "HMD_LEGACY_CONTEXT": "maybe"})


class TestLegacyCopiesAfterMigration:
    def test_hybrid_mode_alone_cannot_tell(self, migrated: Migrated) -> None:
        """What hybrid mode cannot protect: with no target declared, record 0's SSN comes out."""
        code, out, _ = decrypt(migrated.env, migrated.planted, "record=1", "table=t")
        assert (code, out.strip()) == (0, ssn(0))

    @pytest.mark.parametrize("stated", [["record=1", "table=t"], ["record=1"]])
    def test_refused_once_the_target_is_declared_migrated(
        self, migrated: Migrated, stated: list[str]
    ) -> None:
        env = {**migrated.env, "HMD_MIGRATED_TARGETS": "t.v"}
        code, out, err = decrypt(env, migrated.planted, *stated)
        assert code == 67
        assert ssn(0) not in out + err
        assert "HMD_MIGRATED_TARGETS" in err

    def test_flag_reads_it_and_says_so_in_the_audit_event(self, migrated: Migrated) -> None:
        env = {**migrated.env, "HMD_MIGRATED_TARGETS": "t.v", "HMD_LEGACY_CONTEXT": "flag"}
        code, out, _ = decrypt(env, migrated.planted, "record=1", "table=t")
        assert (code, out.strip()) == (0, ssn(0))
        event = [e for e in migrated.events() if e.get("actor") == "app"][-1]
        assert event["details"] == {"legacy_context": "unverified"}
        assert event["context"] == {"field": "v", "record": "1", "table": "t"}

    def test_migrate_reports_the_planted_copy_instead_of_sealing_it(
        self,
        migrated: Migrated,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Re-sealing it would bind record 0's SSN to record 1 for good."""
        monkeypatch.setenv("HMD_MIGRATED_TARGETS", "t.v")
        capsys.readouterr()
        assert main(["migrate", *migrated.targets(), "--json"]) == 3
        summary = json.loads(capsys.readouterr().out)
        assert [(f["id"], f["error_type"]) for f in summary["failures"]] == [
            ("1", "mode_violation")
        ]
        with sqlite3.connect(migrated.db) as c:
            (value,) = c.execute("SELECT v FROM t WHERE id = 1").fetchone()
        assert value == migrated.planted

    def test_the_api_refuses_it_too(self, migrated: Migrated) -> None:
        env = {**migrated.env, "HMD_MIGRATED_TARGETS": "*"}
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            with pytest.raises(ModeViolationError):
                crypto.decrypt(
                    migrated.planted, actor="a", reason="r", context={"field": "v", "record": "1"}
                )
            # Without a stated record, there is no claim to defeat: still readable.
            assert crypto.decrypt(migrated.planted, actor="a", reason="r") == ssn(0)


class TestMigrationEventsNameTheRecord:
    def test_every_decrypt_and_encrypt_of_the_run_carries_its_record(
        self, migrated: Migrated
    ) -> None:
        run = [e for e in migrated.events() if "migrate r-1" in str(e.get("reason"))]
        assert len(run) == ROWS
        for event_type in ("crypto.decrypt", "crypto.encrypt"):
            events = [
                e
                for e in migrated.events()
                if e["event_type"] == event_type and e.get("actor") != "app"
            ]
            records = sorted(str(e["context"]["record"]) for e in events)  # type: ignore[index]
            assert records == [str(i) for i in range(ROWS)], event_type
