"""The targets file: several table columns for one run of ``migrate``/``status``/``reencrypt``.

TOML, for example::

    database = "postgresql://heimdall@db/heimdall"   # optional; --database wins
    [[targets]]
    table = "customers"
    column = "ssn"
    id_column = "customer_id"                         # optional, default "id"
    json_path = "raw"                                 # optional: envelope inside a document

One run handles one path per column: a column listed twice (with two paths) is refused, since
each path's rewrite changes the whole document and the journal keeps one entry per row.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from heimdall_kms.errors import InvalidInputError, StoreError
from heimdall_kms.store.base import Target

__all__ = ["TargetsFile", "load_targets"]

_MAX_TARGETS = 1000
_KEYS = frozenset({"table", "column", "id_column", "json_path"})


@dataclass(frozen=True, slots=True)
class TargetsFile:
    database: str | None
    targets: tuple[Target, ...]


def load_targets(path: Path) -> TargetsFile:
    """Read and check a targets file.

    Raises:
        InvalidInputError: unreadable, not TOML, or an entry that is wrong (named by number).
    """
    document = _read(path)
    unknown = sorted(set(document) - {"database", "targets"})
    if unknown:
        raise InvalidInputError(f"targets file {path}: unknown key {unknown[0]!r}")
    database = document.get("database")
    if database is not None and not isinstance(database, str):
        raise InvalidInputError(f"targets file {path}: 'database' must be a string")
    entries = _entries(path, document.get("targets"))
    targets = tuple(_target(path, number, entry) for number, entry in enumerate(entries, 1))
    columns = [(target.table, target.column) for target in targets]
    if len(set(columns)) != len(columns):
        raise InvalidInputError(f"targets file {path}: a table column is listed twice")
    return TargetsFile(database, targets)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidInputError(f"targets file {path}: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInputError(f"targets file {path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise InvalidInputError(
            f"targets file {path}: nested too deeply to be a targets file"
        ) from None


def _entries(path: Path, entries: object) -> list[object]:
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(f"targets file {path}: needs at least one [[targets]] table")
    if len(entries) > _MAX_TARGETS:
        raise InvalidInputError(f"targets file {path}: more than {_MAX_TARGETS} targets")
    return entries


def _target(path: Path, number: int, entry: object) -> Target:
    where = f"targets file {path}: target {number}"
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where} is not a table")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise InvalidInputError(f"{where}: unknown key {unknown[0]!r}")
    for key in ("table", "column"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise InvalidInputError(f"{where}: '{key}' is required and must be a string")
    id_column = _string(entry, "id_column", where, default="id")
    json_path = _string(entry, "json_path", where, default=None)
    try:
        return Target(entry["table"], entry["column"], id_column, json_path)
    except StoreError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None


@overload
def _string(entry: dict[str, Any], key: str, where: str, *, default: str) -> str: ...
@overload
def _string(entry: dict[str, Any], key: str, where: str, *, default: None) -> str | None: ...
def _string(entry: dict[str, Any], key: str, where: str, *, default: str | None) -> str | None:
    """An optional string key; left out, its default (a key without a default may be absent)."""
    value = entry.get(key, default)
    if value is None and default is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{where}: '{key}' must be a string")
    return value
