"""What a value of an Encrypted column is bound to: ``{"table", "field", "record"}``.

Exactly the context ``heimdall-kms migrate --table T --column C`` seals with (SPEC §3): the
table's name (schema-qualified when the table has a schema), the column's name in the
database, and the row's primary key as text (``str`` of the value, as the jobs write it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column
from sqlalchemy.orm import ColumnProperty, InstanceState, Mapper

from heimdall_kms.errors import InvalidInputError
from heimdall_kms.sqlalchemy._column import Encrypted

__all__ = ["EncryptedColumn", "encrypted_columns", "record_key"]


@dataclass(frozen=True, slots=True)
class EncryptedColumn:
    attribute: str  # the mapped attribute's name on the class
    column: Column[Any]

    def context(self, record: str) -> dict[str, str]:
        return {"table": self.column.table.fullname, "field": self.column.name, "record": record}


_CACHE: dict[Mapper[Any], tuple[EncryptedColumn, ...]] = {}


def encrypted_columns(mapper: Mapper[Any]) -> tuple[EncryptedColumn, ...]:
    """The Encrypted columns of a mapped class (cached per mapper).

    Raises:
        InvalidInputError: the class has Encrypted columns but not exactly one primary key
            column (the record of the context is that one key).
    """
    found = _CACHE.get(mapper)
    if found is None:
        found = _encrypted(mapper)
        _CACHE[mapper] = found
    return found


def _encrypted(mapper: Mapper[Any]) -> tuple[EncryptedColumn, ...]:
    found = tuple(filter(None, map(_as_encrypted, mapper.column_attrs)))
    if found and len(mapper.primary_key) != 1:
        raise InvalidInputError(
            f"{mapper.class_.__name__}: Encrypted columns need a single-column primary "
            "key (it is the record a value is bound to)"
        )
    return found


def _as_encrypted(prop: ColumnProperty[Any]) -> EncryptedColumn | None:
    """The mapped attribute as an Encrypted column, if it maps one column of that type."""
    if len(prop.columns) != 1:
        return None
    column = prop.columns[0]
    if isinstance(column, Column) and isinstance(column.type, Encrypted):
        return EncryptedColumn(prop.key, column)
    return None


def record_key(state: InstanceState[Any]) -> str | None:
    """The row's primary key as text, or None while the database has not assigned it."""
    (column,) = state.mapper.primary_key
    value = state.dict.get(state.mapper.get_property_by_column(column).key)
    if value is None and state.identity is not None:
        value = state.identity[0]  # a persistent row whose attributes are expired
    return None if value is None else str(value)
