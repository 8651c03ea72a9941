"""Shared option parsing and stdin handling for the commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from heimdall_kms.errors import InvalidInputError

__all__ = ["context_from_options", "read_stdin_text"]


def context_from_options(field: str | None, pairs: Sequence[str]) -> dict[str, str]:
    """``--field NAME`` and ``--context KEY=VALUE ...`` as one context mapping.

    Raises:
        click.BadParameter: a pair without ``=``, an empty key, a key given twice, or a
            ``--field`` that contradicts ``--context field=...``.
    """
    context = _context_pairs(pairs)
    if field is not None:
        _check_field(field, context)
        context["field"] = field
    return context


def _context_pairs(pairs: Sequence[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--context")
        if key in context:
            raise click.BadParameter(f"key {key!r} given twice", param_hint="--context")
        context[key] = value
    return context


def _check_field(field: str, context: dict[str, str]) -> None:
    if not field:
        raise click.BadParameter("must not be empty", param_hint="--field")
    if context.get("field", field) != field:
        raise click.BadParameter("contradicts --context field=...", param_hint="--field")


def read_stdin_text(limit: int, what: str) -> str:
    """All of stdin as UTF-8 text, refusing more than ``limit`` bytes before decoding.

    Raises:
        InvalidInputError: too large or not UTF-8.
    """
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise InvalidInputError(f"{what} on stdin is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{what} on stdin is not UTF-8 text") from None
