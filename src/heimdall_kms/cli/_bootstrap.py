"""What the bootstrap commands share: the settings they need, and how they print steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TypeVar

import click

from heimdall_kms.errors import ConfigurationError

__all__ = ["change_label", "print_counts", "print_dry_run_header", "required"]

_CHANGES = ("created", "updated", "unchanged")
_S = TypeVar("_S")


def required(provider_settings: _S | None, key_id: str | None, message: str) -> tuple[_S, str]:
    """The provider's settings and the configured key, both there.

    Raises:
        ConfigurationError: ``message``, when either is missing.
    """
    if provider_settings is None or key_id is None:
        raise ConfigurationError(message)
    return provider_settings, key_id


def print_dry_run_header(*, dry_run: bool) -> None:
    if dry_run:
        click.echo("dry run: nothing was written; this is what bootstrap would do")


def change_label(change: str, *, dry_run: bool) -> str:
    """The change as made (``created``) or, on a dry run, as it would be (``would create``)."""
    if not dry_run or change == "unchanged":
        return change
    return f"would {change[:-1]}"


def print_counts(changes: Iterable[str], *, dry_run: bool) -> None:
    """How many steps made each change, e.g. ``1 created, 0 updated, 4 unchanged``."""
    counts = Counter(changes)
    suffix = " (dry run)" if dry_run else ""
    click.echo(", ".join(f"{counts[change]} {change}" for change in _CHANGES) + suffix)
