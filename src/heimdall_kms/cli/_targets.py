"""The target options shared by the data commands (SPEC §3) and how they resolve."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from heimdall_kms.config import database_url
from heimdall_kms.errors import ConfigurationError, StoreError
from heimdall_kms.store import FieldStore, Target, load_targets, open_store

__all__ = ["TargetSpec", "checked_stores", "opened_stores", "target_options"]

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What the target options said, before it is resolved against the environment."""

    database: str | None
    table: str | None
    column: str | None
    id_column: str
    targets_file: Path | None
    json_path: str | None = None

    @property
    def names_targets(self) -> bool:
        """Whether any target option was given (the values are checked on resolving)."""
        return bool(self.table or self.column or self.targets_file)


def target_options(command: _F) -> _F:
    """``--database --table --id-column --column [--json-path]`` or ``--targets FILE``."""

    @functools.wraps(command)
    def collect(
        *,
        database: str | None,
        table: str | None,
        id_column: str,
        column: str | None,
        json_path: str | None,
        targets_file: Path | None,
        **rest: Any,
    ) -> Any:
        spec = TargetSpec(database, table, column, id_column, targets_file, json_path)
        return command(spec=spec, **rest)

    decorators = [
        click.option(
            "--database",
            metavar="URL",
            help="sqlite:///PATH or postgresql://... (default: HMD_DATABASE_URL).",
        ),
        click.option("--table", metavar="T", help="Table holding the values."),
        click.option(
            "--id-column",
            default="id",
            show_default=True,
            metavar="ID",
            help="Column that identifies a row (sealed into the context as 'record').",
        ),
        click.option("--column", metavar="C", help="Column holding the envelopes."),
        click.option(
            "--json-path",
            metavar="PATH",
            help="The column holds JSON documents; the envelope is at this dotted path in each "
            "(an object or a JSON string). The rest of each document is kept as it was.",
        ),
        click.option(
            "--targets",
            "targets_file",
            metavar="FILE",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML file listing several table/column targets instead.",
        ),
    ]
    wrapped: Any = collect
    for decorator in reversed(decorators):
        wrapped = decorator(wrapped)
    return cast(_F, wrapped)


def resolve(spec: TargetSpec) -> tuple[str, list[Target]]:
    """The database URL and the targets the options name.

    Raises:
        click.UsageError: conflicting or missing options. ConfigurationError: bad URL.
    """
    file_database, targets = _named_targets(spec)
    url = spec.database or file_database or database_url(os.environ)
    if url is None:
        raise click.UsageError("--database URL is required (or set HMD_DATABASE_URL)")
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigurationError("--database: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    return url, targets


def _named_targets(spec: TargetSpec) -> tuple[str | None, list[Target]]:
    """The targets file's database and targets, or the one target the flags name."""
    if spec.targets_file is None:
        return None, [_flag_target(spec)]
    if spec.table or spec.column or spec.json_path:
        raise click.UsageError(
            "give --targets FILE or --table/--column/--json-path, not both "
            "(a target's path goes in the file as json_path)"
        )
    loaded = load_targets(spec.targets_file)
    return loaded.database, list(loaded.targets)


def _flag_target(spec: TargetSpec) -> Target:
    """The one target ``--table``, ``--column`` (and ``--json-path``) name."""
    if not spec.table or not spec.column:
        raise click.UsageError("--table and --column are required (or --targets FILE)")
    try:
        return Target(spec.table, spec.column, spec.id_column, spec.json_path)
    except StoreError as exc:
        raise click.UsageError(str(exc)) from None


@contextmanager
def opened_stores(spec: TargetSpec, *, required: bool = True) -> Iterator[list[FieldStore]]:
    """Open one store per target, closing all of them afterwards.

    With ``required=False`` and no target option given, there are no stores.
    """
    if not required and not spec.names_targets:
        yield []
        return
    url, targets = resolve(spec)
    stores: list[FieldStore] = []
    try:
        for target in targets:
            stores.append(open_store(url, target))
        yield stores
    finally:
        for store in stores:
            store.close()


@contextmanager
def checked_stores(
    spec: TargetSpec, *, writable: bool, required: bool = True, scans: bool = True
) -> Iterator[list[FieldStore]]:
    """``opened_stores``, each store checked before use: readable, and writable if asked
    (``scans``: see ``FieldStore.check``).

    Raises:
        StoreError: a target cannot be read (or written).
    """
    with opened_stores(spec, required=required) as stores:
        for store in stores:
            store.check(writable=writable, scans=scans)
        yield stores
