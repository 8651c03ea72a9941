"""The field store on SQLite (standard library).

A batch is read without a lock and written in one ``BEGIN IMMEDIATE`` transaction, so the
application keeps writing while the KMS calls run; compare-and-swap keeps its later changes.
The database file must already exist: a typo in the path is an error, not a new empty file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import unquote

from heimdall_kms.errors import StoreError
from heimdall_kms.store._sql import Dialect, SQLFieldStore
from heimdall_kms.store.base import Target

__all__ = ["open_sqlite", "sqlite_path"]

_DIALECT = Dialect(
    name="SQLite",
    param="?",
    lock_rows=False,
    begin_write="BEGIN IMMEDIATE",
    id_as_text="CAST({id} AS TEXT)",
    journal_rows=100,
    errors=(sqlite3.Error,),
)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative.db`` or ``sqlite:////absolute.db`` (SQLAlchemy's convention)."""
    path = unquote(url.removeprefix("sqlite:///").split("?", 1)[0])
    if not path:
        raise StoreError("database URL sqlite:/// names no file")
    return Path(path)


def open_sqlite(url: str, target: Target) -> SQLFieldStore:
    """Open an existing SQLite database for one target.

    Raises:
        StoreError: the file does not exist or is not a SQLite database.
    """
    path = sqlite_path(url)
    if not path.is_file():
        raise StoreError(f"no SQLite database at {path}")
    try:
        connection = sqlite3.connect(
            f"file:{path}?mode=rw",
            uri=True,
            isolation_level=None,
            timeout=30,
            check_same_thread=False,
        )
        connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open SQLite database {path}: {exc}") from None
    return SQLFieldStore(connection, target, _DIALECT, _describe, _check_writable)


def _describe(store: SQLFieldStore) -> dict[str, str]:
    # The schema of a qualified name (``main.t``, ``temp.t``) is asked about, not dropped: the
    # reads and writes name it, so a check of another schema's ``t`` would pass a target they
    # then find missing.
    schema, _, table = store.target.table.rpartition(".")
    quote = store.dialect.quote
    pragma = f"PRAGMA {quote(schema)}.table_info" if schema else "PRAGMA table_info"
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(f"{pragma}({quote(table)})")
        return {str(row[1]): str(row[2]).lower() for row in cursor.fetchall()}


def _check_writable(store: SQLFieldStore) -> None:
    with store._errors("write (is the database read-only?)"):
        cursor = store.connection.cursor()
        cursor.execute("PRAGMA query_only")
        if cursor.fetchone()[0]:
            raise sqlite3.OperationalError("the connection is query-only")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")
