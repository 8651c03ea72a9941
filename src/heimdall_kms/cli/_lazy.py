"""A click group that imports a command's module only when that command runs.

``heimdall-kms --help`` and ``--version`` then cost a few imports instead of every command's
(the KMS clients, prometheus_client, rich): the command list is drawn from each command's
summary, kept next to its module name. ``tests/unit/test_cli_docs.py`` checks every summary
against the command's own help, so the two cannot drift apart.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, NamedTuple

import click

__all__ = ["LazyCommand", "LazyGroup"]


class LazyCommand(NamedTuple):
    module: str
    attribute: str
    summary: str  # the first paragraph of the command's help


class LazyGroup(click.Group):
    def __init__(self, *args: Any, lazy: Mapping[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            entry = self.lazy[cmd_name]
            command = getattr(importlib.import_module(entry.module), entry.attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{entry.module}.{entry.attribute} is not a click command")
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # As click.Group.format_commands, from the summaries: no command module is imported.
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, self.short_help_of(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def short_help_of(self, name: str, limit: int) -> str:
        # A stand-in command carrying the summary shortens it exactly as the real one would.
        command = self.commands.get(name) or click.Command(name, help=self.lazy[name].summary)
        return command.get_short_help_str(limit)
