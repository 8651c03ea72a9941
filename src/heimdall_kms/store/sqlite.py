"""The field store on SQLite (standard library).

A batch is read without a lock and written in one ``BEGIN IMMEDIATE`` transaction, so the
application keeps writing while the KMS calls run; compare-and-swap keeps its later changes.
The database file must already exist: a typo in the path is an error, not a new empty file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from heimdall_kms.errors import StoreError
from heimdall_kms.store._sql import Dialect, IdColumn, SQLFieldStore
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
    return SQLFieldStore(
        connection, target, _DIALECT, _describe, _check_writable, id_column=_id_column
    )


def _describe(store: SQLFieldStore) -> dict[str, str]:
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(_pragma(store, "table_info", _table_name(store)))
        return {str(row[1]): str(row[2]).lower() for row in cursor.fetchall()}


def _pragma(store: SQLFieldStore, name: str, argument: str) -> str:
    """``PRAGMA [schema.]name("argument")`` in the target's schema. The schema of a qualified
    name (``main.t``, ``temp.t``) is asked about, not dropped: the reads and writes name it, so
    a check of another schema's ``t`` would pass a target they then find missing."""
    schema = store.target.table.rpartition(".")[0]
    quote = store.dialect.quote
    return f"PRAGMA {quote(schema) + '.' if schema else ''}{name}({quote(argument)})"


def _table_name(store: SQLFieldStore) -> str:
    return store.target.table.rpartition(".")[2]


def _id_column(store: SQLFieldStore) -> IdColumn:
    """Unique: the table's only primary-key column, or the one column of a unique index that
    is not partial. Not null: declared NOT NULL, or the INTEGER PRIMARY KEY (the rowid)."""
    table, name = _table_name(store), store.target.id_column
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(_pragma(store, "table_info", table))
        columns = cursor.fetchall()  # cid, name, type, notnull, default, pk
        keys = [row for row in columns if row[5]]
        sole_key = len(keys) == 1 and keys[0][1] == name
        cursor.execute(_pragma(store, "index_list", table))  # seq, name, unique, origin, partial
        indexes = cursor.fetchall()
        unique = sole_key or _uniquely_indexed(store, cursor, indexes, name)
    # The rowid itself (never NULL) only where the key has no index of its own: an INTEGER
    # PRIMARY KEY DESC, say, has one (origin "pk"), is no rowid and may hold NULL.
    rowid = (
        sole_key
        and str(keys[0][2]).upper() == "INTEGER"
        and not any(origin == "pk" for _, _, _, origin, _ in indexes)
    )
    not_null = rowid or any(row[1] == name and row[3] for row in columns)
    return IdColumn(unique=unique, not_null=not_null)


def _uniquely_indexed(store: SQLFieldStore, cursor: Any, indexes: list[Any], name: str) -> bool:
    """Whether one of the table's ``indexes`` is unique, not partial, on the column alone."""
    for _, index, is_unique, _, partial in indexes:
        if is_unique and not partial:
            cursor.execute(_pragma(store, "index_info", index))  # seqno, cid, name
            if [row[2] for row in cursor.fetchall()] == [name]:
                return True
    return False


def _check_writable(store: SQLFieldStore) -> None:
    with store._errors("write (is the database read-only?)"):
        cursor = store.connection.cursor()
        cursor.execute("PRAGMA query_only")
        if cursor.fetchone()[0]:
            raise sqlite3.OperationalError("the connection is query-only")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")
