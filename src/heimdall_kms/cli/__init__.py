"""The ``heimdall-kms`` command line (SPEC §3).

:func:`main` is the one place that turns errors into output: a :class:`HeimdallKMSError`
becomes one line on stderr and its ``exit_code``; a usage error one line and exit 2; anything
unexpected one line naming only the exception's type (its message could hold data) and exit
70. No traceback reaches the user.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

import click

from heimdall_kms import __version__
from heimdall_kms.cli.audit_cmds import audit
from heimdall_kms.cli.compliance_cmd import compliance
from heimdall_kms.cli.crypto_cmds import decrypt, encrypt
from heimdall_kms.cli.data_cmds import migrate, reencrypt, status
from heimdall_kms.cli.demo_cmd import demo
from heimdall_kms.cli.doctor_cmd import doctor
from heimdall_kms.cli.drill_cmds import drill
from heimdall_kms.cli.journal_cmds import journal
from heimdall_kms.cli.key_cmds import keys, retire_command, rotate_command
from heimdall_kms.cli.local_cmds import local
from heimdall_kms.cli.policy_cmds import check, protect, reveal
from heimdall_kms.cli.serve_cmd import serve
from heimdall_kms.cli.vault_cmds import vault
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.telemetry import tracing
from heimdall_kms.telemetry.logs import configure_logging
from heimdall_kms.telemetry.settings import LogFormat, TelemetrySettings

__all__ = ["cli", "main"]

_PROG = "heimdall-kms"


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name=_PROG)
def cli() -> None:
    """Envelope encryption of PII through a KMS (Vault Transit, AWS, GCP, Azure, local).

    Settings come from HMD_* environment variables (see docs/configuration.md). Audit
    events go to HMD_AUDIT_LOG (default stderr); command output goes to stdout.
    """


cli.add_command(encrypt)
cli.add_command(decrypt)
cli.add_command(protect)
cli.add_command(reveal)
cli.add_command(check)
cli.add_command(migrate)
cli.add_command(status)
cli.add_command(reencrypt)
cli.add_command(rotate_command)
cli.add_command(retire_command)
cli.add_command(keys)
cli.add_command(journal)
cli.add_command(audit)
cli.add_command(serve)
cli.add_command(demo)
cli.add_command(vault)
cli.add_command(local)
cli.add_command(doctor)
cli.add_command(drill)
cli.add_command(compliance)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns (and, as a console script, exits with) the exit code."""
    try:
        telemetry = TelemetrySettings.from_env(os.environ)
    except ConfigurationError as exc:
        configure_logging(LogFormat.TEXT, logging.WARNING)
        _fail(str(exc))
        code = exc.exit_code
    else:
        configure_logging(telemetry.log_format, telemetry.level(logging.WARNING))
        code = _run(argv, os.environ)
    if argv is None:
        sys.exit(code)
    return code


def _run(argv: Sequence[str] | None, environ: Mapping[str, str]) -> int:
    try:
        tracing.configure(environ)
        result = cli.main(
            args=list(argv) if argv is not None else None, prog_name=_PROG, standalone_mode=False
        )
    except HeimdallKMSError as exc:
        _fail(str(exc))
        return exc.exit_code
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
        return 2
    except click.ClickException as exc:
        hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
        _fail(exc.format_message() + hint)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _fail("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against a traceback.
        _fail(f"internal error ({type(exc).__name__}); please report it")
        return 70
    return result if isinstance(result, int) else 0


def _fail(message: str) -> None:
    # One line, whatever the message holds.
    click.echo(f"{_PROG}: error: {' '.join(message.split())}", err=True)
