"""``heimdall-kms doctor``: one line per check of the whole configuration (docs/doctor.md)."""

from __future__ import annotations

import json
import os

import click

from heimdall_kms.doctor import DoctorReport, Status, run_doctor
from heimdall_kms.errors import IncompleteError

__all__ = ["doctor"]

_WIDTH = 13


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option(
    "--no-canary",
    is_flag=True,
    help="Skip the encrypt/decrypt round trip (for identities that may not encrypt, such as "
    "the worker, admin and audit roles).",
)
def doctor(as_json: bool, no_canary: bool) -> None:
    """Check the whole configuration, one line per check: settings, mode, audit log,
    database, the KMS (for Vault: TLS, seal state, token), the key, and a canary round trip.

    ✓ passed, ✗ failed (with the fix), ! warning, - skipped. Exits 0 when nothing failed,
    3 when a check failed. The canary is audited (actor doctor, reason canary).
    """
    report = run_doctor(os.environ, canary=not no_canary)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print(report)
    if report.failed:
        names = ", ".join(check.name for check in report.failed)
        raise IncompleteError(
            f"doctor: {len(report.failed)} of {len(report.checks)} checks failed ({names})"
        )


def _print(report: DoctorReport) -> None:
    for check in report.checks:
        click.echo(f"{check.status.symbol} {check.name:<{_WIDTH}} {check.detail}")
        if check.fix and check.status in (Status.FAIL, Status.WARN):
            label = "fix" if check.status is Status.FAIL else "hint"
            click.echo(f"  {'':<{_WIDTH}} {label}: {check.fix}")
    counts = report.to_dict()["counts"]
    click.echo(
        f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed, "
        f"{counts['skip']} skipped"
    )
