"""The field store on SQLite (standard library).

A batch is read without a lock and written in one ``BEGIN IMMEDIATE`` transaction, so the
application keeps writing while the KMS calls run; compare-and-swap keeps its later changes.
The database file must already exist: a typo in the path is an error, not a new empty file.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from heimdall_kms.errors import StoreError
from heimdall_kms.store._dialect import Dialect, IdColumn, python_bytes, view_problem
from heimdall_kms.store._sql import SQLFieldStore
from heimdall_kms.store._table import SQLTable
from heimdall_kms.store.base import Target

__all__ = ["open_sqlite", "sqlite_path"]

_INTEGERS = range(-(2**63), 2**63)


def _ids_of_key(key: str, _sql_type: str | None) -> tuple[object, object, object, object]:
    """The ids a journal key may stand for: each value SQLite hands back (integer, real, text,
    blob) whose Python text is ``key``, the key itself where a kind has none. The journal holds
    ``str(id)``, and a column may hold values of every kind: ``CAST(id AS TEXT) = key`` missed
    a real whose SQL text differs (1e+20, 0.30000000000000004) and every blob. Several ids
    of one text (1 and '1') are all matched; the restore's compare-and-swap on the run's new
    value, fresh ciphertext written to one row, picks the row."""
    return (key, _integer(key), _real(key), _blob(key))


def _integer(key: str) -> object:
    try:
        value = int(key)
    except ValueError:
        return key
    return value if value in _INTEGERS and str(value) == key else key


def _real(key: str) -> object:
    try:
        value = float(key)
    except ValueError:
        return key
    return value if str(value) == key else key


def _blob(key: str) -> object:
    value = python_bytes(key)
    return key if value is None else value


_DIALECT = Dialect(
    name="SQLite",
    param="?",
    lock_rows=False,
    begin_write="BEGIN IMMEDIATE",
    journal_rows=100,
    errors=(sqlite3.Error,),
    ids_of_key=_ids_of_key,
    ids_per_key=4,
    also_admits="typeof({column}) = 'blob'",
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


def _describe(store: SQLTable) -> dict[str, Any]:
    """Each column's ``PRAGMA table_info`` row (cid, name, type, notnull, dflt_value, pk), by
    name: the id check reads its own from these."""
    with store._errors("inspect the table"):
        rows = _pragma(store.connection.cursor(), store, "table_info", _table_name(store))
    return {str(row[1]): row for row in rows}


def _pragma(cursor: Any, store: SQLTable, name: str, argument: str) -> list[Any]:
    """The rows of ``PRAGMA [schema.]name(argument)`` in the target's schema, through the
    pragma's table-valued function: the argument (an index's name may hold any character)
    and the schema travel as parameters. The schema of a qualified name (``main.t``,
    ``temp.t``) is asked about, not dropped: the reads and writes name it, so a check of
    another schema's ``t`` would pass a target they then find missing."""
    schema = store.target.table.rpartition(".")[0]
    if schema:
        cursor.execute(f"SELECT * FROM pragma_{name}(?, ?)", [argument, schema])  # noqa: S608
    else:
        cursor.execute(f"SELECT * FROM pragma_{name}(?)", [argument])  # noqa: S608
    return list(cursor.fetchall())


def _table_name(store: SQLTable) -> str:
    return store.target.table.rpartition(".")[2]


def _id_column(store: SQLTable, described: Mapping[str, Any]) -> IdColumn:
    """Unique: the rowid, or the one column of a unique index that is not partial and
    compares as the reads do (see :func:`_same_order`). Not null: declared NOT NULL, or the
    rowid. A view is refused for what it is: nothing proves its rows' ids unique."""
    table, name = _table_name(store), store.target.id_column
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        kind, sql = _schema_entry(cursor, store)
        if kind == "view":
            return IdColumn(unique=False, not_null=False, problem=view_problem(store.target))
        columns = list(described.values())  # cid, name, type, notnull, dflt_value, pk
        indexes = _pragma(cursor, store, "index_list", table)  # seq, name, unique, origin, ...
        if _is_rowid(columns, indexes, name):
            return IdColumn(unique=True, not_null=True)
        keys = _unique_keys(cursor, store, indexes, name)
    not_null = any(row[1] == name and row[3] for row in columns)
    if not keys:
        return IdColumn(unique=False, not_null=not_null)
    collation = _declared_collation(store, sql)
    if any(_same_order(collation, coll) for _, coll in keys):
        return IdColumn(unique=True, not_null=not_null)
    index, coll = keys[0]
    return IdColumn(
        unique=False,
        not_null=not_null,
        problem=(
            f"id column {name!r} of {store.target.table!r} is not unique as the reads compare "
            f"it: its unique index {index!r} compares with {coll}, the reads with the column's "
            f"{collation}, and ids equal under {collation} would be skipped; give the index the "
            "column's collation or name another id column"
        ),
    )


def _schema_entry(cursor: Any, store: SQLTable) -> tuple[str, str]:
    """The target's type ("table" or "view") and its ``CREATE`` statement, from the schema
    an unqualified name is found in first (temp, then main)."""
    schema = store.target.table.rpartition(".")[0]
    for where in [schema] if schema else ["temp", "main"]:
        cursor.execute(
            f"SELECT type, sql FROM {store.dialect.quote(where)}.sqlite_master "  # noqa: S608
            "WHERE type IN ('table', 'view') AND name = ? COLLATE NOCASE",
            [_table_name(store)],
        )
        found = cursor.fetchone()
        if found is not None:
            return str(found[0]), str(found[1])
    return "table", ""


def _is_rowid(columns: list[Any], indexes: list[Any], name: str) -> bool:
    """Whether the column is the rowid (never NULL, always unique): the table's only
    primary-key column, declared INTEGER, with no index of its own (an INTEGER PRIMARY KEY
    DESC has one, origin "pk": it is no rowid and may hold NULL)."""
    keys = [row for row in columns if row[5]]
    return (
        len(keys) == 1
        and keys[0][1] == name
        and str(keys[0][2]).upper() == "INTEGER"
        and not any(row[3] == "pk" for row in indexes)
    )


def _unique_keys(
    cursor: Any, store: SQLTable, indexes: list[Any], name: str
) -> list[tuple[str, str]]:
    """Name and collation of each unique index, not partial, on the column alone (the
    primary key's and the UNIQUE constraints' included)."""
    keys = []
    for _, index, is_unique, _, partial in indexes:
        if is_unique and not partial:
            # seqno, cid, name, desc, coll, key: the key columns only (not the rowid)
            info = [row for row in _pragma(cursor, store, "index_xinfo", index) if row[5]]
            if [row[2] for row in info] == [name]:
                keys.append((str(index), str(info[0][4]).upper()))
    return keys


def _declared_collation(store: SQLTable, sql: str) -> str:
    """The collation the column compares with (``id > ?``, ``ORDER BY id``, ``id = ?``):
    its declared one. SQLite gives an index column without COLLATE its column's collation,
    so the table's own ``CREATE TABLE`` is run in an empty in-memory database and an index
    made there on the column tells it; this database is not written to. Functions and
    collations only the application has are stood in for by name (never called: the table
    stays empty); one the id column itself names is then what the column compares with, and
    a unique index counts only where it names the same. Where SQLite still cannot run the
    statement (a virtual table's module, say), the target is refused."""
    name = store.target.id_column
    probe = sqlite3.connect(":memory:")
    try:
        _create_standing_in(probe, sql)
        (table,) = probe.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name <> 'sqlite_sequence'"
        ).fetchone()
        index = f"{table}_heimdall_probe"  # not the table's own name: they share one namespace
        probe.execute(f"CREATE INDEX {_quoted(index)} ON {_quoted(table)} ({_quoted(name)})")
        (collation,) = probe.execute(
            "SELECT coll FROM pragma_index_xinfo(?) WHERE key", [index]
        ).fetchone()
    except (sqlite3.Error, TypeError, ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(
            f"cannot tell the collation of id column {name!r} of {store.target.table!r} "
            f"(its CREATE TABLE does not run on an empty database here: {detail}), so not "
            "whether its unique index compares as the reads do"
        ) from None
    finally:
        probe.close()
    return str(collation).upper()  # SQLite's collation names are case-blind


_MISSING = re.compile(r"no such (function|collation sequence): (.+)$")


def _create_standing_in(probe: sqlite3.Connection, sql: str) -> None:
    """Run ``sql`` on ``probe``, standing in for each function or collation it names that
    SQLite does not have: each try names one more, so it ends (a name named twice stops it)."""
    stood_in: set[tuple[str, str]] = set()
    while True:
        try:
            probe.execute(sql)
            return
        except sqlite3.OperationalError as exc:
            missing = _MISSING.match(str(exc))
            if missing is None or (missing[1], missing[2]) in stood_in:
                raise
            kind, name = missing[1], missing[2]
            stood_in.add((kind, name))
            if kind == "function":
                probe.create_function(name, -1, lambda *_: None, deterministic=True)
            else:
                probe.create_collation(name, lambda *_: 0)


def _quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _same_order(column: str, index: str) -> bool:
    """Whether ids unique under the index's collation are unique under the column's, which
    the reads use: the same collation; or a BINARY column, whatever the index's (ids equal as
    bytes are equal under any collation, so distinct under one means distinct bytes)."""
    return column in (index, "BINARY")


def _check_writable(store: SQLTable) -> None:
    with store._errors("write (is the database read-only?)"):
        cursor = store.connection.cursor()
        cursor.execute("PRAGMA query_only")
        if cursor.fetchone()[0]:
            raise sqlite3.OperationalError("the connection is query-only")
        cursor.execute("BEGIN IMMEDIATE")
        cursor.execute("ROLLBACK")
