"""The command line documents itself: every option has help text, and docs/cli.md names every
option of every command (in its own section, or the shared target and metrics sections)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from heimdall_kms.cli import cli

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def command(path: tuple[str, ...]) -> click.Command:
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return found


def long_options(path: tuple[str, ...]) -> list[str]:
    return [
        opt
        for param in command(path).params
        if isinstance(param, click.Option) and not param.hidden
        for opt in param.opts
        if opt.startswith("--") and opt != "--help"
    ]


def sections() -> dict[str, str]:
    """Heading line -> its text, for every `## ` section of docs/cli.md."""
    parts = re.split(r"^(## .*)$", DOC, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def documented(path: tuple[str, ...]) -> str:
    """The text of docs/cli.md that documents the command: its own sections and the shared
    option sections that list it."""
    text = ""
    name = path[0]
    for heading, body in sections().items():
        own = re.search(rf"heimdall-kms [^`]*\b{re.escape(name)}\b", heading)
        shared = re.match(r"## (Target|Metrics) options \(([^)]*)\)", heading)
        if own or (shared and name in re.split(r",\s*", shared.group(2))):
            text += heading + body
    return text


ALL = [pytest.param(path, id=" ".join(path)) for path in commands()]


class TestHelp:
    @pytest.mark.parametrize("path", ALL)
    def test_every_option_has_help_text(self, path: tuple[str, ...]) -> None:
        missing = [
            param.opts[0]
            for param in command(path).params
            if isinstance(param, click.Option) and not param.hidden and not param.help
        ]
        assert not missing, f"{' '.join(path)}: no help for {missing}"

    @pytest.mark.parametrize("path", ALL)
    def test_every_command_has_help_text(self, path: tuple[str, ...]) -> None:
        assert command(path).help


class TestDocsCli:
    @pytest.mark.parametrize("path", ALL)
    def test_every_option_is_documented(self, path: tuple[str, ...]) -> None:
        text = documented(path)
        assert text, f"docs/cli.md has no section for {' '.join(path)}"
        missing = [opt for opt in long_options(path) if not re.search(rf"{opt}(?![\w-])", text)]
        assert not missing, f"docs/cli.md does not document {' '.join(path)} {missing}"

    def test_the_exit_code_table_lists_every_code(self) -> None:
        from heimdall_kms import errors

        codes = {
            cls.exit_code
            for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.HeimdallKMSError)
        }
        table = {int(code) for code in re.findall(r"^\| (\d+) \|", DOC, flags=re.M)}
        assert codes <= table


class TestShellCompletion:
    """docs/cli.md's completion set-up works with the installed command."""

    def test_the_documented_variable_completes_commands(self) -> None:
        assert "_HEIMDALL_KMS_COMPLETE=bash_source heimdall-kms" in DOC
        env = {
            **os.environ,
            "_HEIMDALL_KMS_COMPLETE": "bash_complete",
            "COMP_WORDS": "heimdall-kms rot",
            "COMP_CWORD": "1",
        }
        result = subprocess.run(
            [str(Path(sys.executable).with_name("heimdall-kms"))],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.split() == ["plain,rotate"]
