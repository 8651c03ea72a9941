"""The field store on PostgreSQL (psycopg 3; extra ``postgres``); text, json or jsonb columns.

A batch is read with ``FOR UPDATE SKIP LOCKED`` inside a transaction held until its writes
commit. Several workers, on one host or many, therefore split a table through the database
itself: a row locked by one is skipped by the others, and once migrated it no longer matches.
The application's writes to a locked row wait for the batch (milliseconds to a second).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

from heimdall_kms.errors import StoreError
from heimdall_kms.store._dialect import Dialect, IdColumn, python_bytes, view_problem
from heimdall_kms.store._sql import SQLFieldStore
from heimdall_kms.store._table import SQLTable
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
        numbered_cursor=psycopg.RawCursor,
        table_exists="SELECT 1 WHERE to_regclass(%s) IS NOT NULL",
        errors=(psycopg.Error,),
        # A journal key that is no text of the id's type (an older version's, of an array).
        unreadable=(psycopg.errors.DataError,),
        place="ctid::text",
        place_is="ctid = CAST(%s AS tid)",
        pins=_PINS,
        unpins=_UNPINS,
        typed_ids=True,
        ids_of_key=_ids_of_key,
    )


def _ids_of_key(key: str, sql_type: str | None) -> tuple[str]:
    """The id a journal key stands for, as text to cast to the column's type: the key, the
    database's own text of the id; for a bytea id, a journal of an earlier version held
    Python's text of the bytes (``b'\\x00'``), which is read as those bytes."""
    found = python_bytes(key) if sql_type == "bytea" else None
    return (key,) if found is None else ("\\x" + found.hex(),)


# The settings an id's text depends on, fixed for each transaction that reads ids (SET LOCAL:
# a pooled server session is left as it was). The journal keeps the migrating session's
# ``id::text`` and the rollback casts it back in its own session: under DateStyle 'SQL, DMY'
# 01/02/2024 is 1 February, under 'MDY' 2 January; sql_standard's interval '-1 2:00:00' is
# -(1 day 2 hours), postgres' -1 day +2 hours; extra_float_digits 0 rounds a double's text (and
# psycopg's value with it, so the swap missed the row); psycopg cannot load a timestamptz in a
# non-ISO DateStyle nor a postgres_verbose or iso_8601 interval. ISO text of a timestamptz or
# timetz carries its offset, so it casts back to the same instant under any TimeZone; UTC keeps
# the text and psycopg's values (a row's key, the record of its encryption context) the same
# from run to run. Only text written out depends on these: ISO text and parameters read back
# the same under any of them.
_PINNED = (
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
)
# The session's own values are read first (the subquery, OFFSET 0: evaluated before the outer
# list sets them) and returned; the application's triggers run under them again (``_UNPINS``).
_PINS = (
    "SELECT "  # noqa: S608 - constants only
    + ", ".join(f"s{i}" for i in range(len(_PINNED)))
    + ", "
    + ", ".join(f"set_config('{name}', '{value}', true)" for name, value in _PINNED)
    + " FROM (SELECT "
    + ", ".join(f"current_setting('{name}') AS s{i}" for i, (name, _) in enumerate(_PINNED))
    + " OFFSET 0) AS session"
)
_UNPINS = "SELECT " + ", ".join(f"set_config('{name}', %s, true)" for name, _ in _PINNED)


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


def _describe(store: SQLTable) -> dict[str, str]:
    schema, name = _split(store.target.table)
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = coalesce(%s, current_schema())",
            [name, schema],
        )
        columns = {str(column): str(kind) for column, kind in cursor.fetchall()}
        if not columns:
            # information_schema lists no materialized view's columns: say what it is, not
            # that it does not exist.
            cursor.execute(
                "SELECT 1 FROM pg_class WHERE oid = to_regclass(%s) AND relkind = 'm'",
                [store.dialect.quote(store.target.table)],
            )
            if cursor.fetchone() is not None:
                raise StoreError(
                    f"{store.target.table!r} is a materialized view: its rows are a copy that "
                    "each REFRESH rebuilds from its query; name the table it reads"
                )
        return columns


def _max_chars(store: SQLTable) -> int | None:
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


# The target and its id column: kind, NOT NULL, type, inheritance children, whether the
# column's collation is deterministic (equal only as bytes; true where it has none), its name,
# and the equality the reads use: that of the type's default btree operator class, which
# ``ORDER BY id`` sorts by, found as PostgreSQL's GetDefaultOpClass finds it: for the base type
# under any domains, its own class, else the one of a type it is binary-coercible to that is
# preferred in its category (varchar: text's, not citext's), else another (an enum's, array's,
# range's or composite's polymorphic one). None where there is none. Last, whether the base
# type is jsonb or an array of it (see :func:`_type_problem`).
_ID_COLUMN = (
    "WITH RECURSIVE domains(oid) AS (SELECT a.atttypid FROM pg_attribute a "
    "WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped "
    "UNION ALL SELECT t.typbasetype FROM domains d JOIN pg_type t ON t.oid = d.oid "
    "WHERE t.typtype = 'd') "
    "SELECT c.relkind, a.attnotnull, format_type(a.atttypid, a.atttypmod), "
    "(SELECT count(*) FROM pg_inherits h WHERE h.inhparent = c.oid), "
    "coalesce(co.collisdeterministic, true), co.collname, ("
    "SELECT o.amopopr FROM pg_opclass oc JOIN pg_am m ON m.oid = oc.opcmethod "
    "JOIN pg_type ot ON ot.oid = oc.opcintype "
    "JOIN pg_amop o ON o.amopfamily = oc.opcfamily AND o.amopstrategy = 3 "
    "AND o.amoplefttype = oc.opcintype AND o.amoprighttype = oc.opcintype "
    "WHERE m.amname = 'btree' AND oc.opcdefault AND (oc.opcintype = b.oid "
    "OR oc.opcintype IN (SELECT casttarget FROM pg_cast WHERE castsource = b.oid "
    "AND castmethod = 'b') OR oc.opcintype = CASE WHEN b.typtype = 'e' THEN 'anyenum'::regtype "
    "WHEN b.typtype = 'r' THEN 'anyrange'::regtype "
    "WHEN b.typtype = 'm' THEN to_regtype('anymultirange') "
    "WHEN b.typcategory = 'A' THEN 'anyarray'::regtype "
    "WHEN b.typtype = 'c' THEN 'record'::regtype END) "
    "ORDER BY oc.opcintype <> b.oid, NOT (ot.typispreferred AND ot.typcategory = b.typcategory), "
    "ot.typtype = 'p' LIMIT 1), "
    "b.oid = 'jsonb'::regtype OR (WITH RECURSIVE e(oid) AS (SELECT b.typelem "
    "WHERE b.typcategory = 'A' UNION ALL SELECT t.typbasetype FROM e JOIN pg_type t "
    "ON t.oid = e.oid WHERE t.typtype = 'd') SELECT coalesce(bool_or(e.oid = 'jsonb'::regtype), "
    "false) FROM e) "
    "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
    "JOIN pg_type b ON b.oid = (SELECT d.oid FROM domains d JOIN pg_type t ON t.oid = d.oid "
    "WHERE t.typtype <> 'd') "
    "LEFT JOIN pg_collation co ON co.oid = a.attcollation "
    "WHERE c.oid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped"
)

# Each index that may make the column unique: valid, not partial, on the column alone; unique,
# or backing an exclusion constraint (``EXCLUDE USING btree (id WITH =)``). Its name, whether
# it compares with the column's own collation, the collation it does compare with, its
# equality: the exclusion's operator, or its operator class's (a citext id under a text_ops
# unique index holds 'a' and 'A', one id to the reads; gist's ``&&`` is no equality), and an
# exclusion's operator as SQL writes it (``<>(inet,inet)``), NULL for a unique index.
_UNIQUE_KEYS = (
    "SELECT i.indexrelid::regclass::text, i.indcollation[0] = a.attcollation, ic.collname, "
    "coalesce((SELECT x.conexclop[1] FROM pg_constraint x WHERE x.conindid = i.indexrelid "
    "AND x.contype = 'x'), (SELECT o.amopopr FROM pg_opclass oc JOIN pg_amop o "
    "ON o.amopfamily = oc.opcfamily AND o.amopmethod = oc.opcmethod AND o.amopstrategy = 3 "
    "AND o.amoplefttype = oc.opcintype AND o.amoprighttype = oc.opcintype "
    "WHERE oc.oid = i.indclass[0])), "
    "(SELECT x.conexclop[1]::regoperator::text FROM pg_constraint x "
    "WHERE x.conindid = i.indexrelid AND x.contype = 'x') "
    "FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
    "LEFT JOIN pg_collation ic ON ic.oid = i.indcollation[0] "
    "WHERE i.indrelid = to_regclass(%s) AND a.attname = %s AND i.indnkeyatts = 1 "
    "AND i.indpred IS NULL AND i.indisvalid AND (i.indisunique OR EXISTS ("
    "SELECT 1 FROM pg_constraint x WHERE x.conindid = i.indexrelid AND x.contype = 'x')) "
    "ORDER BY 1"
)


def _id_column(store: SQLTable, _columns: Mapping[str, object]) -> IdColumn:
    """Unique: an index in :data:`_UNIQUE_KEYS` (the primary key's included) that compares as
    the reads do: with the equality of the column type's default operator class, and where
    the column's collation is nondeterministic ('a' and 'A' one id to ``id > %s``) with that
    collation (a deterministic one is equality as bytes, which any collation's implies). A
    ``CREATE UNIQUE INDEX CONCURRENTLY`` that failed leaves an invalid index. Not null:
    declared NOT NULL (a primary key is). Its type as ``format_type`` writes it
    (schema-qualified where the search path would not find it). A view, a foreign table and
    a table with inheritance children are refused for what they are."""
    params = [store.dialect.quote(store.target.table), store.target.id_column]
    with store._errors("inspect the table"):
        cursor = store.connection.cursor()
        cursor.execute(_ID_COLUMN, params * 2)
        found = cursor.fetchone()
        cursor.execute(_UNIQUE_KEYS, params)
        keys = cursor.fetchall()
    if found is None:
        return IdColumn(unique=False, not_null=False)
    kind, not_null, sql_type, children, deterministic, collation, equality, json_ids = found
    problem = _kind_problem(store, str(kind), int(children))
    if problem is None and json_ids:
        problem = _type_problem(store, str(sql_type))
    if problem is None and keys:
        problem = _key_problem(store, keys, bool(deterministic), collation, equality)
    return IdColumn(
        unique=bool(keys) and problem is None,
        not_null=bool(not_null),
        sql_type=str(sql_type),
        problem=problem,
    )


def _key_problem(
    store: SQLTable,
    keys: list[Any],
    deterministic: bool,
    collation: str,
    equality: int | None,
) -> str | None:
    """None where one of the unique ``keys`` compares as the reads do; else why not."""
    if any(eq == equality and (deterministic or same) for _, same, _, eq, _ in keys):
        return None
    head = f"id column {store.target.id_column!r} of {store.target.table!r}"
    if equality is None:
        return (
            f"{head}: its type has no default btree operator class here, so not how the "
            "reads compare its ids nor whether a unique index does the same; name another "
            "id column"
        )
    same_equality = [key for key in keys if key[3] == equality]
    if not same_equality:
        index, excludes = keys[0][0], keys[0][4]
        if excludes is not None:
            return (
                f"{head} is not unique as the reads compare it: its exclusion constraint "
                f"{index!r} excludes with operator {excludes}, which is not its type's "
                "equality: it keeps out two rows whose ids that operator holds true of, not "
                "two equal ids, so equal ids may repeat; exclude with the equality of the "
                "type's default btree operator class or name another id column"
            )
        return (
            f"{head} is not unique as the reads compare it: its unique index {index!r} "
            "compares with another equality than its type's own (that of an operator class "
            "of its choosing), so ids the reads hold equal may repeat; "
            "give it one with the type's default operator class or name another id column"
        )
    index, _, index_collation, _, _ = same_equality[0]
    return (
        f"{head} is not unique as the reads compare it: its unique index {index!r} compares "
        f"with collation {index_collation!r}, the reads with the column's nondeterministic "
        f"{collation!r}, and ids equal under {collation!r} would be skipped; give the index "
        "the column's collation or name another id column"
    )


def _type_problem(store: SQLTable, sql_type: str) -> str:
    """Why a jsonb id (or an array of them, or a domain over either) is refused: psycopg reads
    each id as a Python dict, list, number or string, which it cannot pass back as that jsonb
    (a dict cannot be adapted; the list [1] goes as smallint[]), so the second batch's read
    and each swap failed mid-run. Refused before anything is read, as other unusable id
    columns are; reading such ids as text instead would be a second read path for one type
    that documents rarely need (a document is seldom a row's identity)."""
    what = "jsonb" if sql_type == "jsonb" else f"{sql_type}, built on jsonb"
    return (
        f"id column {store.target.id_column!r} of {store.target.table!r} is {what}: its ids "
        "are read as JSON documents, which cannot be passed back as ids of that type, so its "
        "rows cannot be read by id; name another id column"
    )


def _kind_problem(store: SQLTable, kind: str, children: int) -> str | None:
    """Why a relation of this kind cannot be read whole by id, or None."""
    table, name = store.target.table, store.target.id_column
    if kind == "v":
        return view_problem(store.target)
    if kind == "f":
        return (
            f"{table!r} is a foreign table: no index here proves its id column {name!r} "
            "unique, and rows that repeat an id would be skipped; name the table it stands for, "
            "in its own database"
        )
    if kind == "r" and children:
        return (
            f"{table!r} has inheritance children ({children}): reading it reads their rows too, "
            f"which its unique index on {name!r} does not cover, so an id may repeat and rows "
            "would be skipped; name a table without inheritance children (a partitioned "
            "table's unique index covers its partitions)"
        )
    return None


def _check_writable(store: SQLTable) -> None:
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
