"""A batch's compare-and-swap, on every store: a row is replaced only where it still holds the
value the batch read, and only replaced rows are journaled.

On PostgreSQL the batch is one ``UPDATE ... FROM (VALUES ...)`` per chunk of rows; on SQLite
one prepared statement run per row. Both must give the same answers.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from heimdall_kms.errors import StoreError
from heimdall_kms.store import Match, Row, Swap, Target, _sql, open_store, sqlite
from tests.integration.dbtables import UserTable, hybrid_local_env, run_main
from tests.legacy_data import legacy_envelope

_GONE = json.dumps({"ciphertext": "written by someone else since"})  # JSON: a jsonb column


def _values(table: UserTable) -> dict[int, object]:
    # Compared as documents: jsonb renders a JSON document its own way (key order included).
    return {key: json.loads(text or "null") for key, text in table.values().items()}


def _documents(count: int, tag: str) -> list[str]:
    return [json.dumps({"ciphertext": f"{tag}-{i}", "key_id": "k"}) for i in range(count)]


class TestBatchSwap:
    def _swap(
        self, table: UserTable, new: list[str], *, stale: frozenset[int] = frozenset()
    ) -> tuple[list[bool], dict[int, object]]:
        """Read every row in one batch and swap each to ``new[i]``; the rows in ``stale`` are
        swapped from a value they no longer hold (someone wrote them since)."""
        store = open_store(table.url, Target(table.table, "ssn"))
        try:
            store.ensure_journal()
            with store.batch(None, len(new) + 1, Match.ALL) as batch:
                swaps = [
                    Swap(Row(row.id, row.key, _GONE if i in stale else row.value), new[i])
                    for i, row in enumerate(batch.rows)
                ]
                applied = batch.swap(swaps, "run-swap")
        finally:
            store.close()
        return applied, _values(table)

    def test_every_row_holding_what_was_read_is_replaced_and_journaled(
        self, table: UserTable
    ) -> None:
        old, new = _documents(5, "old"), _documents(5, "new")
        table.insert(enumerate(old, 1))
        applied, after = self._swap(table, new, stale=frozenset({1, 3}))
        assert applied == [True, False, True, False, True]
        assert after == {
            1: json.loads(new[0]),
            2: json.loads(old[1]),
            3: json.loads(new[2]),
            4: json.loads(old[3]),
            5: json.loads(new[4]),
        }
        assert sorted(key for _, key in table.journal()) == ["1", "3", "5"]

    def test_a_batch_larger_than_one_statement(
        self, table: UserTable, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(_sql, "_JOINED_ROWS", 7)  # PostgreSQL: three statements of 7, 7, 6
        old, new = _documents(20, "old"), _documents(20, "new")
        table.insert(enumerate(old, 1))
        applied, after = self._swap(table, new, stale=frozenset({8}))
        assert applied == [i != 8 for i in range(20)]
        assert after[9] == json.loads(old[8])
        assert [after[i + 1] for i in range(20) if i != 8] == [
            json.loads(text) for i, text in enumerate(new) if i != 8
        ]

    def test_the_journal_holds_each_replaced_row_however_many_statements_it_takes(
        self, table: UserTable
    ) -> None:
        # 250 rows: on SQLite the journal is three multi-row INSERTs (100, 100, 50 rows).
        old, new = _documents(250, "old"), _documents(250, "new")
        table.insert(enumerate(old, 1))
        stale = frozenset({0, 99, 100, 249})
        applied, _ = self._swap(table, new, stale=stale)
        assert applied == [i not in stale for i in range(250)]
        store = open_store(table.url, Target(table.table, "ssn"))
        try:
            entries = store.journal("run-swap")
        finally:
            store.close()
        assert sorted(
            (int(e.row_key), json.loads(e.old_value), json.loads(e.new_value)) for e in entries
        ) == [(i + 1, json.loads(old[i]), json.loads(new[i])) for i in range(250) if i not in stale]


def _pg_ids_table(postgres_url: str, table: str, id_type: str, ids: list[str]) -> None:
    """``table (rid <id_type> PRIMARY KEY, v text)`` holding ``old-<i>`` for each id."""
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute(f"DROP TABLE IF EXISTS {table}")
        db.execute(
            "DO $$ BEGIN CREATE TYPE swap_mood AS ENUM ('sad', 'ok', 'happy'); "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        db.execute(f"CREATE TABLE {table} (rid {id_type} PRIMARY KEY, v text)")
        for i, rid in enumerate(ids):
            db.execute(f"INSERT INTO {table} VALUES (%s::{id_type}, %s)", [rid, f"old-{i}"])


class TestJoinedSwapOnPostgres:
    """Ids of other types than integer compare as the one-row statement compared them: the
    joined statement casts each id to the column's own type."""

    IDS = {  # noqa: RUF012 - read only
        "text": ["a", "b", "c"],
        "uuid": [
            "00000000-0000-0000-0000-000000000001",
            "00000000-0000-0000-0000-000000000002",
            "00000000-0000-0000-0000-000000000003",
        ],
        "bigint": ["1", "5000000000", "9000000000000"],
        "numeric": ["1", "2.5", "10"],
        "character(8)": ["a", "bb", "ccc"],  # read back padded with blanks
        "swap_mood": ["sad", "ok", "happy"],  # an enum: no operator with text
        "macaddr": ["08:00:2b:01:02:03", "08:00:2b:01:02:04", "08:00:2b:01:02:05"],
        "timestamp": ["2024-01-01 00:00:00", "2024-01-01 00:00:00.5", "2024-01-02 00:00:00"],
        "double precision": ["0.1", "1", "2.5"],
    }

    @pytest.mark.parametrize("id_type", list(IDS))
    def test_ids_of_any_type(self, postgres_url: str, id_type: str) -> None:
        _pg_ids_table(postgres_url, "swap_ids", id_type, self.IDS[id_type])
        store = open_store(postgres_url, Target("swap_ids", "v", id_column="rid"))
        try:
            store.check(writable=True)
            with store.batch(None, 10, Match.ALL) as batch:
                swaps = [Swap(row, f"new-{i}") for i, row in enumerate(batch.rows)]
                assert batch.swap(swaps, None) == [True, True, True]
            with psycopg.connect(postgres_url, autocommit=True) as db:
                found = sorted(v for (v,) in db.execute("SELECT v FROM swap_ids").fetchall())
                db.execute("DROP TABLE swap_ids")
        finally:
            store.close()
        assert found == ["new-0", "new-1", "new-2"]


class TestIdColumnMustIdentifyRows:
    """Rows are read by id in keyset order: an id column that repeats, or a row without an
    id, would be skipped without a trace (and a census would call the table clean). Such a
    target is refused before anything is read."""

    SQLITE = (  # columns, a row with a NULL id, what is refused
        ("uid INTEGER, ssn TEXT", True, "not unique"),
        ("uid INTEGER, ssn TEXT, UNIQUE (uid, ssn)", True, "not unique"),  # only with ssn
        ("uid TEXT UNIQUE, ssn TEXT", True, "have no 'uid'"),
        ("uid INTEGER PRIMARY KEY, ssn TEXT", False, None),  # the rowid: never NULL
        ("uid INTEGER PRIMARY KEY DESC, ssn TEXT", True, "have no 'uid'"),  # not the rowid
        ("uid TEXT PRIMARY KEY, ssn TEXT", True, "have no 'uid'"),  # SQLite lets it be NULL
        ("uid TEXT NOT NULL UNIQUE, ssn TEXT", False, None),
    )

    @pytest.mark.parametrize(("columns", "null", "refused"), SQLITE)
    def test_sqlite(self, tmp_path: Path, columns: str, null: bool, refused: str | None) -> None:
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE t ({columns})")
            db.execute("CREATE UNIQUE INDEX t_partial ON t (ssn) WHERE ssn IS NOT NULL")
            db.execute(
                "INSERT INTO t (uid, ssn) VALUES (?, 'a'), ('2', 'b')", [None if null else "1"]
            )
        self._check(f"sqlite:///{path}", refused)

    SQLITE_COLLATIONS = (  # the id column, its unique index, what is refused
        ("uid TEXT NOT NULL COLLATE NOCASE", "(uid COLLATE BINARY)", "with BINARY, the reads"),
        ("uid TEXT NOT NULL COLLATE RTRIM", "(uid COLLATE BINARY)", "with the column's RTRIM"),
        ("uid TEXT NOT NULL COLLATE RTRIM", "(uid COLLATE NOCASE)", "with NOCASE"),
        ("uid TEXT NOT NULL COLLATE NOCASE, PRIMARY KEY (uid COLLATE BINARY)", None, "BINARY"),
        ("uid TEXT NOT NULL COLLATE NOCASE", "(uid)", None),  # the column's own
        ("uid TEXT NOT NULL COLLATE NOCASE UNIQUE", None, None),
        ("uid TEXT NOT NULL", "(uid COLLATE NOCASE)", None),  # unique case-blind: unique
        ("uid TEXT NOT NULL", "(uid COLLATE RTRIM)", None),
        ("uid TEXT NOT NULL COLLATE NOCASE PRIMARY KEY", "WITHOUT ROWID", None),
    )

    @pytest.mark.parametrize(("column", "index", "refused"), SQLITE_COLLATIONS)
    def test_sqlite_unique_index_compares_as_the_reads(
        self, tmp_path: Path, column: str, index: str | None, refused: str | None
    ) -> None:
        # 'a' and 'A' are one id to a NOCASE column's `uid > ?` and ORDER BY: a BINARY unique
        # index lets both in, and a batch ending at one skipped the other.
        path = tmp_path / "ids.db"
        rowid = " WITHOUT ROWID" if index == "WITHOUT ROWID" else ""
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE t (ssn TEXT, {column}){rowid}")
            if index is not None and not rowid:
                db.execute(f"CREATE UNIQUE INDEX t_uid ON t {index}")
        self._check(f"sqlite:///{path}", refused)

    def test_sqlite_a_collation_mismatch_is_refused_before_migrate_skips_rows(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # It ran 'completed, changed 2' in batches of one and left 'A' and 'B' legacy.
        hybrid_local_env(tmp_path, monkeypatch, "ab" * 32)
        path = tmp_path / "nocase.db"
        legacy = [(uid, legacy_envelope("ab" * 32, "x")) for uid in ("a", "A", "b", "B")]
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (uid TEXT NOT NULL COLLATE NOCASE, ssn TEXT)")
            db.execute("CREATE UNIQUE INDEX users_uid ON users (uid COLLATE BINARY)")
            db.executemany("INSERT INTO users VALUES (?, ?)", legacy)
        args = ["--database", f"sqlite:///{path}", "--table", "users", "--column", "ssn"]
        args += ["--id-column", "uid"]
        code, _, err = run_main(["migrate", *args, "--batch-size", "1"], capsys)
        assert code == 73
        assert "unique index 'users_uid' compares with BINARY" in err
        assert "--" not in err
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT uid, ssn FROM users").fetchall() == legacy

    PROBED = (  # a declared id column, and what 'a' against 'A' and 'a ' says of its collation
        "uid TEXT COLLATE NOCASE, ssn TEXT",
        "uid COLLATE rtrim, ssn TEXT",
        "uid TEXT, ssn TEXT CHECK (ssn COLLATE NOCASE <> 'uid COLLATE NOCASE')",
        '"uid" /* COLLATE NOCASE */ TEXT, ssn TEXT, UNIQUE (uid COLLATE NOCASE)',
        "ssn TEXT, uid TEXT NOT NULL DEFAULT 'x' COLLATE NOCASE, PRIMARY KEY (uid COLLATE BINARY)",
        "uid INTEGER PRIMARY KEY AUTOINCREMENT, ssn TEXT",
    )

    @pytest.mark.parametrize("columns", PROBED)
    def test_sqlite_the_collation_found_is_the_one_the_reads_use(
        self, tmp_path: Path, columns: str
    ) -> None:
        # The collation is learnt from the table's CREATE TABLE run on an empty database;
        # here it is checked against what the keyset's `uid = ?` does on the table itself.
        path = tmp_path / "probe.db"
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE Probed ({columns})")
            db.execute(
                "INSERT INTO Probed (uid, ssn) VALUES (?, 'a')", [7 if "INT" in columns else "a"]
            )
            nocase = db.execute("SELECT count(*) FROM Probed WHERE uid = 'A'").fetchone()
            rtrim = db.execute("SELECT count(*) FROM Probed WHERE uid = 'a  '").fetchone()
        expected = "NOCASE" if nocase[0] else "RTRIM" if rtrim[0] else "BINARY"
        store = open_store(f"sqlite:///{path}", Target("probed", "ssn", id_column="uid"))
        try:
            _, sql = sqlite._schema_entry(store.connection.cursor(), store)  # type: ignore[arg-type]
            assert sqlite._declared_collation(store, sql) == expected  # type: ignore[arg-type]
        finally:
            store.close()

    APPLICATION_ONLY = (  # functions and collations this process does not have
        ("uid TEXT NOT NULL COLLATE app_order UNIQUE, ssn TEXT", None),  # the same collation
        ("uid TEXT NOT NULL COLLATE app_order, ssn TEXT, UNIQUE (uid COLLATE BINARY)", "BINARY"),
        # A BINARY column: ids unique under the application's collation are distinct bytes.
        ("uid TEXT NOT NULL, ssn TEXT, UNIQUE (uid COLLATE app_order)", None),
        ("uid TEXT NOT NULL UNIQUE, ssn TEXT, g TEXT GENERATED ALWAYS AS (app_fn(ssn))", None),
        ("uid TEXT NOT NULL UNIQUE, ssn TEXT CHECK (app_fn(ssn, 1) IS NOT NULL)", None),
        ("uid TEXT NOT NULL UNIQUE, ssn TEXT, note TEXT COLLATE app_order", None),
        ('uid TEXT NOT NULL UNIQUE, ssn TEXT, note TEXT COLLATE "app order"', None),
        (  # more functions than a fixed number of tries stood in for
            "uid TEXT NOT NULL UNIQUE, ssn TEXT CHECK ("
            + " AND ".join(f"app_fn{n}(ssn) IS NOT NULL" for n in range(20))
            + ")",
            None,
        ),
    )

    @pytest.mark.parametrize(("columns", "refused"), APPLICATION_ONLY)
    def test_sqlite_what_only_the_application_has_is_stood_in_for(
        self, tmp_path: Path, columns: str, refused: str | None
    ) -> None:
        # The table's CREATE TABLE names them; the check's empty copy of it must still run.
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            for collation in ("app_order", "app order"):
                db.create_collation(collation, lambda a, b: (a > b) - (a < b))
            for function in ["app_fn", *(f"app_fn{n}" for n in range(20))]:
                db.create_function(function, -1, lambda *a: a[0], deterministic=True)
            db.execute(f"CREATE TABLE t ({columns})")
        self._check(f"sqlite:///{path}", refused)

    def test_sqlite_a_table_named_as_the_probe_index_is_read(self, tmp_path: Path) -> None:
        # The probe's index was named heimdall_probe, which such a table already takes.
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE heimdall_probe (uid TEXT NOT NULL UNIQUE, ssn TEXT)")
        self._check(f"sqlite:///{path}", None, table="heimdall_probe")

    def test_sqlite_a_table_sqlite_cannot_copy_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (uid TEXT NOT NULL UNIQUE, ssn TEXT)")
        store = open_store(f"sqlite:///{path}", Target("t", "ssn", id_column="uid"))
        try:
            with pytest.raises(StoreError, match="cannot tell the collation of id column 'uid'"):
                sqlite._declared_collation(store, "CREATE VIRTUAL TABLE t USING no_such_module")  # type: ignore[arg-type]
        finally:
            store.close()

    def test_sqlite_an_index_name_holding_a_quote_is_read(self, tmp_path: Path) -> None:
        # It was refused: 'SQLite could not inspect the table ...: near "q": syntax error'.
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (uid TEXT NOT NULL, ssn TEXT)")
            db.execute("""CREATE UNIQUE INDEX "u""q" ON t (uid)""")
        self._check(f"sqlite:///{path}", None)

    def test_sqlite_a_view_is_refused_as_a_view(self, tmp_path: Path) -> None:
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (uid INTEGER PRIMARY KEY, ssn TEXT)")
            db.execute("CREATE VIEW t AS SELECT uid, ssn FROM users")
        self._check(f"sqlite:///{path}", "'t' is a view: no index of a view proves")

    POSTGRES = (
        ("uid integer, ssn text", "not unique"),
        ("uid integer, ssn text, UNIQUE (uid, ssn)", "not unique"),
        ("uid text UNIQUE, ssn text", "have no 'uid'"),
        ("uid integer PRIMARY KEY, ssn text", None),
        ("uid text NOT NULL UNIQUE, ssn text", None),
    )

    @pytest.mark.parametrize(("columns", "refused"), POSTGRES)
    def test_postgres(self, postgres_url: str, columns: str, refused: str | None) -> None:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS ids_probe")
            db.execute(f"CREATE TABLE ids_probe ({columns})")
            # A partial unique index on the id does not make it unique.
            db.execute("CREATE UNIQUE INDEX ON ids_probe (uid) WHERE ssn = 'no such value'")
            nullable = "NOT NULL" not in columns and "PRIMARY KEY" not in columns
            db.execute(
                "INSERT INTO ids_probe (uid, ssn) VALUES (%s, 'a'), ('2', 'b')",
                [None if nullable else "1"],
            )
        try:
            self._check(postgres_url, refused, table="ids_probe")
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                db.execute("DROP TABLE ids_probe")

    _CI = "heimdall_test_ci"  # case-blind, nondeterministic: 'a' and 'A' are one id
    POSTGRES_SHAPES = (  # statements (the probe is ids_probe), what is refused
        (
            [
                "CREATE TABLE ids_probe (uid integer PRIMARY KEY, ssn text)",
                "CREATE TABLE ids_probe_child () INHERITS (ids_probe)",
                "INSERT INTO ids_probe VALUES (1, 'a'), (2, 'b')",
                "INSERT INTO ids_probe_child VALUES (1, 'c')",  # 1 twice, read as one table
            ],
            "'ids_probe' has inheritance children \\(1\\): reading it reads their rows too",
        ),
        (
            [
                "CREATE TABLE ids_probe (uid integer PRIMARY KEY, ssn text) "
                "PARTITION BY RANGE (uid)",
                "CREATE TABLE ids_probe_child PARTITION OF ids_probe FOR VALUES FROM (0) TO (9)",
                "INSERT INTO ids_probe VALUES (1, 'a'), (2, 'b')",
            ],
            None,  # its unique index covers its partitions
        ),
        (
            [
                "CREATE TABLE ids_probe_child (uid integer PRIMARY KEY, ssn text)",
                "CREATE VIEW ids_probe AS SELECT * FROM ids_probe_child",
            ],
            "'ids_probe' is a view: no index of a view proves its id column 'uid' unique",
        ),
        (
            [
                "CREATE TABLE ids_probe_child (uid integer PRIMARY KEY, ssn text)",
                "CREATE MATERIALIZED VIEW ids_probe AS SELECT * FROM ids_probe_child",
                "CREATE UNIQUE INDEX ON ids_probe (uid)",
            ],
            "'ids_probe' is a materialized view",  # was: 'does not exist'
        ),
        (["CREATE TABLE ids_probe (uid integer NOT NULL, ssn text, EXCLUDE (uid WITH =))"], None),
        (
            [
                "CREATE TABLE ids_probe (uid int4range NOT NULL, ssn text, "
                "EXCLUDE USING gist (uid WITH =))"
            ],
            None,
        ),
        (  # no two overlap, but 'empty' overlaps nothing and may repeat
            [
                "CREATE TABLE ids_probe (uid int4range NOT NULL, ssn text, "
                "EXCLUDE USING gist (uid WITH &&))"
            ],
            "not unique",
        ),
        (  # no two ids may differ, and equal ids may repeat: a reason of its own
            [
                "CREATE TABLE ids_probe (uid inet NOT NULL, ssn text, "
                "EXCLUDE USING gist (uid inet_ops WITH <>))"
            ],
            "its exclusion constraint 'ids_probe_uid_excl' excludes with operator "
            "<>\\(inet,inet\\), which is not its type's equality",
        ),
        (
            [
                "CREATE TABLE ids_probe (uid integer NOT NULL, ssn text, "
                "EXCLUDE (uid WITH =) WHERE (ssn IS NOT NULL))"
            ],
            "not unique",
        ),
        (
            [
                f"CREATE TABLE ids_probe (uid text COLLATE {_CI} NOT NULL, ssn text)",
                'CREATE UNIQUE INDEX ids_probe_uid ON ids_probe (uid COLLATE "C")',
            ],
            "unique index 'ids_probe_uid' compares with collation 'C', the reads with the "
            f"column's nondeterministic '{_CI}'",
        ),
        ([f"CREATE TABLE ids_probe (uid text COLLATE {_CI} NOT NULL UNIQUE, ssn text)"], None),
        (
            [
                'CREATE TABLE ids_probe (uid text COLLATE "C" NOT NULL, ssn text)',
                f"CREATE UNIQUE INDEX ids_probe_uid ON ids_probe (uid COLLATE {_CI})",
            ],
            None,  # unique case-blind, so unique as bytes: the column's "C" compares bytes
        ),
        (["CREATE TABLE ids_probe (uid varchar(36) PRIMARY KEY, ssn text)"], None),  # text's
        (
            [
                "CREATE TABLE ids_probe (uid text NOT NULL, ssn text)",
                "CREATE UNIQUE INDEX ON ids_probe (uid text_pattern_ops)",  # text's equality
            ],
            None,
        ),
    )

    @pytest.mark.parametrize(("statements", "refused"), POSTGRES_SHAPES)
    def test_postgres_shapes(
        self, postgres_url: str, statements: list[str], refused: str | None
    ) -> None:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            self._drop_probe(db)
            db.execute(
                f"CREATE COLLATION IF NOT EXISTS {self._CI} "
                "(provider = icu, locale = 'und-u-ks-level2', deterministic = false)"
            )
            for statement in statements:
                db.execute(statement)
        try:
            self._check(postgres_url, refused, table="ids_probe")
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                self._drop_probe(db)

    def test_postgres_a_unique_index_with_another_equality_is_refused(
        self, postgres_url: str
    ) -> None:
        # citext's reads hold 'a' and 'A' one id; a text_ops unique index lets both in, and
        # `uid > 'a'` skipped 'A'.
        with psycopg.connect(postgres_url, autocommit=True) as db:
            if db.execute("SELECT 1 FROM pg_extension WHERE extname = 'citext'").fetchone() is None:
                pytest.skip("no citext extension in this database")
            self._drop_probe(db)
            db.execute("CREATE TABLE ids_probe (uid citext NOT NULL, ssn text)")
            db.execute("CREATE UNIQUE INDEX ids_probe_uid ON ids_probe (uid text_ops)")
        try:
            self._check(
                postgres_url,
                "its unique index 'ids_probe_uid' compares with another equality than its type's",
                table="ids_probe",
            )
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                self._drop_probe(db)

    def test_postgres_a_foreign_table_is_refused_as_one(self, postgres_url: str) -> None:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            if (
                db.execute(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'file_fdw'"
                ).fetchone()
                is None
            ):
                pytest.skip("no file_fdw here")
            self._drop_probe(db)
            created = (
                db.execute("SELECT 1 FROM pg_extension WHERE extname = 'file_fdw'").fetchone()
                is None
            )
            db.execute("CREATE EXTENSION IF NOT EXISTS file_fdw")
            db.execute("CREATE SERVER IF NOT EXISTS ids_probe_files FOREIGN DATA WRAPPER file_fdw")
            db.execute(
                "CREATE FOREIGN TABLE ids_probe (uid integer NOT NULL, ssn text) "
                "SERVER ids_probe_files OPTIONS (filename '/dev/null')"
            )
        try:
            self._check(
                postgres_url, "'ids_probe' is a foreign table: no index here", table="ids_probe"
            )
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                db.execute("DROP SERVER ids_probe_files CASCADE")
                if created:
                    db.execute("DROP EXTENSION file_fdw")

    @staticmethod
    def _drop_probe(db: psycopg.Connection[tuple[object, ...]]) -> None:
        kind = db.execute(
            "SELECT relkind FROM pg_class WHERE oid = to_regclass('ids_probe')"
        ).fetchone()
        what = {"v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE"}.get(
            kind[0] if kind else "r", "TABLE"
        )
        db.execute(f"DROP {what} IF EXISTS ids_probe CASCADE")
        db.execute("DROP TABLE IF EXISTS ids_probe_child CASCADE")

    def test_an_invalid_unique_index_does_not_count(self, postgres_url: str) -> None:
        # What a CREATE UNIQUE INDEX CONCURRENTLY that met a repeated id leaves behind.
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute("DROP TABLE IF EXISTS ids_probe")
            db.execute("CREATE TABLE ids_probe (uid integer NOT NULL, ssn text)")
            db.execute("INSERT INTO ids_probe VALUES (1, 'a'), (1, 'b'), (2, 'c')")
            with pytest.raises(psycopg.errors.UniqueViolation):
                db.execute("CREATE UNIQUE INDEX CONCURRENTLY ids_probe_uid ON ids_probe (uid)")
        try:
            self._check(postgres_url, "not unique", table="ids_probe")
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                db.execute("DROP TABLE ids_probe")

    def test_the_journal_and_a_rollback_need_no_unique_id(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # They read the journal, not the rows in id order: an older run's journal can still be
        # listed, purged and rolled back on a table that has no unique id.
        hybrid_local_env(tmp_path, monkeypatch, "ab" * 32)
        path = tmp_path / "j.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (uid INTEGER, ssn TEXT)")
            db.execute("INSERT INTO users VALUES (1, 'x')")
        args = ["--database", f"sqlite:///{path}", "--table", "users", "--column", "ssn"]
        args += ["--id-column", "uid"]
        code, _, err = run_main(["journal", "list", *args], capsys)
        assert code == 0, err
        code, _, err = run_main(["journal", "purge", *args, "--run", "run-old"], capsys)
        assert code == 0, err
        code, _, err = run_main(["migrate", *args, "--rollback", "run-old"], capsys)
        assert "not unique" not in err
        code, _, err = run_main(["status", *args], capsys)
        assert code == 73
        assert "not unique" in err

    @staticmethod
    def _check(url: str, refused: str | None, table: str = "t") -> None:
        def check() -> None:
            store = open_store(url, Target(table, "ssn", id_column="uid"))
            try:
                store.check(writable=False)
            finally:
                store.close()

        if refused is None:
            check()
        else:
            with pytest.raises(StoreError, match=refused):
                check()

    @pytest.mark.parametrize(
        ("id_type", "named"),
        [
            ("jsonb", "is jsonb"),
            ("jsonb[]", "is jsonb[], built on jsonb"),
            ("store_json_id", "is store_json_id, built on jsonb"),
        ],
    )
    def test_postgres_a_jsonb_id_is_refused_before_anything_is_read(
        self,
        postgres_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        id_type: str,
        named: str,
    ) -> None:
        # psycopg reads a jsonb id as a dict or list it cannot pass back: migrate failed
        # mid-run ("cannot adapt type 'dict'"; the list [1] went as smallint[]).
        hybrid_local_env(tmp_path, monkeypatch, "ab" * 32)
        table = f"store_json_ids_{os.urandom(4).hex()}"
        legacy = legacy_envelope("ab" * 32, "123-45-6789")
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(
                "DO $$ BEGIN CREATE DOMAIN store_json_id AS jsonb; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
            db.execute(f"CREATE TABLE {table} (uid {id_type} PRIMARY KEY, ssn text)")
            one, two = (
                ("[1]", '{"a": 2}') if id_type != "jsonb[]" else ("{[1]}", '{"{\\"a\\": 2}"}')
            )
            db.execute(f"INSERT INTO {table} VALUES (%s, %s), (%s, %s)", [one, legacy, two, legacy])
        try:
            args = ["--database", postgres_url, "--table", table, "--column", "ssn"]
            code, _, err = run_main(["migrate", *args, "--id-column", "uid"], capsys)
            with psycopg.connect(postgres_url, autocommit=True) as db:
                values = [v for (v,) in db.execute(f"SELECT ssn FROM {table}").fetchall()]
        finally:
            with psycopg.connect(postgres_url, autocommit=True) as db:
                db.execute(f"DROP TABLE {table}")
        assert code == 73
        assert err.count("\n") == 1
        assert f"id column 'uid' of '{table}' {named}: its ids are read as JSON documents" in err
        assert values == [legacy, legacy]

    def test_the_cut_over_gate_is_not_passed_on_a_table_it_cannot_read_whole(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # 5,001 rows, the last id twice: a census in batches of 5,000 read the first 5,000
        # and never the legacy value in the 5,001st, and the gate passed.
        hybrid_local_env(tmp_path, monkeypatch, "ab" * 32)
        path = tmp_path / "big.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (uid INTEGER, ssn TEXT)")
            rows = [(i, "[REDACTED]") for i in range(1, 5001)]
            db.executemany(
                "INSERT INTO users VALUES (?, ?)", [*rows, (5000, legacy_envelope("ab" * 32, "x"))]
            )
        args = ["--database", f"sqlite:///{path}", "--table", "users", "--column", "ssn"]
        code, _, err = run_main(["status", *args, "--id-column", "uid", "--fail-if-legacy"], capsys)
        assert code == 73
        assert "id column 'uid' of 'users' is not unique" in err


class TestRestoreFindsEveryId:
    """A rollback finds each journaled row again by its id in the column's own type: the
    journal's key was Python's ``str()`` of the id and the restore compared it with the
    database's text of the id, so a timestamp, bytea, float, char(N), interval, inet or
    boolean id (on SQLite a real or a blob) was counted as changed since and left migrated."""

    POSTGRES = {  # noqa: RUF012 - read only
        "integer": ["1", "2", "-3"],
        "bigint": ["1", "5000000000"],
        "text": ["a", "b c", "ü"],
        "character varying(10)": ["a", "b"],
        "uuid": ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"],
        "numeric": ["1", "2.50", "1e20"],
        "character(8)": ["a", "bb"],
        "swap_mood": ["sad", "ok"],
        "timestamp": ["2024-01-01 00:00:00", "2024-01-01 00:00:00.5"],
        "timestamp with time zone": ["2024-01-01 00:00:00+00", "2024-06-01 12:00:00.25+02"],
        "time": ["12:00:00.5"],
        "time with time zone": ["12:00:00+02"],
        "interval": ["1 day", "1 mon", "-1 day 02:00:00", "00:00:00.5"],
        "double precision": ["0.1", "1", "1e20", "NaN", "Infinity"],
        "real": ["0.1", "1"],
        "bytea": ["\\x00ff", "\\x61"],
        "inet": ["10.0.0.1", "10.0.0.0/24", "::1"],
        "boolean": ["true", "false"],
        "integer[]": ["{1,2}", "{3}"],
    }
    # What a journal of an earlier version (Python's text of the id) cannot say: an array's
    # text is Python's list, which no cast reads. Those rows are counted, not restored.
    UNREADABLE_BEFORE = frozenset({"integer[]"})

    def _migrate(self, url: str, target: Target) -> list[Row]:
        """Swap every row to ``new-<i>`` under run ``run-ids``; the rows read."""
        store = open_store(url, target)
        try:
            store.check(writable=True)
            store.ensure_journal()
            with store.batch(None, 100, Match.ALL) as batch:
                rows = batch.rows
                swaps = [Swap(row, f"new-{i}") for i, row in enumerate(rows)]
                assert all(batch.swap(swaps, "run-ids"))
            return rows
        finally:
            store.close()

    def _restore(self, url: str, target: Target) -> tuple[list[bool], int]:
        """Roll ``run-ids`` back: per journal row whether it was restored; journal rows left."""
        store = open_store(url, target)
        try:
            store.check(writable=True, scans=False)
            restored = store.restore(store.journal("run-ids"))
            return restored, len(store.journal("run-ids"))
        finally:
            store.close()

    @pytest.fixture
    def pg_table(self, postgres_url: str) -> Iterator[str]:
        """A table name of the test's own (other sessions may run these tests at once)."""
        name = f"restore_ids_{os.urandom(4).hex()}"
        yield name
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {name}")
            db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [name])

    @pytest.mark.parametrize("id_type", list(POSTGRES))
    def test_postgres(self, postgres_url: str, pg_table: str, id_type: str) -> None:
        ids = self.POSTGRES[id_type]
        _pg_ids_table(postgres_url, pg_table, id_type, ids)
        target = Target(pg_table, "v", id_column="rid")
        self._migrate(postgres_url, target)
        restored, left = self._restore(postgres_url, target)
        assert restored == [True] * len(ids)
        assert self._values(postgres_url, pg_table) == [f"old-{i}" for i in range(len(ids))]
        assert left == 0

    @pytest.mark.parametrize("id_type", list(POSTGRES))
    def test_postgres_journal_of_an_earlier_version(
        self, postgres_url: str, pg_table: str, id_type: str
    ) -> None:
        # Journals written before this fix hold Python's str() of the id; users have them.
        ids = self.POSTGRES[id_type]
        _pg_ids_table(postgres_url, pg_table, id_type, ids)
        target = Target(pg_table, "v", id_column="rid")
        rows = self._migrate(postgres_url, target)
        with psycopg.connect(postgres_url, autocommit=True) as db:
            for i, row in enumerate(rows):
                db.execute(
                    "UPDATE heimdall_kms_journal SET row_key = %s "
                    "WHERE table_name = %s AND new_value = %s",
                    [row.key, pg_table, f"new-{i}"],
                )
        restored, left = self._restore(postgres_url, target)
        found = self._values(postgres_url, pg_table)
        if id_type in self.UNREADABLE_BEFORE:
            assert restored == [False] * len(ids)
            assert found == [f"new-{i}" for i in range(len(ids))]
            assert left == len(ids)  # kept, as a row changed since is
        else:
            assert restored == [True] * len(ids)
            assert found == [f"old-{i}" for i in range(len(ids))]
            assert left == 0

    def test_postgres_a_key_that_reads_as_no_id_fails_its_own_row(
        self, postgres_url: str, pg_table: str
    ) -> None:
        _pg_ids_table(postgres_url, pg_table, "integer", ["1", "2", "3"])
        target = Target(pg_table, "v", id_column="rid")
        self._migrate(postgres_url, target)
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(
                "UPDATE heimdall_kms_journal SET row_key = 'not an integer' "
                "WHERE table_name = %s AND row_key = '2'",
                [pg_table],
            )
        restored, left = self._restore(postgres_url, target)
        assert sorted(restored) == [False, True, True]
        assert self._values(postgres_url, pg_table) == ["new-1", "old-0", "old-2"]
        assert left == 1

    # Sessions whose settings change how ids are written as text and read back: the journal
    # was the migrating session's ``id::text``, read back under the rolling-back session's.
    STYLES = {  # noqa: RUF012 - read only
        "default": "",
        "sql-dmy": "-c DateStyle=SQL,DMY -c IntervalStyle=sql_standard -c extra_float_digits=0 "
        "-c TimeZone=Asia/Kolkata",
        "german": "-c DateStyle=German -c IntervalStyle=postgres_verbose "
        "-c extra_float_digits=1 -c TimeZone=America/New_York -c bytea_output=escape",
        "iso-8601": "-c DateStyle=Postgres,YMD -c IntervalStyle=iso_8601 -c TimeZone=UTC-3",
    }
    STYLED_IDS = {  # noqa: RUF012 - read only
        "timestamp": ["2024-01-02 03:04:05", "2024-11-12 00:00:00.5", "1999-12-31 23:59:59"],
        "timestamp with time zone": ["2024-01-02 03:04:05+00", "2024-06-01 12:00:00.25+05:30"],
        "date": ["2024-01-02", "2024-12-01"],
        "time with time zone": ["12:00:00+02", "12:00:00-05:30"],
        "interval": ["1 day", "-1 day 02:00:00", "1 mon -3 days", "-00:00:00.5"],
        "double precision": ["0.1", "0.30000000000000004", "1e20", "123456789.123456789"],
        "real": ["0.1", "3.4028235e38", "1.0000001"],
        "bytea": ["\\x00ff", "\\x5c27"],
    }

    @pytest.mark.parametrize("id_type", list(STYLED_IDS))
    @pytest.mark.parametrize(
        ("migrated", "rolled_back"),
        [
            ("default", "sql-dmy"),
            ("sql-dmy", "german"),
            ("german", "iso-8601"),
            ("iso-8601", "default"),
        ],
    )
    def test_postgres_sessions_of_other_styles(
        self, postgres_url: str, pg_table: str, id_type: str, migrated: str, rolled_back: str
    ) -> None:
        # DateStyle SQL, DMY read back 01/02/2024 as 1 February (or refused 12/11/2024);
        # extra_float_digits=0 rounded a double's text (the swap compared the rounded value,
        # missing the row); IntervalStyle sql_standard's "-1 2:00:00" is -(1 day 2 hours), and
        # postgres_verbose's '@ 1 day' psycopg cannot load.
        ids = self.STYLED_IDS[id_type]
        _pg_ids_table(postgres_url, pg_table, id_type, ids)
        target = Target(pg_table, "v", id_column="rid")
        self._migrate(self._styled(postgres_url, migrated), target)
        restored, left = self._restore(self._styled(postgres_url, rolled_back), target)
        assert restored == [True] * len(ids)
        assert self._values(postgres_url, pg_table) == [f"old-{i}" for i in range(len(ids))]
        assert left == 0

    @pytest.mark.parametrize("id_type", list(STYLED_IDS))
    @pytest.mark.parametrize("style", ["sql-dmy", "german", "iso-8601"])
    def test_postgres_a_scan_reads_each_row_once_in_any_style(
        self, postgres_url: str, pg_table: str, id_type: str, style: str
    ) -> None:
        # A census reads by id after the last id read: under extra_float_digits=0 the id after
        # 0.1 came back as 0.3 twice (0.3, then 0.30000000000000004 read as 0.3), so the scan
        # never ended; a timestamptz in DateStyle German failed with a traceback.
        ids = self.STYLED_IDS[id_type]
        _pg_ids_table(postgres_url, pg_table, id_type, ids)
        store = open_store(self._styled(postgres_url, style), Target(pg_table, "v", "rid"))
        try:
            store.check(writable=False)
            read = [
                row.value for _, rows in zip(range(10), store.scan(1), strict=False) for row in rows
            ]
        finally:
            store.close()
        assert sorted(read) == [f"old-{i}" for i in range(len(ids))]

    def _styled(self, postgres_url: str, style: str) -> str:
        options = self.STYLES[style]
        if not options:
            return postgres_url
        joiner = "&" if "?" in postgres_url else "?"
        return f"{postgres_url}{joiner}options={quote(options)}"

    SQLITE = (  # the id column's declaration, its ids (SQLite keeps each value's own kind)
        ("INTEGER PRIMARY KEY", [1, 2, -3]),
        ("TEXT PRIMARY KEY NOT NULL", ["a", "1", "b'x'"]),
        ("REAL PRIMARY KEY NOT NULL", [0.1, 1.0, 1e20, 0.3, 0.30000000000000004]),
        ("NUMERIC PRIMARY KEY NOT NULL", [1, 2.5, "abc", 1e20]),
        ("BLOB PRIMARY KEY NOT NULL", [b"\x00\xff", b"ab", b"", 1, "x", 2.5]),
        ("PRIMARY KEY NOT NULL", [1, "1", 2.0, "2.0", b"z", "b'z'"]),  # one text, two ids
        ("INT PRIMARY KEY NOT NULL", [1, 2, "x"]),
    )

    @pytest.mark.parametrize(("declared", "ids"), SQLITE)
    def test_sqlite(self, tmp_path: Path, declared: str, ids: list[object]) -> None:
        path = tmp_path / "ids.db"
        with sqlite3.connect(path) as db:
            db.execute(f"CREATE TABLE t (rid {declared}, v TEXT)")
            db.executemany(
                "INSERT INTO t VALUES (?, ?)", [(r, f"old-{i}") for i, r in enumerate(ids)]
            )
        url, target = f"sqlite:///{path}", Target("t", "v", id_column="rid")
        self._migrate(url, target)
        restored, left = self._restore(url, target)
        with sqlite3.connect(path) as db:
            found = [v for (v,) in db.execute("SELECT v FROM t ORDER BY v")]
        assert restored == [True] * len(ids)
        assert found == sorted(f"old-{i}" for i in range(len(ids)))
        assert left == 0

    @staticmethod
    def _values(postgres_url: str, table: str) -> list[str]:
        with psycopg.connect(postgres_url, autocommit=True) as db:
            return sorted(v for (v,) in db.execute(f"SELECT v FROM {table}").fetchall())


class TestTriggersRunUnderTheSessionsSettings:
    """The settings a batch fixes to read ids as text (TimeZone UTC, DateStyle ISO, ...) were
    still in force when its UPDATE fired the application's own triggers: a BEFORE UPDATE
    trigger writing ``now()`` into a ``timestamp``, ``current_date`` or ``now()::text`` wrote
    other values than the application's session writes (an hour apart under Europe/Berlin, a
    day apart under the zones below). A swap and a restore write what the application would."""

    @pytest.fixture
    def pg_table(self, postgres_url: str) -> Iterator[str]:
        name = f"pins_trig_{os.urandom(4).hex()}"
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(
                f"CREATE TABLE {name} (id integer PRIMARY KEY, v text, stamped timestamp, "
                "day date, stamp_text text, zone text, style text)"
            )
            db.execute(f"INSERT INTO {name} (id, v) VALUES (1, 'old-1'), (2, 'old-2')")
            db.execute(
                f"CREATE FUNCTION {name}_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "NEW.stamped := now(); NEW.day := current_date; NEW.stamp_text := now()::text; "
                "NEW.zone := current_setting('TimeZone'); "
                "NEW.style := current_setting('DateStyle'); RETURN NEW; END $$"
            )
            db.execute(
                f"CREATE TRIGGER {name}_t BEFORE UPDATE ON {name} "
                f"FOR EACH ROW EXECUTE FUNCTION {name}_fn()"
            )
        yield name
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"DROP TABLE IF EXISTS {name}")
            db.execute(f"DROP FUNCTION IF EXISTS {name}_fn()")
            db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [name])

    @staticmethod
    def _zone() -> str:
        """A zone whose date is not UTC's now, and whose time is an hour or more from its
        midnight (so the application's and the tool's rows fall on one date)."""
        hour = datetime.now(UTC).hour
        return "Etc/GMT+12" if hour < 11 else "Pacific/Kiritimati"  # UTC-12, UTC+14

    @staticmethod
    def _written(url: str, table: str, row_id: int) -> tuple[datetime, str, str, str, str]:
        """What the trigger wrote into the row, its times' text as a shape (digits elided)."""
        with psycopg.connect(url, autocommit=True) as db:
            stamped, day, text, zone, style = db.execute(
                f"SELECT stamped, day::text, stamp_text, zone, style FROM {table} WHERE id = %s",
                [row_id],
            ).fetchone()
        shape = re.sub(r"\d", "n", re.sub(r"\.\d+", "", text))
        return stamped, day, shape, zone, style

    def _assert_as_the_application(self, url: str, table: str, row_id: int) -> None:
        app, tool = self._written(url, table, 1), self._written(url, table, row_id)
        assert tool[1:] == app[1:]  # date, the text's shape (its zone), the settings seen
        assert abs(tool[0] - app[0]) < timedelta(minutes=30)  # zones differ by hours

    @pytest.mark.parametrize("style", ["SQL,DMY", "ISO,MDY"])
    def test_swap_and_restore(self, postgres_url: str, pg_table: str, style: str) -> None:
        options = f"-c TimeZone={self._zone()} -c DateStyle={style}"
        joiner = "&" if "?" in postgres_url else "?"
        url = f"{postgres_url}{joiner}options={quote(options)}"
        with psycopg.connect(url, autocommit=True) as app:  # the application's own write
            app.execute(f"UPDATE {pg_table} SET v = 'app' WHERE id = 1")
        target = Target(pg_table, "v", id_column="id")
        store = open_store(url, target)
        try:
            store.check(writable=True)
            store.ensure_journal()
            with store.batch(1, 10, Match.ALL) as batch:
                assert batch.swap([Swap(row, "new") for row in batch.rows], "pins-run") == [True]
        finally:
            store.close()
        self._assert_as_the_application(url, pg_table, 2)
        store = open_store(url, target)
        try:
            store.check(writable=True, scans=False)
            assert store.restore(store.journal("pins-run")) == [True]
        finally:
            store.close()
        self._assert_as_the_application(url, pg_table, 2)
        with psycopg.connect(url, autocommit=True) as db:
            assert db.execute(f"SELECT v FROM {pg_table} WHERE id = 2").fetchone() == ("old-2",)


class TestRestoreCost:
    """A rollback's work per row does not grow with the run: each journal row was deleted by
    a search among all the run's journal rows (and, on SQLite, each row found by a scan of
    the table), so rolling back a run of n rows took n² steps (3.7 ms a row at 6,000 rows)."""

    @staticmethod
    def _steps_per_row(tmp_path: Path, rows: int) -> float:
        """SQLite virtual-machine steps per row of a rollback of ``rows`` rows."""
        path = tmp_path / f"cost-{rows}.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            db.executemany("INSERT INTO t VALUES (?, 'old')", [(i,) for i in range(rows)])
        store = open_store(f"sqlite:///{path}", Target("t", "v"))
        try:
            store.ensure_journal()
            with store.batch(None, rows, Match.ALL) as batch:
                swaps = [Swap(row, f"new-{row.key}") for row in batch.rows]
                assert all(batch.swap(swaps, "run-cost"))
            entries = store.journal("run-cost")
            steps = [0]

            def count() -> int:
                steps[0] += 1
                return 0

            store.connection.set_progress_handler(count, 100)  # type: ignore[attr-defined]
            assert all(store.restore(entries))
            store.connection.set_progress_handler(None, 100)  # type: ignore[attr-defined]
            assert store.journal("run-cost") == []
        finally:
            store.close()
        return steps[0] / rows

    def test_a_ten_times_longer_run_costs_about_as_much_per_row(self, tmp_path: Path) -> None:
        short, long = self._steps_per_row(tmp_path, 300), self._steps_per_row(tmp_path, 3000)
        assert long < 1.5 * short, (short, long)
