"""A user table on SQLite or PostgreSQL, filled with the kinds of value Heimdall stores.

The ``table`` fixture (tests/conftest.py) makes one for each of :data:`BACKENDS`; a test that
wants fewer says so with ``@pytest.mark.parametrize("table", [...], indirect=True)``.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BACKENDS = ("sqlite", "postgres-text", "postgres-jsonb", "postgres-json")


@dataclass
class UserTable:
    """``<name> (id integer primary key, <column> text|jsonb|json)`` in one of the databases."""

    backend: str  # sqlite | postgres-text | postgres-jsonb | postgres-json
    url: str
    table: str
    column: str = "ssn"
    _path: Path | None = None
    _pg: str | None = None

    @classmethod
    def create(cls, backend: str, tmp_path: Path, postgres_url: str | None) -> UserTable:
        name = f"customers_{secrets.token_hex(4)}"
        if backend == "sqlite":
            path = tmp_path / "app.db"
            with sqlite3.connect(path) as db:
                db.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, ssn TEXT)")
            return cls(backend, f"sqlite:///{path}", name, _path=path)
        assert postgres_url is not None
        kind = backend.removeprefix("postgres-")
        with psycopg.connect(postgres_url, autocommit=True) as db:
            db.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, ssn {kind})")
        return cls(backend, postgres_url, name, _pg=postgres_url)

    @property
    def json_column(self) -> bool:
        return self.backend in ("postgres-jsonb", "postgres-json")

    @property
    def _cast(self) -> str:
        return "::" + self.backend.removeprefix("postgres-") if self.json_column else ""

    def _execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        if self._path is not None:
            with sqlite3.connect(self._path, timeout=30) as db:
                return db.execute(sql.replace("%s", "?"), list(params)).fetchall()
        assert self._pg is not None
        with psycopg.connect(self._pg, autocommit=True) as db:
            cursor = db.execute(sql, list(params))
            return cursor.fetchall() if cursor.description else []

    def insert(self, rows: Iterable[tuple[int, str | None]]) -> None:
        cast = self._cast
        rows = list(rows)
        if self._path is not None:
            with sqlite3.connect(self._path) as db:
                db.executemany(f"INSERT INTO {self.table} VALUES (?, ?)", rows)
            return
        assert self._pg is not None
        with psycopg.connect(self._pg) as db, db.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {self.table} VALUES (%s, %s{cast})", rows)

    def set(self, row_id: int, value: str | None) -> None:
        """An application write from its own connection."""
        cast = self._cast
        self._execute(f"UPDATE {self.table} SET ssn = %s{cast} WHERE id = %s", [value, row_id])

    def values(self) -> dict[int, str | None]:
        read = "ssn::text" if self.json_column else "ssn"
        return dict(self._execute(f"SELECT id, {read} FROM {self.table} ORDER BY id"))  # type: ignore[arg-type]

    def journal(self) -> list[tuple[str, str]]:
        """(run_id, row_key) of every journal row of this table."""
        try:
            return [
                (str(r), str(k))
                for r, k in self._execute(
                    "SELECT run_id, row_key FROM heimdall_kms_journal WHERE table_name = %s",
                    [self.table],
                )
            ]
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):
            return []

    def drop(self) -> None:
        if self._pg is None:
            return
        self._execute(f"DROP TABLE IF EXISTS {self.table}")
        if self._journal_exists():
            self._execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [self.table])

    def _journal_exists(self) -> bool:
        rows = self._execute("SELECT to_regclass('heimdall_kms_journal') IS NOT NULL")
        return bool(rows[0][0])


def hybrid_local_env(
    tmp_path: Path, monkeypatch: Any, master_hex: str, **extra: str
) -> dict[str, str]:
    """Hybrid mode on a local keyring made for the test (key ``heimdall-pii``), the env key
    ``master_hex`` and an audit log under ``tmp_path``; also set in ``os.environ``."""
    from heimdall_kms.providers.local import LocalKeyring

    values = {
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_PII_MASTER_KEY": master_hex,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    return values


def target_args(table: UserTable, *extra: str) -> list[str]:
    """The CLI arguments that name ``table``'s ``ssn`` column as the target."""
    return ["--database", table.url, "--table", table.table, "--column", "ssn", *extra]


def stored_text(table: UserTable, value: str) -> str:
    """A plain text value as the column holds it (a jsonb column holds JSON: a string)."""
    return json.dumps(value) if table.json_column else value


def run_main(args: list[str], capsys: Any) -> tuple[int, str, str]:
    """The CLI in this process: exit code, stdout, stderr."""
    from heimdall_kms.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@contextmanager
def postgres_table(url: str, column_type: str, values: dict[int, str]) -> Iterator[str]:
    """A table ``(id integer primary key, ssn <column_type>)`` holding ``values``, dropped
    afterwards with its rows of the journal."""
    name = f"short_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, ssn {column_type})")
        for key, value in values.items():
            db.execute(f"INSERT INTO {name} VALUES (%s, %s)", [key, value])
    try:
        yield name
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(f"DROP TABLE {name}")
            if db.execute("SELECT to_regclass('heimdall_kms_journal')").fetchone()[0]:
                db.execute("DELETE FROM heimdall_kms_journal WHERE table_name = %s", [name])
