"""Field stores over the user's own tables, and the targets file."""

from __future__ import annotations

from heimdall_kms.errors import ConfigurationError, StoreError
from heimdall_kms.store.base import (
    JOURNAL_TABLE,
    Batch,
    FieldStore,
    JournalEntry,
    Match,
    Row,
    Swap,
    Target,
)
from heimdall_kms.store.targets import load_targets

__all__ = [
    "JOURNAL_TABLE",
    "Batch",
    "FieldStore",
    "JournalEntry",
    "Match",
    "Row",
    "Swap",
    "Target",
    "load_targets",
    "open_store",
]


def open_store(url: str, target: Target) -> FieldStore:
    """Open the store for ``url`` (``sqlite:///…`` or ``postgresql://…``).

    Raises:
        ConfigurationError: an unsupported URL, or psycopg missing for PostgreSQL.
        StoreError: the database cannot be opened.
    """
    if url.startswith("sqlite:///"):
        from heimdall_kms.store.sqlite import open_sqlite  # noqa: PLC0415 - one backend per run.

        return open_sqlite(url, target)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from heimdall_kms.store.postgres import open_postgres  # noqa: PLC0415
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("psycopg"):
                raise ConfigurationError(
                    "PostgreSQL needs: pip install 'heimdall-kms[postgres]'"
                ) from None
            raise
        return open_postgres(url, target)
    raise StoreError("database URL must be sqlite:///PATH or postgresql://USER@HOST/DB")
