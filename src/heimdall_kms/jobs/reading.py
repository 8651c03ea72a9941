"""How the jobs read a target's values: where in the column, and as what kind of column."""

from __future__ import annotations

import functools
from collections.abc import Callable

from heimdall_kms.jobs.classify import Classified, classify
from heimdall_kms.store import FieldStore

__all__ = ["Reader", "reader_for"]

Reader = Callable[[str | None], Classified]


def reader_for(store: FieldStore) -> Reader:
    """``classify`` for this store's values: at its JSON path, knowing its column type."""
    return functools.partial(classify, path=store.target.path_keys, json_column=store.json_column)
