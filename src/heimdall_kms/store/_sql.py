"""One SQL implementation of the field store, specialised by a small dialect per database.

Both drivers are DB-API 2 connections in autocommit mode; transactions are begun and ended
explicitly so the same code drives SQLite and PostgreSQL. Identifiers are checked by
:class:`Target` and always quoted; values always travel as parameters.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from heimdall_kms.errors import StoreError
from heimdall_kms.store.base import JOURNAL_TABLE, JournalEntry, Match, Row, Swap, Target

__all__ = ["Dialect", "IdColumn", "SQLFieldStore", "python_bytes", "view_problem"]


class Cursor(Protocol):
    rowcount: int

    def execute(self, query: Any, params: Any = ..., /) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def fetchone(self) -> Any: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between SQLite and PostgreSQL, and nothing else."""

    name: str
    param: str  # "?" or "%s"
    lock_rows: bool  # FOR UPDATE SKIP LOCKED while a batch is processed
    begin_write: str  # how a writing transaction starts
    json_column: bool = False  # PostgreSQL json/jsonb: read as text, write with a cast
    json_type: str = "jsonb"  # which of the two (json keeps its text; jsonb keeps a document)
    # A batch's compare-and-swap as one UPDATE ... FROM (VALUES ...) RETURNING per chunk of
    # rows (PostgreSQL), instead of one statement per row.
    joins_swaps: bool = False
    # A cursor of the connection that takes the database's own numbered placeholders ($1,
    # $2, ...) as they are, for the joined swap: psycopg reads a query's %s placeholders
    # with a Python tokenizer, and caches what it read only for up to 50 parameters, so a
    # 250-row swap (1,000 parameters) was tokenized again every batch. None: ``param``.
    numbered_cursor: Callable[[Any], Any] | None = None
    # psycopg's COPY writes many rows in one statement, formatted in C: the journal's rows
    # cost a fifth of the CPU of one INSERT each.
    copies: bool = False
    # Without COPY, the journal's rows go in INSERTs of up to this many rows each: on SQLite
    # one multi-row INSERT costs about two thirds of the CPU of a row at a time through
    # executemany. 100 rows are 700 parameters, within SQLite's smallest limit (999).
    journal_rows: int = 1
    # One row when the table named by the parameter exists (the journal, read before use).
    table_exists: str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    errors: tuple[type[BaseException], ...] = field(default=())
    # How a restore finds a journal row's row again, by its id in the column's own type (an
    # index lookup): the ids a journal key may stand for, given the id column's type where
    # statements state it (``typed_ids``), always ``ids_per_key`` of them. PostgreSQL's key is
    # the database's own text of the id (the joined swap returns it), cast back to the type;
    # SQLite's is Python's text of the id, and the column's values may be of any storage class.
    ids_of_key: Callable[[str, str | None], tuple[object, ...]] = lambda key, _: (key,)
    ids_per_key: int = 1
    # What the database raises for a key that does not read as a value of the id's type.
    unreadable: tuple[type[BaseException], ...] = field(default=())
    # A journal row's place, as text, and the SQL that reads such a text back.
    place: str = "CAST(rowid AS TEXT)"
    place_is: str = "rowid = CAST(? AS INTEGER)"
    # SQL (``{column}``) a pre-filter admits besides its patterns: SQLite's LIKE never
    # matches a BLOB, whatever text it holds.
    also_admits: str | None = None
    # SQL run first in each transaction that reads ids or writes or reads the journal's keys:
    # fixes, for that transaction only, the settings that change how an id is written as text
    # and read back (PostgreSQL's DateStyle, IntervalStyle, extra_float_digits, ...), so a
    # journal written by one session restores in another whatever either's settings are.
    pins: str | None = None
    # Whether statements state an id's type (the id check's ``sql_type``) where they pass one.
    typed_ids: bool = False

    def quote(self, identifier: str) -> str:
        return ".".join(f'"{part}"' for part in identifier.split("."))

    def read(self, column: str) -> str:
        return f"{column}::text" if self.json_column else column

    def value(self, placeholder: str | None = None) -> str:
        """The placeholder (``param``, or the one given) of a value written to the column."""
        p = self.param if placeholder is None else placeholder
        return f"{p}::{self.json_type}" if self.json_column else p

    def compared(self, placeholder: str | None = None) -> str:
        """The placeholder of a value the column is compared with (see :meth:`holds`)."""
        p = self.param if placeholder is None else placeholder
        return p if self._json_text() else self.value(p)

    def holds(self, column: str, value: str) -> str:
        """SQL: ``column`` holds ``value`` (a :meth:`compared` placeholder, or a column of
        them). json has no equality and keeps the text as written: compared as text; jsonb as
        documents (its text is its own rendering); text as text."""
        return f"{column}::text = {value}" if self._json_text() else f"{column} = {value}"

    def _json_text(self) -> bool:
        return self.json_column and self.json_type == "json"


_JOURNAL_COLUMNS = "run_id, table_name, column_name, row_key, old_value, new_value, created_at"
_JOURNAL_DDL = (
    f"CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} ("
    "run_id TEXT NOT NULL, table_name TEXT NOT NULL, column_name TEXT NOT NULL, "
    "row_key TEXT NOT NULL, old_value TEXT NOT NULL, new_value TEXT NOT NULL, "
    "created_at TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {JOURNAL_TABLE}_run ON {JOURNAL_TABLE} "
    "(run_id, table_name, column_name)",
)


# Rows per joined compare-and-swap statement: three parameters each, well inside PostgreSQL's
# 65,535 per statement, and one statement text (prepared once) for every full batch of 250.
_JOINED_ROWS = 1000
_JOINED_TEXTS = 4  # the joined swap's texts a store keeps


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class IdColumn:
    """What the database says of a target's id column (rows are read in its order)."""

    unique: bool  # a primary key, or a unique index on it alone that is not partial
    not_null: bool  # declared so (else the rows without one are counted)
    # Its type as SQL (``format_type``: "integer", "character(8)", an enum's name), where
    # a statement must state it; None where the database infers it (SQLite).
    sql_type: str | None = None
    # Why it does not identify rows, where the reason is not the plain one (no unique
    # index on it): a view, a unique index that compares otherwise than the reads.
    problem: str | None = None


def view_problem(target: Target) -> str:
    """Why a view is refused as a target whose rows are read by id."""
    return (
        f"{target.table!r} is a view: no index of a view proves its id column "
        f"{target.id_column!r} unique, and rows that repeat an id would be skipped; name the "
        "table it reads"
    )


class SQLFieldStore:
    """A :class:`FieldStore` over one DB-API connection (see ``base.FieldStore``)."""

    def __init__(
        self,
        connection: Connection,
        target: Target,
        dialect: Dialect,
        describe: Callable[[SQLFieldStore], Mapping[str, object]],
        writable: Callable[[SQLFieldStore], None],
        *,
        id_column: Callable[[SQLFieldStore, Mapping[str, object]], IdColumn],
        max_chars: int | None = None,
    ) -> None:
        self.connection = connection
        self._max_chars = max_chars
        self._id_column = id_column
        self._ids: IdColumn | None = None  # what the check found (the joined swap's id type)
        # The joined swap's texts by (rows, id type): a full batch's is built once per run;
        # a few only (batches that lost rows to failures are of any size, memory stays flat).
        self._joined: dict[tuple[int, str | None], str] = {}
        self.target = target
        self.dialect = dialect
        self._describe = describe
        self._writable = writable
        q = dialect.quote
        self._t, self._c, self._id = q(target.table), q(target.column), q(target.id_column)

    @property
    def json_column(self) -> bool:
        return self.dialect.json_column

    @property
    def max_chars(self) -> int | None:
        return self._max_chars

    # -- checks ---------------------------------------------------------------------------------

    def check(self, *, writable: bool, scans: bool = True) -> None:
        # The dialect's own description of each column (read once: the id check reads it too).
        columns = self._describe(self)
        if not columns:
            raise StoreError(f"table {self.target.table!r} does not exist")
        for what, name in (("column", self.target.column), ("id column", self.target.id_column)):
            if name not in columns:
                raise StoreError(f"table {self.target.table!r} has no {what} {name!r}")
        if scans:
            self._check_ids(columns)
        if writable:
            self._writable(self)

    def _check_ids(self, columns: Mapping[str, object]) -> None:
        """Rows are read in batches after the last id read (keyset order): a repeated id at a
        batch's end, or a NULL id, would be skipped without a trace, and a census would count
        those rows as nothing. So the id column must be unique and every row must have one."""
        table, name = self.target.table, self.target.id_column
        found = self._ids = self._id_column(self, columns)
        if found.problem is not None:
            raise StoreError(found.problem)
        if not found.unique:
            raise StoreError(
                f"id column {name!r} of {table!r} is not unique (no primary key or unique index "
                "on it alone): rows that repeat an id would be skipped; name a unique column"
            )
        if found.not_null:
            return
        with self._errors("count the rows without an id"):
            cursor = self.connection.cursor()
            cursor.execute(f"SELECT count(*) FROM {self._t} WHERE {self._id} IS NULL")  # noqa: S608
            missing = int(cursor.fetchone()[0])
        if missing:
            raise StoreError(
                f"{missing} rows of {table!r} have no {name!r} (NULL): they cannot be read by "
                "id; give them one or name another id column"
            )

    # -- reading ------------------------------------------------------------------------------

    def _where(
        self, match: Match, after: object | None, upto: object | None = None
    ) -> tuple[str, list[object]]:
        """The WHERE clause of rows in (after, upto] the pre-filter admits, and its params."""
        where, params = [], []
        if after is not None:
            where.append(f"{self._id} > {self._an_id()}")
            params.append(after)
        if upto is not None:
            where.append(f"{self._id} <= {self._an_id()}")
            params.append(upto)
        if match.patterns:
            where.append(self._like(match))
            params.extend(match.patterns)
        return (f" WHERE {' AND '.join(where)}" if where else ""), params

    def _fetch(
        self,
        cursor: Any,
        match: Match,
        after: object | None,
        limit: int,
        lock: bool,
        *,
        upto: object | None = None,
    ) -> list[Row]:
        clause, params = self._where(match, after, upto)
        locking = " FOR UPDATE SKIP LOCKED" if lock else ""
        cursor.execute(
            f"SELECT {self._id}, {self.dialect.read(self._c)} FROM {self._t}{clause} "  # noqa: S608
            f"ORDER BY {self._id} LIMIT {self.dialect.param}{locking}",
            [*params, limit],
        )
        return [
            Row(row_id, str(row_id), _text(value), isinstance(value, bytes))
            for row_id, value in cursor.fetchall()
        ]

    def _missed(
        self, cursor: Any, match: Match, after: object | None, upto: object | None, read: int
    ) -> int:
        """Rows in (after, upto] a locked read skipped: locked by another transaction."""
        clause, params = self._where(match, after, upto)
        cursor.execute(f"SELECT count(*) FROM {self._t}{clause}", params)  # noqa: S608
        return max(0, int(cursor.fetchone()[0]) - read)

    def count(self, match: Match = Match.ALL) -> int:
        with self._errors("count"):
            cursor = self.connection.cursor()
            if not match.patterns:
                cursor.execute(f"SELECT count(*) FROM {self._t}")  # noqa: S608
            else:
                sql = f"SELECT count(*) FROM {self._t} WHERE {self._like(match)}"  # noqa: S608
                cursor.execute(sql, list(match.patterns))
            return int(cursor.fetchone()[0])

    def _like(self, match: Match) -> str:
        """SQL: the column matches one of the pre-filter's patterns."""
        read, p = self.dialect.read(self._c), self.dialect.param
        admitted = [f"{read} LIKE {p} ESCAPE '!'" for _ in match.patterns]
        if self.dialect.also_admits is not None:
            admitted.append(self.dialect.also_admits.format(column=self._c))
        return "(" + " OR ".join(admitted) + ")"

    def scan(self, batch_size: int, match: Match = Match.ALL) -> Iterator[list[Row]]:
        after: object | None = None
        while True:
            with self._errors("read"), self._reading() as cursor:
                rows = self._fetch(cursor, match, after, batch_size, False)
            if not rows:
                return
            yield rows
            after = rows[-1].id

    @contextmanager
    def batch(
        self, after: object | None, limit: int, match: Match, upto: object | None = None
    ) -> Iterator[_SQLBatch]:
        cursor = self.connection.cursor()
        lock = self.dialect.lock_rows
        batch = self._read_batch(cursor, after, limit, match, upto)
        try:
            yield batch
        except BaseException:
            if lock or batch.open:
                self._roll_back(cursor)
            raise
        if lock or batch.open:
            with self._errors("commit"):
                cursor.execute("COMMIT")

    def _read_batch(
        self, cursor: Any, after: object | None, limit: int, match: Match, upto: object | None
    ) -> _SQLBatch:
        """Read the batch's rows; where the dialect locks rows, in a transaction left open."""
        lock = self.dialect.lock_rows
        with self._errors("read"):
            if lock:
                self._begin(cursor, "BEGIN")
            try:
                rows = self._fetch(cursor, match, after, limit, lock, upto=upto)
                end = rows[-1].id if len(rows) == limit else upto
                missed = self._missed(cursor, match, after, end, len(rows)) if lock else 0
            except BaseException:
                if lock:
                    self._roll_back(cursor)
                raise
        return _SQLBatch(self, cursor, rows, end, missed)

    # -- writing ------------------------------------------------------------------------------

    def _cas_sql(self) -> str:
        dialect = self.dialect
        return (
            f"UPDATE {self._t} SET {self._c} = {dialect.value()} "  # noqa: S608
            f"WHERE {self._id} = {dialect.param} AND {dialect.holds(self._c, dialect.compared())}"
        )

    def _journal_sql(self, rows: int = 1) -> str:
        values = ", ".join([f"({', '.join([self.dialect.param] * 7)})"] * rows)
        return f"INSERT INTO {JOURNAL_TABLE} ({_JOURNAL_COLUMNS}) VALUES {values}"  # noqa: S608

    def apply_swaps(self, cursor: Any, swaps: Sequence[Swap], run_id: str | None) -> list[bool]:
        swap = self._swap_joined if self.dialect.joins_swaps else self._swap_each
        keys = swap(cursor, swaps)
        if run_id is not None:
            self._journal_swaps(cursor, swaps, keys, run_id)
        return [key is not None for key in keys]

    def _swap_each(self, cursor: Any, swaps: Sequence[Swap]) -> list[str | None]:
        """Compare-and-swap the batch as one prepared statement run per row. Returns, per
        swap, the journal's key of the row it updated (the key it was read with), else None."""
        params = [[swap.new_value, swap.row.id, swap.row.value] for swap in swaps]
        cursor.executemany(self._cas_sql(), params)
        # The rowcount is the sum over all rows: where it falls short, ask which rows missed.
        if cursor.rowcount == len(params):
            return [swap.row.key for swap in swaps]
        applied = self._holding_new_values(cursor, swaps)
        return [swap.row.key if done else None for swap, done in zip(swaps, applied, strict=True)]

    def _journal_swaps(
        self, cursor: Any, swaps: Sequence[Swap], keys: Sequence[str | None], run_id: str
    ) -> None:
        """Journal each swap that updated its row, under its key."""
        created, table, column = now_rfc3339(), self.target.table, self.target.column
        journal = [
            [run_id, table, column, key, swap.row.value, swap.new_value, created]
            for swap, key in zip(swaps, keys, strict=True)
            if key is not None
        ]
        if journal:
            self._write_journal(cursor, journal)

    def _swap_joined(self, cursor: Any, swaps: Sequence[Swap]) -> list[str | None]:
        """Compare-and-swap the batch as one ``UPDATE ... FROM (VALUES ...)`` per chunk: each
        row is updated where it still holds the value read, as the one-row statement does.
        Returns, per swap, the database's own text of the id of the row it updated (the
        journal's key: a restore reads it back in the column's type), None where it did not;
        by each row's place in the chunk (not by comparing ids here: an id's Python value need
        not equal itself, a float NaN for one)."""
        keys: list[str | None] = [None] * len(swaps)
        sql_type = self._id_type()
        numbered = self.dialect.numbered_cursor
        if numbered is not None:
            cursor = numbered(self.connection)  # the same connection, so its transaction
        for start in range(0, len(swaps), _JOINED_ROWS):
            chunk = swaps[start : start + _JOINED_ROWS]
            cursor.execute(
                self._joined_sql(len(chunk), sql_type),
                [
                    part
                    for n, swap in enumerate(chunk, start)
                    for part in (n, swap.row.id, swap.new_value, swap.row.value)
                ],
            )
            for n, key in cursor.fetchall():
                keys[n] = key
        return keys

    def _id_type(self) -> str | None:
        if self._ids is None:
            self._ids = self._id_column(self, self._describe(self))
        return self._ids.sql_type

    def _sql_type(self) -> str | None:
        """The id column's type where statements state it, else None."""
        return self._id_type() if self.dialect.typed_ids else None

    def _an_id(self) -> str:
        """The placeholder of an id, in the column's own type where a statement must state it:
        a ``real`` id read back as a Python float is a double, and ``id > 0.1::float8`` holds
        for the real 0.1 itself (a keyset read after it read it again, without end)."""
        p, sql_type = self.dialect.param, self._sql_type()
        return f"CAST({p} AS {sql_type})" if sql_type is not None else p

    def _joined_sql(self, rows: int, sql_type: str | None) -> str:
        known = self._joined.get((rows, sql_type))
        if known is not None:
            return known
        dialect = self.dialect
        if dialect.numbered_cursor is not None:
            values = ",".join(self._joined_row(sql_type, 4 * n + 1) for n in range(rows))
        else:
            values = ",".join([self._joined_row(sql_type)] * rows)
        if len(self._joined) >= _JOINED_TEXTS:
            self._joined.clear()
        sql = self._joined[rows, sql_type] = (
            f"UPDATE {self._t} AS t SET {self._c} = v.new "  # noqa: S608
            f"FROM (VALUES {values}) AS v(n, id, new, old) "
            f"WHERE t.{self._id} = v.id AND {dialect.holds(f't.{self._c}', 'v.old')} "
            f"RETURNING v.n, t.{self._id}::text"
        )
        return sql

    def _joined_row(self, sql_type: str | None, first: int | None = None) -> str:
        """One row of the joined swap's VALUES: its place, id, new and old value, in
        ``param``'s placeholders, or numbered from ``first`` ($5 to $8 for 5)."""
        dialect = self.dialect
        if first is None:
            n, row_id, new, old = [dialect.param] * 4
        else:
            n, row_id, new, old = (f"${i}" for i in range(first, first + 4))
        # The id is cast to the column's own type, as the one-row statement's parameter is
        # inferred to be: an enum, char(N) or macaddr id compared with text would fail or
        # (char(N): trailing blanks) match nothing.
        row_id = f"{row_id}::{sql_type}" if sql_type is not None else row_id
        return f"({n}::integer,{row_id},{dialect.value(new)},{dialect.compared(old)})"

    def _write_journal(self, cursor: Any, rows: list[list[str | None]]) -> None:
        if self.dialect.copies:
            with cursor.copy(f"COPY {JOURNAL_TABLE} ({_JOURNAL_COLUMNS}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        size = self.dialect.journal_rows
        if size <= 1:
            cursor.executemany(self._journal_sql(), rows)
            return
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            cursor.execute(self._journal_sql(len(part)), [value for row in part for value in row])

    def _holding_new_values(self, cursor: Any, swaps: Sequence[Swap]) -> list[bool]:
        """After a batch compare-and-swap that missed some rows (someone else wrote them
        first): which rows hold this batch's new value now. New values are fresh ciphertext,
        so no other writer can have written the same text."""
        sql = (
            f"SELECT {self.dialect.read(self._c)} FROM {self._t} "  # noqa: S608
            f"WHERE {self._id} = {self.dialect.param}"
        )
        applied = []
        for swap in swaps:
            cursor.execute(sql, [swap.row.id])
            found = cursor.fetchone()
            applied.append(found is not None and _text(found[0]) == swap.new_value)
        return applied

    def ensure_journal(self) -> None:
        with self._errors("create the journal table"):
            cursor = self.connection.cursor()
            for statement in _JOURNAL_DDL:
                cursor.execute(statement)

    def journal(self, run_id: str) -> list[JournalEntry]:
        p = self.dialect.param
        with self._errors("read the journal"):
            cursor = self.connection.cursor()
            cursor.execute(
                "SELECT run_id, row_key, old_value, new_value, created_at, "  # noqa: S608
                f"{self.dialect.place} FROM {JOURNAL_TABLE} "
                f"WHERE run_id = {p} AND table_name = {p} AND column_name = {p} ORDER BY row_key",
                [run_id, self.target.table, self.target.column],
            )
            return [JournalEntry(*row) for row in cursor.fetchall()]

    def restore(self, entries: Sequence[JournalEntry]) -> list[bool]:
        """Each entry's row is found by its id in the column's own type (``id::text = key``
        compared text forms that differ: Python's ``str()`` of a timestamp, bytes or float
        against PostgreSQL's, so those rows were left migrated and counted as changed since;
        and no index served it). A key that does not read as an id of that type (a journal of
        an older version: Python's text of an array) fails its own row, not the chunk."""
        update, forget = self._restore_sql(), self._forget_sql()
        with self._errors("restore"):
            try:
                with self._transaction() as cursor:
                    return [self._restore_one(cursor, update, forget, e) for e in entries]
            except self.dialect.unreadable:
                pass  # rolled back; again row by row, each in a savepoint
            with self._transaction() as cursor:
                return [self._restore_guarded(cursor, update, forget, e) for e in entries]

    def _restore_sql(self) -> str:
        dialect = self.dialect
        ids = ", ".join([self._an_id()] * dialect.ids_per_key)  # one: PostgreSQL reads an =
        return (
            f"UPDATE {self._t} SET {self._c} = {dialect.value()} "  # noqa: S608
            f"WHERE {self._id} IN ({ids}) AND {dialect.holds(self._c, dialect.compared())}"
        )

    def _forget_sql(self) -> str:
        # At its place (the run's other rows are not searched), and only if it is the row
        # read: keys of distinct ids may be one text (SQLite: 1 and '1'), the new value not.
        p = self.dialect.param
        return (
            f"DELETE FROM {JOURNAL_TABLE} WHERE {self.dialect.place_is} AND run_id = {p} "  # noqa: S608
            f"AND table_name = {p} AND column_name = {p} AND row_key = {p} AND new_value = {p}"
        )

    def _restore_ids(self, key: str) -> list[object]:
        """The parameters that find the row journaled under ``key``."""
        return list(self.dialect.ids_of_key(key, self._sql_type()))

    def _restore_one(self, cursor: Any, update: str, forget: str, entry: JournalEntry) -> bool:
        ids = self._restore_ids(entry.row_key)
        cursor.execute(update, [entry.old_value, *ids, entry.new_value])
        if cursor.rowcount != 1:
            return False
        target, key = self.target, entry.row_key
        cursor.execute(
            forget, [entry.place, entry.run_id, target.table, target.column, key, entry.new_value]
        )
        return True

    def _restore_guarded(self, cursor: Any, update: str, forget: str, entry: JournalEntry) -> bool:
        cursor.execute("SAVEPOINT heimdall_restore")
        try:
            restored = self._restore_one(cursor, update, forget, entry)
        except self.dialect.unreadable:
            cursor.execute("ROLLBACK TO SAVEPOINT heimdall_restore")
            return False
        cursor.execute("RELEASE SAVEPOINT heimdall_restore")
        return restored

    def purge_journal(self, *, older_than: str | None, run_id: str | None) -> int:
        p = self.dialect.param
        where, params = (
            [f"table_name = {p}", f"column_name = {p}"],
            [self.target.table, self.target.column],
        )
        if older_than is not None:
            where.append(f"created_at < {p}")
            params.append(older_than)
        if run_id is not None:
            where.append(f"run_id = {p}")
            params.append(run_id)
        with self._errors("purge the journal"), self._transaction() as cursor:
            cursor.execute(f"DELETE FROM {JOURNAL_TABLE} WHERE {' AND '.join(where)}", params)  # noqa: S608
            return int(cursor.rowcount)

    def has_journal(self) -> bool:
        with self._errors("look for the journal"):
            cursor = self.connection.cursor()
            cursor.execute(self.dialect.table_exists, [JOURNAL_TABLE])
            return cursor.fetchone() is not None

    def runs(self) -> list[tuple[str, int, str]]:
        p = self.dialect.param
        with self._errors("read the journal"):
            cursor = self.connection.cursor()
            cursor.execute(
                f"SELECT run_id, count(*), min(created_at) FROM {JOURNAL_TABLE} "  # noqa: S608
                f"WHERE table_name = {p} AND column_name = {p} GROUP BY run_id ORDER BY 3",
                [self.target.table, self.target.column],
            )
            return [(str(r), int(n), str(c)) for r, n, c in cursor.fetchall()]

    def close(self) -> None:
        self.connection.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _begin(self, cursor: Any, begin: str) -> None:
        cursor.execute(begin)
        if self.dialect.pins is not None:
            try:
                cursor.execute(self.dialect.pins)
            except BaseException:
                self._roll_back(cursor)
                raise

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A cursor to read ids with: in a transaction where the dialect pins settings."""
        if self.dialect.pins is None:
            yield self.connection.cursor()
            return
        with self._transaction() as cursor:
            yield cursor

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        cursor = self.connection.cursor()
        self._begin(cursor, self.dialect.begin_write)
        try:
            yield cursor
        except BaseException:
            self._roll_back(cursor)
            raise
        cursor.execute("COMMIT")

    def _roll_back(self, cursor: Any) -> None:
        """Roll back after a failure; the failure is what is reported. A rollback that fails
        too (a lost connection: the server has rolled back already) must not hide it."""
        with suppress(*self.dialect.errors):
            cursor.execute("ROLLBACK")

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except self.dialect.errors as exc:
            # The driver's message names tables and columns, never row values we pass as
            # parameters; keep only its first line.
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(
                f"{self.dialect.name} could not {action} on {self.target}: {detail}"
            ) from None


class _SQLBatch:
    def __init__(
        self, store: SQLFieldStore, cursor: Any, rows: list[Row], end: object | None, missed: int
    ) -> None:
        self.rows = rows
        self.end = end
        self.missed = missed
        self.open = False
        self._store = store
        self._cursor = cursor

    def swap(self, swaps: Sequence[Swap], run_id: str | None) -> list[bool]:
        store = self._store
        if not swaps:
            return []
        with store._errors("write"):
            if store.dialect.lock_rows:
                return store.apply_swaps(self._cursor, swaps, run_id)
            # Committed when the batch ends, after its audit event is written.
            store._begin(self._cursor, store.dialect.begin_write)
            self.open = True
            return store.apply_swaps(self._cursor, swaps, run_id)


def python_bytes(key: str) -> bytes | None:
    """The bytes whose Python text (``str(b)``, ``b'\\x00a'``) is ``key``, if any: the journal
    key earlier versions wrote for an id the driver returned as bytes."""
    if not key.startswith(("b'", 'b"')):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an invalid escape: not what str() writes
            value = ast.literal_eval(key)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, bytes) and str(value) == key else None


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
