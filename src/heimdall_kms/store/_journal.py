"""The journal of replaced values: written with a batch's swaps, read, purged, and restored
from (a rollback finds each row again by its id in the column's own type).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from heimdall_kms.store._table import SQLTable
from heimdall_kms.store.base import JOURNAL_TABLE, JournalEntry, Swap

__all__ = ["SQLJournal"]

_JOURNAL_COLUMNS = "run_id, table_name, column_name, row_key, old_value, new_value, created_at"

_JOURNAL_DDL = (
    f"CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} ("
    "run_id TEXT NOT NULL, table_name TEXT NOT NULL, column_name TEXT NOT NULL, "
    "row_key TEXT NOT NULL, old_value TEXT NOT NULL, new_value TEXT NOT NULL, "
    "created_at TEXT NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS {JOURNAL_TABLE}_run ON {JOURNAL_TABLE} "
    "(run_id, table_name, column_name)",
)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SQLJournal(SQLTable):
    """The journal's statements, for the field store of one target."""

    def ensure_journal(self) -> None:
        with self._errors("create the journal table"):
            cursor = self.connection.cursor()
            for statement in _JOURNAL_DDL:
                cursor.execute(statement)

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

    def _write_journal(self, cursor: Any, rows: list[list[str | None]]) -> None:
        size = self.dialect.journal_rows
        if size <= 1:
            cursor.executemany(self._journal_sql(), rows)
            return
        for start in range(0, len(rows), size):
            part = rows[start : start + size]
            cursor.execute(self._journal_sql(len(part)), [value for row in part for value in row])

    def _journal_sql(self, rows: int = 1) -> str:
        values = ", ".join([f"({', '.join([self.dialect.param] * 7)})"] * rows)
        return f"INSERT INTO {JOURNAL_TABLE} ({_JOURNAL_COLUMNS}) VALUES {values}"  # noqa: S608

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
        an older version: Python's text of an array) fails its own row, not the chunk.

        Under the session's own settings, not the dialect's pinned ones: its UPDATEs fire the
        application's triggers, and a key is read back the same under any (``pins``)."""
        update, forget = self._restore_sql(), self._forget_sql()
        with self._errors("restore"):
            try:
                with self._transaction(pinned=False) as cursor:
                    return [self._restore_one(cursor, update, forget, e) for e in entries]
            except self.dialect.unreadable:
                pass  # rolled back; again row by row, each in a savepoint
            with self._transaction(pinned=False) as cursor:
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
