"""The field store on PostgreSQL (psycopg 3; extra ``postgres``); text, json or jsonb columns.

A batch is read with ``FOR UPDATE SKIP LOCKED`` inside a transaction held until its writes
commit. Several workers, on one host or many, therefore split a table through the database
itself: a row locked by one is skipped by the others, and once migrated it no longer matches.
The application's writes to a locked row wait for the batch (milliseconds to a second).
"""

from __future__ import annotations

from typing import Any

import psycopg

from heimdall_kms.errors import StoreError
from heimdall_kms.store._sql import Dialect, IdColumn, SQLFieldStore
from heimdall_kms.store.base import Target

__all__ = ["open_postgres"]


def _dialect(column_type: str) -> Dialect:
    json_column = column_type in ("json", "jsonb")
    return Dialect(
        name="PostgreSQL",
        param="%s",
        lock_rows=True,
        begin_write="BEGIN",
        json_column=json_column,
        json_type=column_type if json_column else "jsonb",
        joins_swaps=True,
        copies=True,
        table_exists="SELECT 1 WHERE to_regclass(%s) IS NOT NULL",
        errors=(psycopg.Error,),
        # A journal key that is no text of the id's type (an older version's, of an array).
        unreadable=(psycopg.errors.DataError,),
    )


def open_postgres(url: str, target: Target) -> SQLFieldStore:
    """Connect and prepare a store for one target.

    Raises:
        StoreError: cannot connect (the message has no password), or the column is not text.
    """
    try:
        connection: Any = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        # libpq messages name host and port, not the password; keep the first line only.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreError(f"cannot connect to PostgreSQL: {first}") from None
    probe = SQLFieldStore(
        connection, target, _dialect("text"), _describe, _check_writable, id_column=_id_column
    )
    column_type = _describe(probe).get(target.column, "text")
    if column_type not in ("text", "character varying", "json", "jsonb"):
        connection.close()
        raise StoreError(f"column {target} is {column_type}; expected text, varchar, json or jsonb")
    return SQLFieldStore(
        connection,
        target,
        _dialect(column_type),
        _describe,
        _check_writable,
        id_column=_id_column,
        max_chars=_max_chars(probe) if column_type == "character varying" else None,
    )


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def _describe(store: SQLFieldStore) -> dict[str, str]:
    schema, name = _split(store.target.table)
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = coalesce(%s, current_schema())",
            [name, schema],
        )
        return {str(column): str(kind) for column, kind in cursor.fetchall()}


def _max_chars(store: SQLFieldStore) -> int | None:
    """N of the column's ``varchar(N)``; None for a ``varchar`` without one."""
    schema, name = _split(store.target.table)
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(
            "SELECT character_maximum_length FROM information_schema.columns WHERE "
            "table_name = %s AND table_schema = coalesce(%s, current_schema()) "
            "AND column_name = %s",
            [name, schema, store.target.column],
        )
        found = cursor.fetchone()
    return None if found is None or found[0] is None else int(found[0])


def _id_column(store: SQLFieldStore) -> IdColumn:
    """Unique: a unique index (the primary key's included) on the column alone, not partial,
    valid (a ``CREATE UNIQUE INDEX CONCURRENTLY`` that failed leaves an invalid one).
    Not null: declared NOT NULL (a primary key is). Its type as ``format_type`` writes it
    (schema-qualified where the search path would not find it)."""
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(
            "SELECT a.attnotnull, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid "
            "AND i.indisunique AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum "
            "AND i.indpred IS NULL AND i.indisvalid), format_type(a.atttypid, a.atttypmod) "
            "FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
            [store.dialect.quote(store.target.table), store.target.id_column],
        )
        found = cursor.fetchone()
    if found is None:
        return IdColumn(unique=False, not_null=False)
    return IdColumn(unique=bool(found[1]), not_null=bool(found[0]), sql_type=str(found[2]))


def _check_writable(store: SQLFieldStore) -> None:
    with store._errors("check write access"):
        cursor = store.connection.cursor()
        cursor.execute("SHOW transaction_read_only")
        read_only = cursor.fetchone()[0] == "on"
        cursor.execute(
            "SELECT has_table_privilege(%s, 'UPDATE'), has_table_privilege(%s, 'SELECT')",
            [store.dialect.quote(store.target.table)] * 2,
        )
        may_update, may_select = cursor.fetchone()
    if read_only:
        raise StoreError(
            "PostgreSQL session is read-only (a standby, or default_transaction_read_only)"
        )
    if not (may_update and may_select):
        raise StoreError(f"the database user may not SELECT and UPDATE {store.target.table!r}")
