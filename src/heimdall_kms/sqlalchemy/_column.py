"""The column type ``Encrypted`` and the values it carries between the session and the database.

The type itself never encrypts: it cannot see the row's key, and the context must name the
record (``{"table", "field", "record"}``). The session hooks of :mod:`._writing` seal values
with the row's key and hand the type a :class:`Sealed` envelope (or :data:`Pending`, while an
autoincrement key is not assigned yet); the type refuses anything else, so a plain ``str``
(plaintext) can never become a bound parameter of an Encrypted column.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Text
from sqlalchemy.types import TypeDecorator

from heimdall_kms.errors import InvalidInputError

__all__ = ["PLACEHOLDER", "Encrypted", "Pending", "Sealed", "Stored"]

# What a row holds between its INSERT and the UPDATE that writes its envelope, inside one
# transaction. Not plaintext, not an envelope: `status` counts it as plaintext, so a row left
# with it (a failure under autocommit) fails the cut-over gate instead of passing it.
PLACEHOLDER = "heimdall-kms:pending-envelope"


class Pending(enum.Enum):
    """The value of a row whose key the database has not assigned yet."""

    ENVELOPE = "pending"


@dataclass(frozen=True, slots=True)
class Sealed:
    """An envelope (JSON text) sealed for this row, on its way to the database."""

    text: str

    def __repr__(self) -> str:
        return "Sealed(<envelope>)"


@dataclass(frozen=True, slots=True)
class Stored:
    """A value as the database returned it, not yet opened (a column selected on its own)."""

    text: str

    def __repr__(self) -> str:  # the column may hold plaintext nobody migrated yet
        return f"Stored(<{len(self.text)} characters>)"


class Encrypted(TypeDecorator[Any]):
    """A text column whose values are ``kms_v1`` envelopes bound to their record.

    Use it in a model of a session factory passed to :func:`heimdall_kms.sqlalchemy.attach`;
    the attribute holds plaintext (``str``) for the application.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, Sealed):
            return value.text
        if value is Pending.ENVELOPE:
            return PLACEHOLDER
        raise InvalidInputError(
            "an Encrypted column is written only through a session attached with "
            "heimdall_kms.sqlalchemy.attach (plaintext never reaches the database; "
            "an encrypted column cannot be compared with a value in a query)"
        )

    def process_result_value(self, value: Any, dialect: Dialect) -> Stored | None:
        return None if value is None else Stored(str(value))
