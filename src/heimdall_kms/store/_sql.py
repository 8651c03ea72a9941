"""One SQL implementation of the field store, specialised by a small dialect per database
(``_dialect``): the checks a target must pass, the reads in id order, and each batch's
compare-and-swap. The journal's statements are ``_journal``'s, the connection's plumbing
``_table``'s. Identifiers are checked by :class:`Target` and always quoted; values always
travel as parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from heimdall_kms.errors import StoreError
from heimdall_kms.store._dialect import Dialect, IdColumn
from heimdall_kms.store._journal import _JOURNAL_COLUMNS, SQLJournal, now_rfc3339
from heimdall_kms.store._table import Connection, SQLTable
from heimdall_kms.store.base import JOURNAL_TABLE, Match, Row, Swap, Target

__all__ = ["SQLFieldStore"]


# Rows per joined compare-and-swap statement: three parameters each, well inside PostgreSQL's
# 65,535 per statement, and one statement text (prepared once) for every full batch of 250.
_JOINED_ROWS = 1000
_JOINED_TEXTS = 4  # the joined swap's texts a store keeps


class SQLFieldStore(SQLJournal):
    """A :class:`FieldStore` over one DB-API connection (see ``base.FieldStore``)."""

    def __init__(
        self,
        connection: Connection,
        target: Target,
        dialect: Dialect,
        describe: Callable[[SQLTable], Mapping[str, object]],
        writable: Callable[[SQLFieldStore], None],
        *,
        id_column: Callable[[SQLTable, Mapping[str, object]], IdColumn],
        max_chars: int | None = None,
    ) -> None:
        self.connection = connection
        self.target = target
        self.dialect = dialect
        self._describe = describe
        self._writable = writable
        self._id_column = id_column
        self._max_chars = max_chars
        self._ids = None
        # The joined swap's texts by (rows, id type): a full batch's is built once per run;
        # a few only (batches that lost rows to failures are of any size, memory stays flat).
        self._joined: dict[tuple[int, str | None, bool], str] = {}
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
        # Where the journal keeps the database's own text of the id, it is read here, under
        # the fixed settings (``pins``): the swap's UPDATE runs under the session's own. (Named:
        # a second output column of the id's name would make the ORDER BY ambiguous.)
        text = f", {self._id}::text AS heimdall_id_text" if self.dialect.typed_ids else ""
        cursor.execute(
            f"SELECT {self._id}, {self.dialect.read(self._c)}{text} FROM {self._t}{clause} "  # noqa: S608
            f"ORDER BY {self._id} LIMIT {self.dialect.param}{locking}",
            [*params, limit],
        )
        return [
            Row(row_id, str(row_id), _text(value), isinstance(value, bytes), *text_of_id)
            for row_id, value, *text_of_id in cursor.fetchall()
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
        session = None
        with self._errors("read"):
            if lock:
                session = self._begin(cursor, "BEGIN")
            try:
                rows = self._fetch(cursor, match, after, limit, lock, upto=upto)
                end = rows[-1].id if len(rows) == limit else upto
                missed = self._missed(cursor, match, after, end, len(rows)) if lock else 0
            except BaseException:
                if lock:
                    self._roll_back(cursor)
                raise
        return _SQLBatch(self, cursor, rows, end, missed, session=session)

    # -- writing ------------------------------------------------------------------------------

    def _cas_sql(self) -> str:
        dialect = self.dialect
        return (
            f"UPDATE {self._t} SET {self._c} = {dialect.value()} "  # noqa: S608
            f"WHERE {self._id} = {dialect.param} AND {dialect.holds(self._c, dialect.compared())}"
        )

    def apply_swaps(self, cursor: Any, swaps: Sequence[Swap], run_id: str | None) -> list[bool]:
        if self.dialect.joins_swaps:
            keys = self._swap_joined(cursor, swaps, run_id)  # journaled by the same statement
        else:
            keys = self._swap_each(cursor, swaps)
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

    def _swap_joined(
        self, cursor: Any, swaps: Sequence[Swap], run_id: str | None
    ) -> list[str | None]:
        """Compare-and-swap the batch as one ``UPDATE ... FROM (VALUES ...)`` per chunk: each
        row is updated where it still holds the value read, as the one-row statement does,
        and (``run_id``) journaled by the same statement, from what it updated. Returns, per
        swap, the database's own text of the id of the row it updated, as the batch read it
        (the journal's key: a restore reads it back in the column's type), None where it did
        not; by each row's place in the chunk (not by comparing ids here: an id's Python
        value need not equal itself, a float NaN for one)."""
        keys: list[str | None] = [None] * len(swaps)
        sql_type = self._id_type()
        numbered = self.dialect.numbered_cursor
        if numbered is not None:
            cursor = numbered(self.connection)  # the same connection, so its transaction
        journal = (
            [] if run_id is None else [run_id, self.target.table, self.target.column, now_rfc3339()]
        )
        for start in range(0, len(swaps), _JOINED_ROWS):
            chunk = swaps[start : start + _JOINED_ROWS]
            cursor.execute(
                self._joined_sql(len(chunk), sql_type, journaled=run_id is not None),
                [
                    part
                    for n, swap in enumerate(chunk, start)
                    for part in (n, swap.row.id, _id_text(swap.row), swap.new_value, swap.row.value)
                ]
                + journal,
            )
            for (n,) in cursor.fetchall():
                keys[n] = _id_text(swaps[n].row)
        return keys

    def _joined_sql(self, rows: int, sql_type: str | None, *, journaled: bool) -> str:
        known = self._joined.get((rows, sql_type, journaled))
        if known is not None:
            return known
        dialect = self.dialect
        if dialect.numbered_cursor is not None:
            values = ",".join(self._joined_row(sql_type, 5 * n + 1) for n in range(rows))
            run, table, column, created = (f"${5 * rows + i}::text" for i in range(1, 5))
        else:
            values = ",".join([self._joined_row(sql_type)] * rows)
            run = table = column = created = f"{dialect.param}::text"
        # The VALUES hold the texts as given (the journal keeps those); cast where they meet
        # the column, as the one-row statement casts its parameters.
        update = (
            f"UPDATE {self._t} AS t SET {self._c} = {dialect.value('v.new')} "  # noqa: S608
            f"FROM (VALUES {values}) AS v(n, id, key, new, old) "
            f"WHERE t.{self._id} = v.id AND "
            f"{dialect.holds(f't.{self._c}', dialect.compared('v.old'))} "
        )
        if journaled:
            # A data-modifying WITH runs once, whether or not the outer query reads it: each
            # row updated is journaled in this statement (no COPY, values not sent twice).
            # The key is the id's text as read (``t.id::text`` here would be the session's).
            sql = (
                f"WITH swapped AS ({update}RETURNING v.n, v.key, v.old, v.new), "  # noqa: S608
                f"journaled AS (INSERT INTO {JOURNAL_TABLE} ({_JOURNAL_COLUMNS}) "
                f"SELECT {run}, {table}, {column}, key, old, new, {created} FROM swapped) "
                "SELECT n FROM swapped"
            )
        else:
            sql = f"{update}RETURNING v.n"
        if len(self._joined) >= _JOINED_TEXTS:
            self._joined.clear()
        self._joined[rows, sql_type, journaled] = sql
        return sql

    def _joined_row(self, sql_type: str | None, first: int | None = None) -> str:
        """One row of the joined swap's VALUES: its place, id, the id's text (the journal's
        key), new and old value, in ``param``'s placeholders, or numbered from ``first`` ($6
        to $10 for 6)."""
        dialect = self.dialect
        if first is None:
            n, row_id, key, new, old = [dialect.param] * 5
        else:
            n, row_id, key, new, old = (f"${i}" for i in range(first, first + 5))
        # The id is cast to the column's own type, as the one-row statement's parameter is
        # inferred to be: an enum, char(N) or macaddr id compared with text would fail or
        # (char(N): trailing blanks) match nothing.
        row_id = f"{row_id}::{sql_type}" if sql_type is not None else row_id
        return f"({n}::integer,{row_id},{key}::text,{new}::text,{old}::text)"

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


class _SQLBatch:
    def __init__(
        self,
        store: SQLFieldStore,
        cursor: Any,
        rows: list[Row],
        end: object | None,
        missed: int,
        *,
        session: Sequence[str] | None,
    ) -> None:
        self.rows = rows
        self.end = end
        self.missed = missed
        self.open = False
        self._store = store
        self._cursor = cursor
        self._session = session  # the session's own settings, pinned while the rows were read

    def swap(self, swaps: Sequence[Swap], run_id: str | None) -> list[bool]:
        store = self._store
        if not swaps:
            return []
        with store._errors("write"):
            if store.dialect.lock_rows:
                # The UPDATE fires the application's triggers: under its session's settings.
                store._unpin(self._cursor, self._session)
                self._session = None
                return store.apply_swaps(self._cursor, swaps, run_id)
            # Committed when the batch ends, after its audit event is written.
            store._begin(self._cursor, store.dialect.begin_write)
            self.open = True
            return store.apply_swaps(self._cursor, swaps, run_id)


def _id_text(row: Row) -> str:
    """The journal's key of a row: the database's text of its id where it was read."""
    return row.key if row.id_text is None else row.id_text


def _text(value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
