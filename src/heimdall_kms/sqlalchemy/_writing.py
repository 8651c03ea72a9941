"""A flush seals every new or changed Encrypted value with one ``encrypt_many`` call.

Each value is bound to its row's key, so the key must be known when it is sealed:

* when every row of the flush has its key (set by the application, or already persistent),
  the values are sealed in ``before_flush`` and the INSERT/UPDATE writes the envelopes;
* otherwise (an autoincrement key, assigned by the INSERT) the flush writes the placeholder
  :data:`~heimdall_kms.sqlalchemy._column.PLACEHOLDER` (never the plaintext), and
  ``after_flush_postexec``, once the keys are assigned and in the same transaction, seals
  the values and writes each envelope with one executemany UPDATE per column. If sealing or
  the UPDATE fails, the flush fails and the transaction is rolled back with it.

After the flush the instances hold the plaintext again (as committed values), so the
application reads back what it wrote without a KMS call.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Connection, bindparam, inspect, update
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.orm.attributes import set_committed_value

from heimdall_kms.envelope import Envelope
from heimdall_kms.errors import InvalidInputError
from heimdall_kms.service import Crypto
from heimdall_kms.sqlalchemy._binding import EncryptedColumn, encrypted_columns, record_key
from heimdall_kms.sqlalchemy._column import Pending, Sealed

__all__ = ["Writer"]


@dataclass(frozen=True, slots=True)
class _Value:
    obj: object  # held until the flush is done: the identity map holds rows weakly
    state: InstanceState[Any]
    column: EncryptedColumn
    plaintext: str


class Writer:
    """The values of one session's flush, from ``before_flush`` to ``after_flush_postexec``."""

    def __init__(self, crypto: Crypto) -> None:
        self.crypto = crypto
        self.sealed: list[_Value] = []  # written by the flush itself
        self.pending: list[_Value] = []  # written by the UPDATE after it

    def before_flush(self, session: Session) -> None:
        values = _changed(session)
        if not values:
            return
        if all(record_key(value.state) is not None for value in values):
            self._seal_now(values)
        else:
            self._seal_after_insert(values)

    def _seal_now(self, values: list[_Value]) -> None:
        """Every row has its key: the flush writes the envelopes."""
        for value, envelope in zip(values, self._seal(values), strict=True):
            _put(value, Sealed(envelope.to_json()))
        self.sealed = values

    def _seal_after_insert(self, values: list[_Value]) -> None:
        """A row has no key yet: the flush writes the placeholder, :meth:`after_flush` the
        envelopes."""
        for value in values:
            _put(value, Pending.ENVELOPE)
        self.pending = values

    def after_flush(self, session: Session) -> None:
        if self.pending:
            # On failure the lists stay, for forget() to give the instances their plaintext.
            self._write_pending(session, self.pending)
        for value in chain(self.sealed, self.pending):
            set_committed_value(value.obj, value.column.attribute, value.plaintext)
        self.sealed, self.pending = [], []

    def forget(self) -> None:
        """A rollback: the instances get back the plaintext the application gave them."""
        for value in chain(self.sealed, self.pending):
            setattr(value.obj, value.column.attribute, value.plaintext)
        self.sealed, self.pending = [], []

    def _write_pending(self, session: Session, values: list[_Value]) -> None:
        if any(record_key(value.state) is None for value in values):
            raise InvalidInputError("a row of the flush has no primary key after its INSERT")
        connection = session.connection()
        for column, rows in _rows_by_column(values, self._seal(values)).items():
            _update(connection, column, rows)

    def _seal(self, values: list[_Value]) -> list[Envelope]:
        """One encrypt call for the values, each bound to its row's key (known to all)."""
        return self.crypto.encrypt_many(
            (value.plaintext, value.column.context(str(record_key(value.state))))
            for value in values
        )


def _rows_by_column(
    values: list[_Value], envelopes: list[Envelope]
) -> dict[EncryptedColumn, list[dict[str, Any]]]:
    """The parameters of each column's UPDATE: every row's key and its value's envelope."""
    by_column: dict[EncryptedColumn, list[dict[str, Any]]] = defaultdict(list)
    for value, envelope in zip(values, envelopes, strict=True):
        (key,) = value.state.mapper.primary_key_from_instance(value.obj)
        by_column[value.column].append({"hmd_key": key, "hmd_value": Sealed(envelope.to_json())})
    return by_column


def _update(connection: Connection, column: EncryptedColumn, rows: list[dict[str, Any]]) -> None:
    """Write the envelopes of one column with one executemany UPDATE.

    Raises:
        InvalidInputError: the database says a row was not updated.
    """
    table = column.column.table
    (key_column,) = table.primary_key.columns
    statement = (
        update(table)
        .where(key_column == bindparam("hmd_key"))
        .values({column.column.name: bindparam("hmd_value", type_=column.column.type)})
    )
    result = connection.execute(statement, rows)
    if connection.dialect.supports_sane_multi_rowcount and result.rowcount != len(rows):
        raise InvalidInputError(
            f"{table.fullname}: {result.rowcount} of {len(rows)} rows took their "
            "envelope after the INSERT"
        )


def _changed(session: Session) -> list[_Value]:
    """Every new or changed Encrypted value of the flush, as plaintext."""
    found: list[_Value] = []
    for obj in chain(session.new, session.dirty):
        state: InstanceState[Any] = inspect(obj)
        for column in encrypted_columns(state.mapper):
            plaintext = _set_plaintext(state, column)
            if plaintext is not None:
                found.append(_Value(obj, state, column, plaintext))
    return found


def _set_plaintext(state: InstanceState[Any], column: EncryptedColumn) -> str | None:
    """The plaintext the application set on the column, if it set one (not None, nor an
    envelope or the placeholder this module put there).

    Raises:
        InvalidInputError: the value set is not text.
    """
    added = state.attrs[column.attribute].history.added
    if not added or added[0] is None or isinstance(added[0], Sealed | Pending):
        return None
    if not isinstance(added[0], str):
        raise InvalidInputError(
            f"{column.column.table.fullname}.{column.column.name}: an Encrypted "
            "value must be text (str)"
        )
    return added[0]


def _put(value: _Value, replacement: Sealed | Pending) -> None:
    setattr(value.obj, value.column.attribute, replacement)
