"""``heimdall-kms migrate`` / ``status`` / ``journal`` on SQLite and PostgreSQL (text, jsonb)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import KmsV1Envelope, parse
from tests.integration.dbtables import (
    UserTable,
    hybrid_local_env,
    postgres_table,
    run_main,
    stored_text,
    target_args,
)
from tests.legacy_data import legacy_envelope

MASTER_HEX = "ab" * 32
OLD_HEX = "cd" * 32


def plaintext(i: int) -> str:
    return f"{i:03d}-12-{i % 10000:04d}"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return hybrid_local_env(
        tmp_path, monkeypatch, MASTER_HEX, HMD_PII_LEGACY_KEYS=f"key-2023:{OLD_HEX}"
    )


def fill(table: UserTable, good: int = 60) -> dict[int, str]:
    """Legacy rows 1..good (some under an older key id), companions and bad rows 1001..1007."""
    expected = {}
    rows: list[tuple[int, str | None]] = []
    for i in range(1, good + 1):
        expected[i] = plaintext(i)
        key, key_id = (OLD_HEX, "key-2023") if i % 7 == 0 else (MASTER_HEX, "default-key-v1")
        rows.append((i, legacy_envelope(key, expected[i], key_id)))
    tampered = json.loads(legacy_envelope(MASTER_HEX, "999-99-9999"))
    raw = bytearray(base64.b64decode(tampered["ciphertext"]))
    raw[-1] ^= 1
    tampered["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    rows += [
        (1001, None),
        (1002, stored_text(table, "sha256:" + hashlib.sha256(b"a@b.c").hexdigest())),
        (1003, stored_text(table, "[REDACTED]")),
        (1004, stored_text(table, "just text")),
        (1005, legacy_envelope(MASTER_HEX, "000-00-0000", "unknown-key")),
        (1006, json.dumps(tampered)),
        (1007, '{"ciphertext": "!!", "nonce": "x", "key_id": "a", "algorithm": "AES-256-GCM"}'),
    ]
    table.insert(rows)
    return expected


def kms_crypto(env: dict[str, str]) -> heimdall_kms.Crypto:
    kms_only = {k: v for k, v in env.items() if not k.startswith("HMD_PII_")}
    return heimdall_kms.from_env(
        {**kms_only, "HMD_ENCRYPTION_MODE": "kms"}, audit=MemoryAuditSink()
    )


def assert_migrated(table: UserTable, expected: dict[int, str], env: dict[str, str]) -> None:
    stored = table.values()
    with kms_crypto(env) as crypto:
        for row_id, text in expected.items():
            envelope = parse(stored[row_id] or "")
            assert isinstance(envelope, KmsV1Envelope), row_id
            assert envelope.context == {"table": table.table, "field": "ssn", "record": str(row_id)}
            assert (
                crypto.decrypt(
                    envelope, actor="t", reason="verify", context={"record": str(row_id)}
                )
                == text
            )


def test_migrate_end_to_end(
    table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = fill(table)
    before = table.values()
    code, out, err = run_main(
        ["migrate", *target_args(table), "--batch-size", "25", "--json"], capsys
    )
    assert code == 3, err
    summary = json.loads(out)
    assert summary["completed"] == len(expected)
    assert sorted(f["id"] for f in summary["failures"]) == ["1005", "1006", "1007"]
    assert {f["id"]: f["error_type"] for f in summary["failures"]} == {
        "1005": "key_not_found",
        "1006": "integrity",
        "1007": "malformed_envelope",
    }
    assert summary["skipped"] == 4
    assert summary["kms_calls_per_value"] < 0.2  # batched: 60 values in a handful of calls
    assert err.strip().splitlines()[-1].startswith("heimdall-kms: error:")
    after = table.values()
    for row_id in (1001, 1002, 1003, 1004, 1005, 1006, 1007):
        assert after[row_id] == before[row_id]  # left exactly as they were
    assert_migrated(table, expected, env)
    audit = Path(env["HMD_AUDIT_LOG"]).read_text()
    for text in expected.values():
        assert text not in audit
    assert sorted(k for _, k in table.journal()) == sorted(str(i) for i in expected)


def test_rerun_is_idempotent_and_status_proves_it(
    table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = fill(table, good=30)
    run_main(["migrate", *target_args(table)], capsys)
    first = table.values()
    code, out, _ = run_main(["migrate", *target_args(table), "--json"], capsys)
    assert code == 3  # the three bad rows are still reported
    assert json.loads(out)["completed"] == 0
    assert table.values() == first
    assert len(table.journal()) == len(expected)
    code, out, _ = run_main(["status", *target_args(table), "--json"], capsys)
    assert code == 0
    census = json.loads(out)
    assert census["encryption_version"] == {"kms_v1": 30, "legacy": 2}
    assert census["legacy_key_id"] == {"default-key-v1": 1, "unknown-key": 1}
    assert census["unparseable"] == 1
    assert census["unparseable_ids"] == ["1007"]
    assert census["keys"] == [
        {"provider": "local", "key_identifier": "heimdall-pii", "key_version": 1, "count": 30}
    ]
    code, _, err = run_main(["status", *target_args(table), "--fail-if-legacy"], capsys)
    assert code == 3
    assert "2 legacy, 1 unparseable, 1 plaintext remain" in err


def test_dry_run_writes_nothing(
    table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    expected = fill(table, good=20)
    before = table.values()
    code, out, _ = run_main(["migrate", *target_args(table), "--dry-run", "--json"], capsys)
    assert code == 3
    summary = json.loads(out)
    assert summary["dry_run"] is True
    assert summary["completed"] == len(expected)
    assert summary["kms_calls"] == 0
    assert table.values() == before
    assert table.journal() == []


def test_rollback_restores_all_but_values_changed_since(
    table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    fill(table, good=20)
    before = table.values()
    code, out, _ = run_main(["migrate", *target_args(table), "--json", "--run-id", "r-1"], capsys)
    assert json.loads(out)["run_id"] == "r-1"
    changed = legacy_envelope(MASTER_HEX, "app-wrote-this")
    table.set(5, changed)
    code, out, err = run_main(
        ["migrate", *target_args(table), "--rollback", "r-1", "--json"], capsys
    )
    assert code == 3, err
    counts = json.loads(out)["targets"][f"{table.table}.ssn"]
    assert counts == {"journaled": 20, "restored": 19, "conflicts": 1, "not_envelope": 0}
    after = table.values()
    assert {k: v for k, v in after.items() if k != 5} == {k: v for k, v in before.items() if k != 5}
    assert json.loads(after[5] or "") == json.loads(changed)
    code, out, _ = run_main(
        ["journal", "purge", *target_args(table), "--older-than-days", "0", "--json"], capsys
    )
    assert code == 0
    assert json.loads(out)["targets"][f"{table.table}.ssn"]["deleted"] == 1
    assert table.journal() == []


class TestRollbackRestoresOnlyEnvelopes:
    def test_a_journal_row_holding_plaintext_is_reported_and_never_written(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Someone put an SSN in the journal: rollback restores the rest, never writes it."""
        fill(table, good=10)
        before = table.values()
        assert run_main(["migrate", *target_args(table), "--run-id", "r-p"], capsys)[0] == 3
        migrated = table.values()
        secret = "123-45-6789"
        table._execute(
            "UPDATE heimdall_kms_journal SET old_value = %s WHERE table_name = %s AND row_key = %s",
            [secret, table.table, "4"],
        )
        code, out, err = run_main(
            ["migrate", *target_args(table), "--rollback", "r-p", "--json"], capsys
        )
        assert code == 3
        counts = json.loads(out)["targets"][f"{table.table}.ssn"]
        assert counts == {"journaled": 10, "restored": 9, "conflicts": 0, "not_envelope": 1}
        assert "1 journal rows do not hold an envelope" in err
        after = table.values()
        assert after[4] == migrated[4]  # still the run's kms_v1 value, not the plaintext
        assert {k: v for k, v in after.items() if k != 4} == {
            k: v for k, v in before.items() if k != 4
        }
        assert secret not in out + err
        assert table.journal() == [("r-p", "4")]  # kept for inspection


def test_concurrent_application_writes_are_never_overwritten(
    table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    good = 400
    fill(table, good=good)
    latest: dict[int, str] = {}
    stop = threading.Event()

    def application() -> None:
        # The application keeps rewriting rows (as legacy, like the old engine) during the run.
        n = 0
        while not stop.is_set() and n < 300:
            row_id = 1 + (n * 37) % good
            text = f"app-{n}"
            table.set(row_id, legacy_envelope(MASTER_HEX, text))
            latest[row_id] = text
            n += 1
            time.sleep(0.001)

    writer = threading.Thread(target=application)
    writer.start()
    try:
        code, _out, err = run_main(
            ["migrate", *target_args(table), "--batch-size", "10", "--json"], capsys
        )
    finally:
        stop.set()
        writer.join()
    assert code == 3, err
    stored = table.values()
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
        for row_id in range(1, good + 1):
            text = crypto.decrypt(stored[row_id] or "", actor="t", reason="verify")
            assert text == latest.get(row_id, plaintext(row_id)), row_id
    assert latest  # the writer really ran
    journal = Counter(key for _, key in table.journal())
    assert max(journal.values()) == 1


def test_two_targets_from_a_targets_file(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = UserTable.create("sqlite", tmp_path, None)
    expected = fill(first, good=10)
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE payments (pid TEXT PRIMARY KEY, card TEXT)")
        db.execute(
            "INSERT INTO payments VALUES ('p-1', ?)", [legacy_envelope(MASTER_HEX, "4111-1111")]
        )
    targets = tmp_path / "targets.toml"
    targets.write_text(
        f'database = "{first.url}"\n'
        f'[[targets]]\ntable = "{first.table}"\ncolumn = "ssn"\n'
        '[[targets]]\ntable = "payments"\ncolumn = "card"\nid_column = "pid"\n'
    )
    code, out, _ = run_main(["migrate", "--targets", str(targets), "--json"], capsys)
    assert code == 3  # the first table's three bad rows
    summary = json.loads(out)
    assert [t["completed"] for t in summary["targets"]] == [len(expected), 1]
    with sqlite3.connect(tmp_path / "app.db") as db:
        (card,) = db.execute("SELECT card FROM payments").fetchone()
    envelope = parse(card)
    assert isinstance(envelope, KmsV1Envelope)
    assert envelope.context == {"table": "payments", "field": "card", "record": "p-1"}
    _code, out, _ = run_main(["status", "--targets", str(targets), "--json"], capsys)
    census = json.loads(out)
    assert census["encryption_version"]["kms_v1"] == len(expected) + 1
    assert len(census["targets"]) == 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--table", "nope", "--column", "ssn"], "table 'nope' does not exist"),
        (["--column", "nope"], "has no column 'nope'"),
        (["--column", "ssn", "--id-column", "nope"], "has no id column 'nope'"),
        (["--column", "ssn; drop table x"], "not a plain SQL identifier"),
    ],
)
def test_wrong_targets_fail_before_any_write(
    table: UserTable,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    fragment: str,
) -> None:
    fill(table, good=3)
    before = table.values()
    base = ["--database", table.url] + (["--table", table.table] if "--table" not in args else [])
    code, out, err = run_main(["migrate", *base, *args], capsys)
    assert code != 0
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("heimdall-kms: error:")]
    assert len(lines) == 1
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert table.values() == before
    assert table.journal() == []


def test_missing_sqlite_file_and_bad_url(
    env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(
        ["status", "--database", f"sqlite:///{tmp_path}/none.db", "--table", "t", "--column", "c"],
        capsys,
    )
    assert code == 73
    assert "no SQLite database" in err
    assert not (tmp_path / "none.db").exists()
    code, _, err = run_main(
        ["status", "--database", "mysql://x", "--table", "t", "--column", "c"], capsys
    )
    assert code == 78


def test_migrate_refuses_kms_mode(
    table: UserTable,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HMD_ENCRYPTION_MODE", "kms")
    monkeypatch.delenv("HMD_PII_MASTER_KEY")
    monkeypatch.delenv("HMD_PII_LEGACY_KEYS")
    code, _, err = run_main(["migrate", *target_args(table)], capsys)
    assert code == 78
    assert "HMD_ENCRYPTION_MODE: migrate needs hybrid" in err


def test_read_only_postgres_user_fails_before_any_write(
    postgres_url: str, tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    table = UserTable.create("postgres-text", tmp_path, postgres_url)
    role = f"reader_{table.table}"
    try:
        table.insert([(1, legacy_envelope(MASTER_HEX, "x"))])
        before = table.values()
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"CREATE ROLE {role} LOGIN")
            db.execute(f"GRANT SELECT ON {table.table} TO {role}")
        reader_url = postgres_url.replace("postgres@", f"{role}@", 1)
        code, out, err = run_main(
            ["migrate", "--database", reader_url, "--table", table.table, "--column", "ssn"], capsys
        )
        assert code == 73
        assert out == ""
        assert f"may not SELECT and UPDATE '{table.table}'" in err
        assert table.values() == before
        code, out, _ = run_main(
            [
                "status",
                "--database",
                reader_url,
                "--table",
                table.table,
                "--column",
                "ssn",
                "--json",
            ],
            capsys,
        )
        assert code == 0  # a census needs read access only
        assert json.loads(out)["encryption_version"]["legacy"] == 1
    finally:
        table.drop()
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"DROP ROLE IF EXISTS {role}")


def test_status_needs_no_kms_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("HMD_"):
            monkeypatch.delenv(name)
    table = UserTable.create("sqlite", tmp_path, None)
    fill(table, good=5)
    monkeypatch.setenv("HMD_DATABASE_URL", table.url)
    code, out, err = run_main(["status", "--table", table.table, "--column", "ssn"], capsys)
    assert code == 0, err
    assert "legacy 7" in out  # 5 good, one under an unknown key id, one tampered
    assert "unparseable 1" in out


class TestShortVarcharColumn:
    """A ``varchar(N)`` sized for the legacy values may not hold their ``kms_v1`` envelopes:
    each value that does not fit fails its own row, named, and is left as it was; the rest
    is migrated."""

    @pytest.fixture
    def varchar_table(self, postgres_url: str) -> Iterator[str]:
        # Rows 41..60 hold long values: their envelopes need more than 520 characters.
        values = {
            i: legacy_envelope(MASTER_HEX, plaintext(i) if i <= 40 else "x" * 120)
            for i in range(1, 61)
        }
        with postgres_table(postgres_url, "varchar(520)", values) as name:
            yield name

    def test_a_value_too_long_for_the_column_fails_its_row_and_the_rest_migrates(
        self,
        varchar_table: str,
        postgres_url: str,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        with psycopg.connect(postgres_url) as db:
            before = dict(db.execute(f"SELECT id, ssn FROM {varchar_table}").fetchall())
        args = ["--database", postgres_url, "--table", varchar_table, "--column", "ssn"]
        code, out, err = run_main(["migrate", *args, "--batch-size", "25"], capsys)
        assert code == 3, err
        assert "stopped" not in out  # not a stop: every row was examined
        lines = [line for line in out.splitlines() if "failed" in line and "id=" in line]
        assert len(lines) == 20
        assert all("holds at most 520 (varchar(520)): widen the column" in x for x in lines)
        with psycopg.connect(postgres_url) as db:
            after = dict(db.execute(f"SELECT id, ssn FROM {varchar_table}").fetchall())
        assert all(after[i] == before[i] for i in range(41, 61))  # left as they were
        assert all(isinstance(parse(after[i]), KmsV1Envelope) for i in range(1, 41))
        code, out, _ = run_main(["migrate", *args, "--json"], capsys)
        failures = json.loads(out)["failures"]
        assert sorted(int(f["id"]) for f in failures) == list(range(41, 61))
        assert {f["error_type"] for f in failures} == {"store"}


class TestRollbackOfOtherIds:
    """``migrate --rollback`` puts back every value on tables keyed by other types than
    integers and text: it counted each row of a timestamp, timestamptz, bytea or float id
    (on SQLite a real or a blob) as changed since and left it migrated (exit 3)."""

    IDS = (  # backend, the id column's type, its ids as SQL literals
        ("postgres", "timestamp", ["'2024-01-01 00:00:00.5'", "'2024-01-02 00:00:00'"]),
        ("postgres", "timestamptz", ["'2024-06-01 12:00:00.25+02'", "'2024-06-02 00:00:00+00'"]),
        ("postgres", "bytea", ["'\\x00ff'", "'\\x61'"]),
        ("postgres", "double precision", ["1", "0.1"]),
        ("postgres", "uuid", ["'00000000-0000-0000-0000-000000000001'"]),
        ("sqlite", "REAL", ["1.0", "0.30000000000000004", "1e20"]),
        ("sqlite", "BLOB", ["X'00ff'", "1", "'text'"]),
        ("sqlite", "INTEGER", ["1", "2"]),
    )

    @pytest.mark.parametrize(("backend", "id_type", "ids"), IDS)
    def test_every_value_is_restored(
        self,
        request: pytest.FixtureRequest,
        tmp_path: Path,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
        backend: str,
        id_type: str,
        ids: list[str],
    ) -> None:
        name = f"ids_{os.urandom(4).hex()}"
        values = [
            f"({rid}, '{legacy_envelope(MASTER_HEX, plaintext(i))}')" for i, rid in enumerate(ids)
        ]
        ddl = f"CREATE TABLE {name} (rid {id_type} PRIMARY KEY NOT NULL, ssn text)"
        insert = f"INSERT INTO {name} VALUES {', '.join(values)}"
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'ids.db'}"
            with sqlite3.connect(tmp_path / "ids.db") as lite:
                lite.execute(ddl)
                lite.execute(insert)
        else:
            url = request.getfixturevalue("postgres_url")
            with psycopg.connect(url, autocommit=True) as db:
                db.execute(ddl)
                db.execute(insert)
        args = ["--database", url, "--table", name, "--column", "ssn", "--id-column", "rid"]
        try:
            before = self._values(url, name)
            code, out, err = run_main(["migrate", *args, "--run-id", "r-ids", "--json"], capsys)
            assert code == 0, err
            assert json.loads(out)["completed"] == len(ids)
            code, out, err = run_main(["migrate", *args, "--rollback", "r-ids", "--json"], capsys)
            after = self._values(url, name)
        finally:
            if backend != "sqlite":
                with psycopg.connect(url, autocommit=True) as db:
                    db.execute(f"DROP TABLE {name}")
                    db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [name])
        assert code == 0, err
        counts = json.loads(out)["targets"][f"{name}.ssn"]
        assert counts == {
            "journaled": len(ids),
            "restored": len(ids),
            "conflicts": 0,
            "not_envelope": 0,
        }
        assert after == before

    @staticmethod
    def _values(url: str, name: str) -> list[str]:
        sql = f"SELECT ssn FROM {name} ORDER BY ssn"
        if url.startswith("sqlite"):
            with sqlite3.connect(url.removeprefix("sqlite:///")) as lite:
                return [v for (v,) in lite.execute(sql)]
        with psycopg.connect(url) as db:
            return [v for (v,) in db.execute(sql).fetchall()]
