"""One target's table over one DB-API connection: its quoted names, its id column's type where
statements state it, and the transactions and errors every statement goes through.

Both drivers are DB-API 2 connections in autocommit mode; transactions are begun and ended
explicitly so the same code drives SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from heimdall_kms.errors import StoreError
from heimdall_kms.store._dialect import Dialect, IdColumn
from heimdall_kms.store.base import Target

__all__ = ["Connection", "SQLTable"]


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def close(self) -> None: ...


class SQLTable:
    """The connection, target and dialect the store's statements share (set by the store)."""

    connection: Connection
    target: Target
    dialect: Dialect
    _describe: Callable[[SQLTable], Mapping[str, object]]
    _id_column: Callable[[SQLTable, Mapping[str, object]], IdColumn]
    _ids: IdColumn | None  # what the check found (the joined swap's id type)
    _t: str  # the table, the column and the id column, quoted
    _c: str
    _id: str

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

    def close(self) -> None:
        self.connection.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _begin(self, cursor: Any, begin: str, *, pinned: bool = True) -> Sequence[str] | None:
        """Begin a transaction; ``pinned``, with the dialect's settings fixed in it. Returns
        the session's own values of those settings (for :meth:`_unpin`), None if none."""
        cursor.execute(begin)
        if self.dialect.pins is None or not pinned:
            return None
        try:
            cursor.execute(self.dialect.pins)
            row = cursor.fetchone()
        except BaseException:
            self._roll_back(cursor)
            raise
        session: Sequence[str] = row[: len(row) // 2]
        return session

    def _unpin(self, cursor: Any, session: Sequence[str] | None) -> None:
        """The session's own settings again (``session``, from :meth:`_begin`) for the rest
        of the transaction: before statements that fire the application's triggers."""
        if session is not None and self.dialect.unpins is not None:
            cursor.execute(self.dialect.unpins, list(session))

    @contextmanager
    def _reading(self) -> Iterator[Any]:
        """A cursor to read ids with: in a transaction where the dialect pins settings."""
        if self.dialect.pins is None:
            yield self.connection.cursor()
            return
        with self._transaction() as cursor:
            yield cursor

    @contextmanager
    def _transaction(self, *, pinned: bool = True) -> Iterator[Any]:
        cursor = self.connection.cursor()
        self._begin(cursor, self.dialect.begin_write, pinned=pinned)
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
