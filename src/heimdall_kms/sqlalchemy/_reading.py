"""Loaded rows are opened in batches, on first access, under the scope in force then.

When a query loads a row, each Encrypted attribute's stored value is taken out of the
instance and replaced by a loader; the first access to any of them opens every value loaded
so far in the session with one ``decrypt_outcomes`` call (one batched KMS call per provider
batch), each stated with its row's context, so a value moved to another row fails with
``IntegrityError``. A value that fails keeps failing on each access with its own error; a
call that fails as a whole (no actor/reason, KMS unavailable) leaves every value pending, to
be tried again on the next access.

Rows refreshed by a query (expired instances loaded again) are handled as loaded ones. A row
refreshed on its own (an expired attribute being read, ``Session.refresh``) is opened at once,
with the values still pending: SQLAlchemy reads the attribute right after the refresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import InstanceState
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.base import LoaderCallableStatus, PassiveFlag

from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.service import Crypto
from heimdall_kms.sqlalchemy._binding import encrypted_columns, record_key
from heimdall_kms.sqlalchemy._column import Stored

__all__ = ["Reader"]


@dataclass(frozen=True, slots=True)
class _Item:
    state: InstanceState[Any]
    attribute: str
    stored: Stored
    context: dict[str, str]


class _Failed:
    """The loader of a value that failed to open: each access raises its error."""

    def __init__(self, error: HeimdallKMSError) -> None:
        self.error = error

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        if not passive & PassiveFlag.SQL_OK:
            return LoaderCallableStatus.PASSIVE_NO_RESULT
        raise self.error


class _Pending:
    """The loader of a value not opened yet: the first access opens all pending values."""

    def __init__(self, reader: Reader, attribute: str) -> None:
        self.reader = reader
        self.attribute = attribute

    def __call__(self, state: InstanceState[Any], passive: PassiveFlag) -> Any:
        if not passive & PassiveFlag.SQL_OK:  # e.g. a history check during a flush
            return LoaderCallableStatus.PASSIVE_NO_RESULT
        self.reader.open_pending()
        if self.attribute not in state.dict:  # this value failed: its loader raises why
            return state.callables[self.attribute](state, passive)
        return LoaderCallableStatus.ATTR_WAS_SET


class Reader:
    """The values loaded in one session and not opened yet."""

    def __init__(self, crypto: Crypto) -> None:
        self.crypto = crypto
        self.pending: list[_Item] = []

    def loaded(self, state: InstanceState[Any]) -> None:
        """A query loaded ``state``: take its stored values out, to be opened on access."""
        for column in encrypted_columns(state.mapper):
            stored = state.dict.get(column.attribute)
            if not isinstance(stored, Stored):
                continue
            record = record_key(state)
            if record is None:  # pragma: no cover - a loaded row always has its key
                continue
            del state.dict[column.attribute]
            state.expired_attributes.discard(column.attribute)  # loaded: ours to open now
            if "callables" not in state.__dict__:
                state.callables = {}  # the shared empty default must not be written to
            state.callables[column.attribute] = _Pending(self, column.attribute)
            self.pending.append(_Item(state, column.attribute, stored, column.context(record)))

    def refreshed(self, state: InstanceState[Any], only_this: bool) -> None:
        """``state`` was loaded again: by a query of many rows (opened on access, as
        :meth:`loaded`), or on its own (``only_this``: an expired attribute being read, or
        ``Session.refresh``), where SQLAlchemy reads the attribute right after."""
        self.loaded(state)
        if only_this:
            self.open_pending()

    def _ours(self, item: _Item) -> bool:
        state = item.state
        return (
            item.attribute not in state.dict
            and isinstance(loader := state.callables.get(item.attribute), _Pending)
            and loader.reader is self
            and state.obj() is not None
        )

    def open_pending(self) -> None:
        """Open every pending value in one call, under the current scope.

        Raises:
            InvalidInputError: no actor or reason (neither a scope nor ...). KMSError,
                AuditWriteError: the whole call failed; the values stay pending.
        """
        items = [item for item in self.pending if self._ours(item)]
        if items:
            self._open(items)
        self.pending = []

    def _open(self, items: list[_Item]) -> None:
        """One decrypt call: each value becomes its plaintext, or the error it failed with."""
        outcomes = self.crypto.decrypt_outcomes(
            [item.stored.text for item in items], contexts=[item.context for item in items]
        )
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                item.state.callables[item.attribute] = _Failed(outcome)
            else:
                set_committed_value(item.state.obj(), item.attribute, outcome)
