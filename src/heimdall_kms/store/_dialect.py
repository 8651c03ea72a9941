"""What differs between the SQL databases the field store drives, described as data: the
:class:`Dialect`, what a dialect's check finds of an id column (:class:`IdColumn`), and what
the dialects share in finding rows and reading journal keys.
"""

from __future__ import annotations

import ast
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from heimdall_kms.store.base import Target

__all__ = ["Dialect", "IdColumn", "python_bytes", "view_problem"]


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
    # rows (PostgreSQL), instead of one statement per row; the statement journals the rows
    # it updated itself (a data-modifying WITH).
    joins_swaps: bool = False
    # A cursor of the connection that takes the database's own numbered placeholders ($1,
    # $2, ...) as they are, for the joined swap: psycopg reads a query's %s placeholders
    # with a Python tokenizer, and caches what it read only for up to 50 parameters, so a
    # 250-row swap (1,000 parameters) was tokenized again every batch. None: ``param``.
    numbered_cursor: Callable[[Any], Any] | None = None
    # Where the swap does not journal (joins_swaps), the journal's rows go in INSERTs of up
    # to this many rows each: on SQLite one multi-row INSERT costs about two thirds of the
    # CPU of a row at a time through executemany. 100 rows are 700 parameters, within
    # SQLite's smallest limit (999).
    journal_rows: int = 1
    # One row when the table named by the parameter exists (the journal, read before use).
    table_exists: str = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    errors: tuple[type[BaseException], ...] = field(default=())
    # How a restore finds a journal row's row again, by its id in the column's own type (an
    # index lookup): the ids a journal key may stand for, given the id column's type where
    # statements state it (``typed_ids``), always ``ids_per_key`` of them. PostgreSQL's key is
    # the database's own text of the id (the batch's read returns it), cast back to the type;
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
    # SQL run first in each transaction that reads ids: fixes, for that transaction only, the
    # settings that change how an id is written as text (PostgreSQL's DateStyle,
    # IntervalStyle, extra_float_digits, ...), so a journal written by one session restores
    # in another whatever either's settings are. Its one row: the session's own values of
    # them, then the values it set.
    pins: str | None = None
    # SQL that sets them back to those values (its parameters), for the rest of the
    # transaction: the application's triggers that an UPDATE fires write ``now()``,
    # ``current_date`` or a date's text as the application's own session would.
    unpins: str | None = None
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
