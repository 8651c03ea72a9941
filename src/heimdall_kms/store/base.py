"""The field store: the user's own table seen as (row id, envelope column) pairs.

A store reads rows in keyset order (``id > cursor ORDER BY id``) so a scan of millions of rows
costs one index range read per batch and can resume anywhere. Writes are compare-and-swap:
``UPDATE ... SET col = new WHERE id = ? AND col = old``, so a value the application changed
between our read and our write is never overwritten. Each batch's writes, and the journal rows
that make them reversible, commit in one transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from heimdall_kms.errors import StoreError

__all__ = [
    "JOURNAL_TABLE",
    "Batch",
    "FieldStore",
    "JournalEntry",
    "Match",
    "Row",
    "Swap",
    "Target",
]

JOURNAL_TABLE = "heimdall_kms_journal"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# A dotted path of up to 16 keys into a JSON document (``raw``, ``pii.ssn``).
_JSON_PATH = re.compile(r"[^.\s]{1,128}(\.[^.\s]{1,128}){0,15}")


class Match(StrEnum):
    """A cheap SQL pre-filter on the stored text; Python still classifies every value."""

    ALL = "all"
    LEGACY = "legacy"  # text that mentions ciphertext: envelopes of either format
    KMS_V1 = "kms_v1"  # text that mentions kms_v1

    @property
    def patterns(self) -> tuple[str, ...]:
        """LIKE patterns (``!`` escapes): a value matching one of them is read; none for ALL.

        A job skips what the pre-filter rules out without looking, so it admits whatever the
        classifier could read as an envelope: text naming a key only an envelope has, and any
        text with a ``\\u`` escape (a key's letter escaped, ``"cipher\\u0074ext"``, is read
        by any JSON reader as the key). No quotes in the patterns: an envelope escaped inside
        a JSON string (a property bag's "raw", a jsonb string) has its quotes escaped too. A
        key in another case is no envelope, only damaged: the census reports it; SQLite's LIKE
        admits it (it ignores ASCII case), PostgreSQL's does not (ILIKE costs 2 µs a row).
        """
        return _PATTERNS[self]


_PATTERNS = {
    Match.ALL: (),
    Match.LEGACY: ("%ciphertext%", "%encryption_version%", "%\\u%"),
    Match.KMS_V1: ("%kms_v1%", "%\\u%"),
}


@dataclass(frozen=True, slots=True)
class Target:
    """One column of one table, with the column that identifies rows."""

    table: str
    column: str
    id_column: str = "id"
    # The envelope sits at this dotted path inside a JSON document stored in the column.
    json_path: str | None = None

    def __post_init__(self) -> None:
        if self.json_path is not None and not _JSON_PATH.fullmatch(self.json_path):
            raise StoreError(
                f"JSON path {self.json_path[:80]!r} must be up to 16 dot-separated keys "
                "without whitespace"
            )
        for what, name in (
            ("table", self.table),
            ("column", self.column),
            ("id column", self.id_column),
        ):
            parts = name.split(".")
            if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
                raise StoreError(f"{what} {name!r} is not a plain SQL identifier")
        # A value bound to its row by the value's own old text cannot be read once written:
        # every value of such a job would fail authentication afterwards. SQLite compares
        # names without case, so the check does too.
        if self.id_column.casefold() == self.column.casefold():
            raise StoreError(f"id column {self.id_column!r} is the column itself")

    def __str__(self) -> str:
        if self.json_path is None:
            return f"{self.table}.{self.column}"
        return f"{self.table}.{self.column}:{self.json_path}"

    @property
    def path_keys(self) -> tuple[str, ...] | None:
        return None if self.json_path is None else tuple(self.json_path.split("."))

    def context(self, row_key: str) -> dict[str, str]:
        """The encryption context a value of this target is sealed with (SPEC §3)."""
        if self.json_path is None:
            return {"table": self.table, "field": self.column, "record": row_key}
        return {
            "table": self.table,
            "field": self.column,
            "path": self.json_path,
            "record": row_key,
        }


@dataclass(frozen=True, slots=True)
class Row:
    id: object  # the id as the database returned it, for keyset order and writes
    key: str  # the id as text, for contexts, reports and the journal
    value: str | None
    # The database holds the value as bytes (a SQLite BLOB): read as UTF-8 text, which is
    # not what it holds, so a job never writes over it (it fails the row instead).
    binary: bool = False
    # The database's own text of the id, read under the store's fixed settings, where the
    # journal keeps that (PostgreSQL's ``id::text``); None: ``key``.
    id_text: str | None = None


@dataclass(frozen=True, slots=True)
class Swap:
    row: Row
    new_value: str


@dataclass(frozen=True, slots=True)
class JournalEntry:
    run_id: str
    row_key: str
    old_value: str
    new_value: str
    created_at: str
    # Where the database keeps this journal row (SQLite's rowid, PostgreSQL's ctid): a
    # restore deletes it there, not by a search among the run's rows (one per row restored).
    place: str | None = None


class Batch(Protocol):
    rows: list[Row]
    # The range the read covered ends here (the last row's id, or the range's own end when
    # the read came short of the limit; None: the end of the table).
    end: object | None
    # Rows of that range the read skipped because another transaction holds their lock
    # (PostgreSQL ``SKIP LOCKED``; always 0 where rows are not locked).
    missed: int

    def swap(self, swaps: Sequence[Swap], run_id: str | None) -> list[bool]:
        """Compare-and-swap each value; journal the applied ones under ``run_id``.

        Returns:
            Per swap, whether it was applied (False: the stored value had changed).

        Raises:
            StoreError: the database refused the writes; none of them is kept.
        """


class FieldStore(Protocol):
    target: Target

    @property
    def json_column(self) -> bool:
        """The column is json/jsonb: its text is the rendering of a JSON value."""

    @property
    def max_chars(self) -> int | None:
        """The most characters the column holds (``varchar(N)``); None: no bound."""

    def check(self, *, writable: bool, scans: bool = True) -> None:
        """Verify table, columns and (if asked) write permission before any work; ``scans``:
        the command reads the rows in id order (a job, a census), so the id column must
        identify every row (the journal's commands and a rollback read the journal instead).

        Raises:
            StoreError: one line naming what is wrong.
        """

    def count(self, match: Match = Match.ALL) -> int:
        """How many rows the pre-filter admits (for progress totals)."""

    def scan(self, batch_size: int, match: Match = Match.ALL) -> Iterator[list[Row]]:
        """Read-only keyset scan of every row the pre-filter admits, batch by batch."""

    def batch(
        self, after: object | None, limit: int, match: Match, upto: object | None = None
    ) -> AbstractContextManager[Batch]:
        """The next rows after ``after`` (and at most ``upto``) for processing; commits on
        clean exit.

        On PostgreSQL the rows are locked (``FOR UPDATE SKIP LOCKED``) until the batch ends,
        so several workers split a table between them without a coordinator; rows locked by
        someone else are counted in ``missed`` so the job comes back for them.
        """

    def ensure_journal(self) -> None:
        """Create the journal table if it does not exist."""

    def journal(self, run_id: str) -> list[JournalEntry]:
        """The journal rows of one run for this target."""

    def restore(self, entries: Sequence[JournalEntry]) -> list[bool]:
        """Put journaled old values back where the stored value is still the new one."""

    def purge_journal(self, *, older_than: str | None, run_id: str | None) -> int:
        """Delete journal rows (of one run, or created before an RFC 3339 time)."""

    def has_journal(self) -> bool:
        """Whether the journal table exists (read-only: nothing is created)."""

    def runs(self) -> list[tuple[str, int, str]]:
        """Journaled runs of this target: (run id, rows, first created_at)."""

    def close(self) -> None: ...
