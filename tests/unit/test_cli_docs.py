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

from heimdall_kms.cli import COMMANDS, cli

DOC = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")


def commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name)


def command(path: tuple[str, ...]) -> click.Command:
    found: click.Command = cli
    for name in path:
        assert isinstance(found, click.Group)
        loaded = found.get_command(click.Context(found), name)
        assert loaded is not None, name
        found = loaded
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


class TestLazyCommands:
    """`heimdall-kms --help` lists the commands from their summaries, importing none of them."""

    @pytest.mark.parametrize("name", sorted(COMMANDS))
    def test_the_summary_is_the_commands_own(self, name: str) -> None:
        loaded = command((name,))
        assert loaded.name == name
        for limit in (30, 45, 60, 94, 400):
            stand_in = click.Command(name, help=COMMANDS[name].summary)
            assert stand_in.get_short_help_str(limit) == loaded.get_short_help_str(limit)

    def test_every_command_is_in_the_table(self) -> None:
        assert len(ALL) >= len(COMMANDS) and set(cli.list_commands(click.Context(cli))) == set(
            COMMANDS
        )

    @pytest.mark.parametrize("argv", [["--help"], ["--version"]])
    def test_help_and_version_import_no_command_rich_or_prometheus(self, argv: list[str]) -> None:
        probe = (
            "import sys\n"
            "from heimdall_kms.cli import main\n"
            f"code = main({argv!r})\n"
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('rich', 'prometheus_client')"
            " or m.endswith(('_cmds', '_cmd'))]\n"
            "print(code, sorted(loaded), file=sys.stderr)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.stderr.strip().splitlines()[-1] == "0 []", result.stderr
        assert result.stdout


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
