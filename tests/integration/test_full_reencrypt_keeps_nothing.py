"""After a compromise nothing restorable is kept (issue 15 item 6): ``reencrypt --mode full``
journals no replaced envelope, so a rollback of the run restores nothing; ``retire`` warns
about journaled values (of other runs) that need the versions it retires."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.providers.local import LocalKeyring

ROWS = 20


@dataclass
class Table:
    url: str
    db: Path

    def targets(self) -> list[str]:
        return ["--database", self.url, "--table", "t", "--column", "v"]

    def values(self) -> dict[int, str]:
        with sqlite3.connect(self.db) as c:
            return dict(c.execute("SELECT id, v FROM t"))

    def journal(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.db) as c:
            if not c.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'heimdall_kms_journal'"
            ).fetchall():
                return []
            return c.execute("SELECT run_id, old_value FROM heimdall_kms_journal").fetchall()


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Table:
    env = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    db = tmp_path / "app.db"
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto, sqlite3.connect(db) as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        sealed = crypto.encrypt_many(
            [(f"ssn-{i}", {"table": "t", "field": "v", "record": str(i)}) for i in range(ROWS)]
        )
        c.executemany(
            "INSERT INTO t VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(sealed)]
        )
    return Table(f"sqlite:///{db}", db)


class TestFullReencryptKeepsNothing:
    def test_rollback_of_a_full_run_restores_no_compromised_envelope(
        self, table: Table, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The compromised v1 envelopes are gone from the table and were never journaled."""
        compromised = table.values()
        assert main(["rotate"]) == 0
        assert main(["reencrypt", "--mode", "full", *table.targets(), "--run-id", "inc-1"]) == 0
        assert table.journal() == []
        capsys.readouterr()
        assert main(["migrate", *table.targets(), "--rollback", "inc-1", "--json"]) == 0
        counts = json.loads(capsys.readouterr().out)["targets"]["t.v"]
        assert counts["journaled"] == 0 and counts["restored"] == 0
        after = table.values()
        assert not set(after.values()) & set(compromised.values())
        for text in after.values():
            envelope = parse(text)
            assert isinstance(envelope, KmsV1Envelope) and envelope.key_version == 2


class TestRetireConsidersTheJournal:
    def test_retire_warns_about_journaled_values_it_makes_unreadable(
        self, table: Table, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A rewrap journals the v1 envelopes: retiring v1 says so, in stderr and the event."""
        assert main(["rotate"]) == 0
        assert main(["reencrypt", *table.targets(), "--run-id", "rw-1"]) == 0
        capsys.readouterr()
        assert main(["retire", "--below-version", "2", *table.targets(), "--json"]) == 0
        out, err = capsys.readouterr()
        assert f"the journal still holds {ROWS} replaced values" in err and "rw-1" in err
        assert json.loads(out)["journal"] == {"t.v": {"rw-1": ROWS}}
        assert (
            main(["journal", "purge", *table.targets(), "--run", "rw-1", "--older-than-days", "0"])
            == 0
        )
        capsys.readouterr()
        assert main(["retire", "--below-version", "2", *table.targets(), "--json"]) == 0
        out, err = capsys.readouterr()
        assert "journal" not in err and json.loads(out)["journal_values_below"] == 0
