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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from heimdall_kms import __version__
from heimdall_kms.cli._lazy import LazyCommand, LazyGroup
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.telemetry import tracing
from heimdall_kms.telemetry.logs import configure_logging
from heimdall_kms.telemetry.settings import LogFormat, TelemetrySettings

__all__ = ["COMMANDS", "cli", "main"]

_PROG = "heimdall-kms"


_C = LazyCommand
# Each command's module is imported when the command runs (or its own --help is asked for);
# the summary is the first paragraph of its help (tests/unit/test_cli_docs.py checks that).
COMMANDS: dict[str, LazyCommand] = {
    "audit": _C(
        "heimdall_kms.cli.audit_cmds", "audit", "Check the audit log's hash chain, and query it."
    ),
    "aws": _C("heimdall_kms.cli.aws_cmds", "aws", "AWS KMS setup for heimdall-kms."),
    "azure": _C(
        "heimdall_kms.cli.cloud_cmds",
        "azure",
        "Azure Key Vault / Managed HSM setup for heimdall-kms.",
    ),
    "check": _C(
        "heimdall_kms.cli.policy_cmds",
        "check",
        "Check NDJSON records (a file, or stdin) for plaintext where the policy forbids it.",
    ),
    "compliance": _C(
        "heimdall_kms.cli.compliance_cmd",
        "compliance",
        "Evidence for auditors (see docs/compliance.md).",
    ),
    "decrypt": _C(
        "heimdall_kms.cli.crypto_cmds",
        "decrypt",
        "Decrypt the envelope JSON on stdin; print the plaintext.",
    ),
    "demo": _C(
        "heimdall_kms.cli.demo_cmd",
        "demo",
        "Show the whole migration story on the demo's own key, database and audit log.",
    ),
    "gcp": _C("heimdall_kms.cli.cloud_cmds", "gcp", "GCP Cloud KMS setup for heimdall-kms."),
    "doctor": _C(
        "heimdall_kms.cli.doctor_cmd",
        "doctor",
        "Check the whole configuration, one line per check: settings, mode, audit log, "
        "database, the KMS (for Vault: TLS, seal state, token), the key, and a canary round "
        "trip.",
    ),
    "drill": _C(
        "heimdall_kms.cli.drill_cmds",
        "drill",
        "Run a runbook end to end against a throwaway key, and write a timed report.",
    ),
    "encrypt": _C(
        "heimdall_kms.cli.crypto_cmds",
        "encrypt",
        "Encrypt the UTF-8 text on stdin; print one envelope JSON object.",
    ),
    "journal": _C(
        "heimdall_kms.cli.journal_cmds",
        "journal",
        "The values migrations replaced, kept per run for `migrate --rollback`.",
    ),
    "keys": _C(
        "heimdall_kms.cli.key_cmds",
        "keys",
        "The master key's versions: creation time, age, next due date, minimum decryption "
        "version, and with targets named, how many stored values each version still protects.",
    ),
    "local": _C(
        "heimdall_kms.cli.local_cmds",
        "local",
        "The local development provider's keyring file (NOT FOR PRODUCTION).",
    ),
    "migrate": _C(
        "heimdall_kms.cli.data_cmds",
        "migrate",
        "Re-encrypt every legacy env-key envelope of a column as kms_v1.",
    ),
    "protect": _C(
        "heimdall_kms.cli.policy_cmds",
        "protect",
        "Apply the policy to NDJSON records on stdin; write them to stdout in the same order.",
    ),
    "reencrypt": _C(
        "heimdall_kms.cli.data_cmds",
        "reencrypt",
        "Bring every kms_v1 value to the latest master key version.",
    ),
    "retire": _C(
        "heimdall_kms.cli.key_cmds",
        "retire_command",
        "Make key versions below N unusable for decryption, in the KMS.",
    ),
    "reveal": _C(
        "heimdall_kms.cli.policy_cmds",
        "reveal",
        "Decrypt the encrypted fields of NDJSON records on stdin (hashes stay hashes).",
    ),
    "rotate": _C(
        "heimdall_kms.cli.key_cmds",
        "rotate_command",
        "Create a new master key version; new values use it, old ones still decrypt.",
    ),
    "serve": _C(
        "heimdall_kms.cli.serve_cmd",
        "serve",
        "Run the admin HTTP API: re-encryption jobs, rotation, key report, encrypt/decrypt, "
        "/healthz (a real KMS round trip) and /metrics. See docs/admin-api.md.",
    ),
    "status": _C(
        "heimdall_kms.cli.data_cmds",
        "status",
        "Count the stored values by encryption_version, key version and legacy key id.",
    ),
    "vault": _C(
        "heimdall_kms.cli.vault_cmds", "vault", "Vault (and OpenBao) setup for heimdall-kms."
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name=_PROG)
def cli() -> None:
    """Envelope encryption of PII through a KMS (Vault Transit, AWS, GCP, Azure, local).

    Settings come from HMD_* environment variables (see docs/configuration.md). Audit
    events go to HMD_AUDIT_LOG (default stderr); command output goes to stdout.
    """


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
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - _exit_code reports each once.
        return _exit_code(exc)
    return result if isinstance(result, int) else 0


def _known(exc: HeimdallKMSError) -> int:
    _fail(str(exc))
    return exc.exit_code


def _help(exc: click.exceptions.NoArgsIsHelpError) -> int:
    click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)
    return 2


def _click_error(exc: click.ClickException) -> int:
    hint = " (see --help)" if isinstance(exc, click.UsageError) else ""
    _fail(exc.format_message() + hint)
    return exc.exit_code


def _exited(exc: click.exceptions.Exit) -> int:
    return exc.exit_code


def _interrupted(_exc: BaseException) -> int:
    _fail("interrupted")
    return 130


# In order: the first class an exception is an instance of answers (NoArgsIsHelpError is a
# ClickException too).
_EXIT_CODES: tuple[tuple[type[BaseException], Callable[[Any], int]], ...] = (
    (HeimdallKMSError, _known),
    (click.exceptions.NoArgsIsHelpError, _help),
    (click.ClickException, _click_error),
    (click.exceptions.Exit, _exited),
    (click.Abort, _interrupted),
    (KeyboardInterrupt, _interrupted),
)


def _exit_code(exc: BaseException) -> int:
    """Report ``exc`` on one stderr line (or the help) and answer the exit code."""
    for kind, report in _EXIT_CODES:
        if isinstance(exc, kind):
            return report(exc)
    # The last line of defence against a traceback.
    _fail(f"internal error ({type(exc).__name__}); please report it")
    return 70


def _fail(message: str) -> None:
    # One line, whatever the message holds.
    click.echo(f"{_PROG}: error: {' '.join(message.split())}", err=True)
