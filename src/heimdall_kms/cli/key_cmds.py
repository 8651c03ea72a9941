"""``heimdall-kms rotate``, ``retire`` and ``keys``: the master key's lifecycle."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import click

from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._job_metrics import JobTelemetry, job_telemetry, metrics_options
from heimdall_kms.cli._targets import TargetSpec, checked_stores, opened_stores, target_options
from heimdall_kms.cli._waiting import propagation
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import RefusedError
from heimdall_kms.jobs.key_report import key_report
from heimdall_kms.jobs.propagation import Effect
from heimdall_kms.jobs.retire import RetireBlock, RetireRefusedError, RetireResult, retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.jobs.rotation_lock import rotation_lock
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.telemetry.export import MetricsExport

__all__ = ["keys", "retire_command", "rotate_command"]

# What the options of this command do about each refusal (the job's message names none).
_RETIRE_HINTS: dict[RetireBlock, Callable[[RetireRefusedError], str]] = {
    RetireBlock.NO_TARGETS: lambda _: " (--table/--column or --targets; --force)",
    RetireBlock.STRANDED: lambda exc: (
        " (`heimdall-kms reencrypt`"
        + ("; name the path inside the documents with --json-path" if exc.unseen else "")
        + ")"
    ),
}


def _kms(settings: Settings) -> KeyManagementService:
    return load_provider(settings)


@contextmanager
def _audited_kms(
    settings: Settings, telemetry: JobTelemetry
) -> Iterator[tuple[KeyManagementService, AuditSink]]:
    """The provider, watched by the command's metrics, and the audit log; both closed after."""
    kms = _kms(settings)
    telemetry.watch(kms, settings)
    sink = telemetry.audit(open_sink(settings.audit_log, settings, metrics=telemetry.metrics))
    try:
        yield kms, sink
    finally:
        kms.close()
        sink.close()


@click.command("rotate")
@click.option(
    "--if-due",
    is_flag=True,
    help="Only if the latest version is HMD_KEY_ROTATION_DAYS (default 90) old, "
    "judged by the KMS's own clock and creation time, decided under a lock (at most one "
    "rotation per period). For cron/CronJob/systemd timers.",
)
@actor_option("rotates")
@click.option("--reason", help="Why, e.g. a change ticket or incident id (audited).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@metrics_options("rotate")
def rotate_command(
    *, if_due: bool, actor: str, reason: str | None, as_json: bool, export: MetricsExport
) -> None:
    """Create a new master key version; new values use it, old ones still decrypt.

    Run `heimdall-kms reencrypt --mode rewrap` afterwards to move stored values to the new
    version, then `heimdall-kms retire` to stop the old one decrypting.
    """
    settings = Settings.from_env(os.environ)
    cadence = timedelta(days=settings.key_rotation_days)
    with (
        job_telemetry("rotate", export) as telemetry,
        _audited_kms(settings, telemetry) as (kms, sink),
    ):
        result = rotate(
            kms,
            sink,
            actor=actor,
            if_due=if_due,
            cadence=cadence,
            reason=reason,
            propagation=propagation(settings),
            lock=rotation_lock(settings, kms),
        )
        telemetry.publish_key(kms, cadence)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    elif result.rotated:
        click.echo(
            f"rotated {kms.key_identifier}: v{result.old_version} -> v{result.new_version}"
            + (f"; next due {result.due_at:%Y-%m-%d}" if result.due_at else "")
        )
    else:
        click.echo(
            f"not due: {kms.key_identifier} v{result.old_version}"
            + (f" is due on {result.due_at:%Y-%m-%d}" if result.due_at else "")
        )


@click.command("retire")
@click.option(
    "--below-version",
    type=click.IntRange(min=1),
    required=True,
    metavar="N",
    help="Versions below N stop decrypting (the KMS's minimum decryption version).",
)
@target_options
@click.option(
    "--force",
    is_flag=True,
    help="Retire even though stored values still need the versions (they become "
    "unreadable). Loud, and audited.",
)
@actor_option("retires")
@click.option("--reason", help="Why (audited).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@metrics_options("retire")
def retire_command(
    *,
    export: MetricsExport,
    below_version: int,
    spec: TargetSpec,
    force: bool,
    actor: str,
    reason: str | None,
    as_json: bool,
) -> None:
    """Make key versions below N unusable for decryption, in the KMS.

    Refuses (exit 4) while the census of the named targets still counts values under a
    version below N: run `heimdall-kms reencrypt` first. With no targets named it refuses
    unless --force.
    """
    settings = Settings.from_env(os.environ)
    with (
        job_telemetry("retire", export) as telemetry,
        _audited_kms(settings, telemetry) as (kms, sink),
        checked_stores(spec, writable=False, required=False) as stores,
    ):
        try:
            result = retire(
                kms,
                stores,
                sink,
                below_version=below_version,
                actor=actor,
                force=force,
                reason=reason,
                propagation=propagation(settings),
            )
        except RetireRefusedError as exc:
            raise RefusedError(f"{exc}{_RETIRE_HINTS[exc.block](exc)}") from None
    _warn(result, below_version, force=force)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        minimum = result.info.min_decryption_version if result.info else below_version
        click.echo(
            f"retired {kms.key_identifier} versions below {below_version} "
            f"(minimum decryption version now {minimum})"
        )


def _warn(result: RetireResult, below_version: int, *, force: bool) -> None:
    """On stderr: what the retirement left unreadable, or did not confirm."""
    if force:
        click.echo(
            f"heimdall-kms: WARNING: --force: versions below {below_version} retired; "
            f"{result.stranded_total:,} stored values that needed them can no longer be "
            "decrypted (audited as a forced key.retire)",
            err=True,
        )
    if result.journal_total:
        _warn_journal(result, below_version)
    if result.effect is Effect.UNCONFIRMED:
        click.echo(
            f"heimdall-kms: WARNING: the refusal of versions below {below_version} was not "
            "confirmed (no canary could be wrapped under them: the provider cannot wrap under "
            "a named version, or they were already disabled); the KMS may take a while to "
            "apply it (docs/rotation.md)",
            err=True,
        )


def _warn_journal(result: RetireResult, below_version: int) -> None:
    runs = sorted({run for per_run in result.journal.values() for run in per_run})
    click.echo(
        f"heimdall-kms: WARNING: the journal still holds {result.journal_total:,} replaced "
        f"values under versions below {below_version} (runs {', '.join(runs)}); they no "
        "longer decrypt, so rolling those runs back would restore unreadable values. "
        "Purge them: heimdall-kms journal purge --run RUN_ID --older-than-days 0",
        err=True,
    )


@click.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@metrics_options("keys")
def keys(*, spec: TargetSpec, as_json: bool, export: MetricsExport) -> None:
    """The master key's versions: creation time, age, next due date, minimum decryption
    version, and with targets named, how many stored values each version still protects."""
    settings = Settings.from_env(os.environ)
    cadence = timedelta(days=settings.key_rotation_days)
    with job_telemetry("keys", export) as telemetry:
        kms = _kms(settings)
        telemetry.watch(kms, settings)
        try:
            with opened_stores(spec, required=False) as stores:
                report = key_report(kms, cadence=cadence, stores=stores)
            telemetry.publish_key(kms, cadence)
        finally:
            kms.close()
    if as_json:
        click.echo(json.dumps(report))
        return
    _print_keys(report)


def _print_keys(report: dict[str, Any]) -> None:
    click.echo(
        f"{report['provider']} key {report['key_identifier']!r}: latest v"
        f"{report['latest_version']}, minimum decryption version "
        f"{report['min_decryption_version']}, rotation every {report['rotation_days']} days"
    )
    click.echo(
        f"  next rotation due: {report['next_due'] or 'unknown'}"
        + ("  (DUE NOW)" if report["due"] else "")
    )
    for version in report["versions"]:
        values = f"  {version['values']:,} values" if "values" in version else ""
        click.echo(
            f"  v{version['version']}  created {version['created_at']}  "
            f"age {version['age_days']} days{values}"
        )
