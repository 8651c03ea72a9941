"""``heimdall-kms migrate`` and ``heimdall-kms status``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import click

from heimdall_kms.audit import open_sink
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._estimate import estimate_migration
from heimdall_kms.cli._job_metrics import JobTelemetry, job_telemetry, metrics_options
from heimdall_kms.cli._targets import TargetSpec, checked_stores, target_options
from heimdall_kms.cli._waiting import propagation
from heimdall_kms.cli.progress import ProgressView
from heimdall_kms.composition import job_provider, job_services, load_provider
from heimdall_kms.config import Settings, audit_destination
from heimdall_kms.errors import HeimdallKMSError, IncompleteError
from heimdall_kms.jobs.census import Census, count_unreadable, take_census
from heimdall_kms.jobs.journal import RestoreCounts, RollbackResult, rollback
from heimdall_kms.jobs.migrate import MigrationOptions, check_settings, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.providers import KeyInfo
from heimdall_kms.telemetry.export import MetricsExport

__all__ = ["migrate", "reencrypt", "status"]

_log = logging.getLogger("heimdall_kms.jobs")

# Options shared by the batch jobs (migrate, reencrypt).
_BATCH_SIZE = click.option(
    "--batch-size",
    default=250,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Rows per batch: one transaction and one batched KMS call each.",
)
_RATE_LIMIT = click.option(
    "--rate-limit",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    metavar="RPS",
    help="A ceiling: at most this many KMS requests per second (0: none). Either way the job "
    "slows down when the KMS throttles it and finds the rate the KMS allows.",
)
_RUN_ID = click.option("--run-id", help="Name the run (default: generated); the journal keeps it.")


@click.command()
@target_options
@_BATCH_SIZE
@click.option(
    "--dry-run",
    is_flag=True,
    help=(
        "Decrypt with the env key, count, check the new values fit (on a varchar column: may "
        "wrap one throwaway data key to measure the KMS's length); write nothing."
    ),
)
@click.option(
    "--estimate",
    is_flag=True,
    help="Project the run's duration against the 24 h SLA (census counts, and a timed real "
    "migration of seeded values through the KMS in a throwaway SQLite database); write nothing "
    "to the targets, journal or audit log.",
)
@_RATE_LIMIT
@_RUN_ID
@actor_option("runs it")
@click.option(
    "--rollback",
    "rollback_run",
    metavar="RUN_ID",
    help="Instead of migrating, restore the values a run replaced (from its journal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@metrics_options("migrate")
def migrate(
    *,
    spec: TargetSpec,
    export: MetricsExport,
    batch_size: int,
    dry_run: bool,
    estimate: bool,
    rate_limit: float,
    run_id: str | None,
    actor: str,
    rollback_run: str | None,
    as_json: bool,
) -> None:
    """Re-encrypt every legacy env-key envelope of a column as kms_v1.

    Needs HMD_ENCRYPTION_MODE=hybrid (reads the env key, writes through the KMS). Values that
    are not envelopes (NULL, sha256: hashes, [REDACTED], plain text) are left alone. A value
    that cannot be decrypted is reported by id and never overwritten. Writes are
    compare-and-swap, one transaction per batch; replaced values are journaled under the run
    id for --rollback. Safe to rerun: already migrated values are skipped.
    """
    if rollback_run is not None:
        if estimate:
            raise click.UsageError("give --estimate or --rollback, not both")
        _rollback(spec, rollback_run, actor, as_json)
        return
    if estimate:
        estimate_migration(spec, batch_size, rate_limit, as_json)
        return
    settings = Settings.from_env(os.environ)
    check_settings(settings)
    with (
        job_telemetry("migrate", export) as telemetry,
        checked_stores(spec, writable=not dry_run) as stores,
    ):
        services = _services(settings, rate_limit, telemetry, actor)
        options = MigrationOptions(batch_size, dry_run, run_id, actor)
        with services.crypto, ProgressView("migrate") as view:
            report = run_migration(services, stores, options, view)
        _finish(report, as_json)


@click.command()
@target_options
@click.option(
    "--mode",
    type=click.Choice(["rewrap", "full", "legacy"]),
    default="rewrap",
    show_default=True,
    help="rewrap: re-wrap only the DEK (ciphertext untouched, no plaintext here); "
    "full: decrypt and re-encrypt with fresh DEKs (after a compromise); "
    "legacy: back to the env-key format the old engine reads (hybrid mode, env key set).",
)
@click.option(
    "--all-versions",
    is_flag=True,
    help="With --mode full: re-encrypt every value, not only those below the latest key version.",
)
@_BATCH_SIZE
@click.option(
    "--dry-run",
    is_flag=True,
    help=(
        "Count what would change, check the new values fit (on a varchar column: may wrap one "
        "throwaway data key to measure the KMS's length); write nothing."
    ),
)
@_RATE_LIMIT
@_RUN_ID
@actor_option("runs it")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@metrics_options("reencrypt")
def reencrypt(
    *,
    spec: TargetSpec,
    export: MetricsExport,
    mode: str,
    all_versions: bool,
    batch_size: int,
    dry_run: bool,
    rate_limit: float,
    run_id: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Bring every kms_v1 value to the latest master key version.

    After a routine rotation use rewrap: each DEK is re-wrapped under the latest version, in
    batches, and the ciphertext stays byte-identical (Vault and AWS KMS re-wrap inside the
    KMS; GCP, Azure and local unwrap and wrap the DEK again in this process). After a key
    compromise use full: whoever could unwrap the old DEKs knows them, so every value gets a
    fresh DEK. To go back to the old
    engine use legacy (hybrid mode, env key set): every kms_v1 value is re-encrypted in the
    env-key format. Same batching, compare-and-swap, journal (--rollback with migrate),
    progress and resumability as migrate.
    """
    settings = Settings.from_env(os.environ)
    with (
        job_telemetry("reencrypt", export) as telemetry,
        checked_stores(spec, writable=not dry_run) as stores,
    ):
        services = _services(settings, rate_limit, telemetry, actor)
        options = ReencryptOptions(
            batch_size,
            dry_run,
            run_id,
            actor,
            mode=ReencryptMode(mode),
            all_versions=all_versions,
            propagation=propagation(settings),
        )
        with services.crypto, ProgressView(f"reencrypt {mode}") as view:
            report = run_reencrypt(services, stores, options, view)
        _finish(report, as_json)


def _services(
    settings: Settings, rate_limit: float, telemetry: JobTelemetry, actor: str
) -> JobServices:
    """The paced provider, the audit log (failures counted) and the command's own metrics."""
    kms = job_provider(settings, rate_limit)
    try:
        telemetry.watch(kms, settings)
        audit = telemetry.audit(open_sink(settings.audit_log, settings, metrics=telemetry.metrics))
    except BaseException:
        kms.close()
        raise
    return job_services(settings, kms, audit, telemetry.metrics, actor=actor)


def _finish(report: JobReport, as_json: bool) -> None:
    totals = report.totals
    _log.info(
        "%s %s: %s",
        report.job,
        report.run_id,
        report.state.value,
        extra={
            "event": "job.report",
            # The counts of the run (ids and messages stay out of the log line).
            "fields": {
                "request_id": report.run_id,  # the run id names the audit events of the run
                "job": report.job,
                "state": report.state.value,
                "dry_run": report.dry_run,
                "total": totals.total,
                "completed": totals.completed,
                "skipped": totals.skipped,
                "conflicts": totals.conflicts,
                "failed": report.failure_count,
            },
        },
    )
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        _print_report(report)
    if report.stop_error is not None:
        raise report.stop_error
    if report.failure_count:
        raise IncompleteError(
            f"{report.job}: {report.failure_count} values failed and were left as they were; "
            "their ids are in the summary"
        )


_FAILURES_SHOWN = 50  # rows listed by name in the human summary; --json lists more


def _print_report(report: JobReport) -> None:
    verb = "would change" if report.dry_run else "changed"
    click.echo(f"{report.job} {report.run_id}: {report.state.value}")
    for target in report.targets:
        click.echo(
            f"  {target.target}: {verb} {target.completed:,}, skipped {target.skipped:,},"
            f" conflicts {target.conflicts:,}, failed {target.failed:,}"
        )
    click.echo(_kms_calls_line(report))
    for failure in report.failures[:_FAILURES_SHOWN]:
        click.echo(
            f"  failed {failure.target} id={failure.id}: {failure.error_type}: {failure.message}"
        )
    shown = min(len(report.failures), _FAILURES_SHOWN)
    if report.failure_count > shown:
        more = report.failure_count - shown
        click.echo(f"  … and {more:,} more failed rows (--json lists {len(report.failures):,})")
    if report.stopped_by:
        click.echo(f"  stopped: {report.stopped_by} — rerun to finish")


def _kms_calls_line(report: JobReport) -> str:
    per_value = report.kms_calls_per_value
    return (
        f"  KMS calls: {report.kms_calls:,}"
        + (f" ({per_value} per value)" if per_value is not None else "")
        + f"; {report.duration_seconds}s"
    )


def _describe_if_configured() -> Callable[[], KeyInfo] | None:
    """How the rollback asks the KMS about the key, when a KMS is configured."""
    if not os.environ.get("HMD_KMS_PROVIDER", "").strip():
        return None

    def describe() -> KeyInfo:
        kms = load_provider(Settings.from_env(os.environ))
        try:
            return kms.describe()
        finally:
            kms.close()

    return describe


def _rollback(spec: TargetSpec, run_id: str, actor: str, as_json: bool) -> None:
    sink = open_sink(audit_destination(os.environ))
    # A rollback reads the journal, not the rows in id order.
    with checked_stores(spec, writable=True, scans=False) as stores:
        result = rollback(stores, run_id, sink, actor, describe=_describe_if_configured())
    sink.close()
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        _print_rollback(result, run_id)
    _check_restored(result.totals)


def _print_rollback(result: RollbackResult, run_id: str) -> None:
    for target, counts in result.targets.items():
        click.echo(
            f"rollback {run_id} {target}: restored {counts.restored:,} of "
            f"{counts.journaled:,}; changed since (left alone) {counts.conflicts:,}"
            f"; not an envelope (never written back) {counts.not_envelope:,}"
        )


def _check_restored(totals: RestoreCounts) -> None:
    """Raises IncompleteError when the rollback left journaled values as they were."""
    if totals.not_envelope:
        raise IncompleteError(
            f"{totals.not_envelope} journal rows do not hold an envelope and were not restored"
        )
    if totals.conflicts:
        raise IncompleteError(
            f"{totals.conflicts} values changed since the run and were not restored"
        )


@click.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print the census as one JSON object.")
@click.option(
    "--fail-if-legacy",
    is_flag=True,
    help="Exit 3 if any legacy, unparseable or plaintext value remains, or an envelope inside "
    "a document the census was not told to look into (a CI/cut-over gate).",
)
@click.option(
    "--allow-plaintext",
    is_flag=True,
    help="With --fail-if-legacy: the column legitimately holds some plaintext values.",
)
@metrics_options("status")
def status(
    *,
    spec: TargetSpec,
    export: MetricsExport,
    as_json: bool,
    fail_if_legacy: bool,
    allow_plaintext: bool,
) -> None:
    """Count the stored values by encryption_version, key version and legacy key id.

    Reads every row and needs no key. Where a KMS is configured (HMD_KMS_PROVIDER), one
    describe of the key also counts the values under a version it can no longer decrypt
    (retired, disabled, destroyed) and those sealed by another key. Before switching to
    HMD_ENCRYPTION_MODE=kms, this must show zero legacy, unparseable and nested values, none
    needing a retired version or another key, and no plaintext unless the column may hold
    some. With --fail-if-legacy, a KMS that cannot be
    asked stops the gate.
    """
    if allow_plaintext and not fail_if_legacy:
        raise click.UsageError("--allow-plaintext goes with --fail-if-legacy")
    with job_telemetry("status", export) as telemetry:
        with checked_stores(spec, writable=False) as stores:
            censuses = [take_census(store) for store in stores]
        _check_readable(censuses, strict=fail_if_legacy)
        for census in censuses:
            telemetry.census(census)
        _report_census(censuses, as_json, fail_if_legacy, allow_plaintext)


def _check_readable(censuses: list[Census], *, strict: bool) -> None:
    """Count, per census, the values under a key version the configured KMS no longer has.

    Without a KMS configured nothing is counted (and the report says so). A KMS that fails
    to answer stops a gate (``strict``); a plain census reports it on stderr and goes on.
    """
    if not os.environ.get("HMD_KMS_PROVIDER"):
        return
    try:
        # Opening the provider may fail too (settings, login): the same as a describe that does.
        with contextlib.closing(load_provider(Settings.from_env(os.environ))) as kms:
            key, identifier = kms.describe(), kms.key_identifier
    except HeimdallKMSError as exc:
        if strict:
            raise
        click.echo(f"key versions not checked against the KMS: {exc}", err=True)
        return
    for census in censuses:
        count_unreadable(census, key, identifier)


def _report_census(
    censuses: list[Census], as_json: bool, fail_if_legacy: bool, allow_plaintext: bool
) -> None:
    overall = Census.combined("all targets", censuses)
    if as_json:
        click.echo(json.dumps({**overall.to_dict(), "targets": [c.to_dict() for c in censuses]}))
    else:
        for census in censuses:
            _print_census(census.to_dict())
    if fail_if_legacy:
        _gate(overall.remaining(allow_plaintext=allow_plaintext))


def _gate(remaining: dict[str, int]) -> None:
    """Raises IncompleteError when anything remains that blocks the cut-over."""
    if not remaining:
        return
    counts = ", ".join(f"{n:,} {kind.replace('_', ' ')}" for kind, n in remaining.items())
    hint = next((h for kind, h in _GATE_HINTS if kind in remaining), "")
    raise IncompleteError(f"not ready for cut-over: {counts} remain{hint}")


# What to do about what the gate found, the first that applies.
_GATE_HINTS = (
    (
        "needing_a_retired_key_version",
        " (no reader can decrypt them: docs/rotation.md, retire, says how to recover)",
    ),
    (
        "sealed_by_another_key",
        " (this deployment's key cannot decrypt them: HMD_KMS_PROVIDER and HMD_KMS_KEY_ID name "
        "another key than the one that sealed them)",
    ),
    ("nested_envelope", " (envelopes inside JSON documents: name where with --json-path)"),
    ("plaintext", " (--allow-plaintext if the column may hold plaintext)"),
)


def _print_census(census: dict[str, Any]) -> None:
    click.echo(f"{census['target']}: {census['total']:,} values")
    versions = census["encryption_version"]
    click.echo(
        f"  kms_v1 {versions['kms_v1']:,}   legacy {versions['legacy']:,}   "
        f"unparseable {census['unparseable']:,}   not envelopes {census['skipped']:,}"
    )
    for key in census["keys"]:
        click.echo(
            f"  kms_v1 {key['provider']} {key['key_identifier']!r} "
            f"v{key['key_version']}: {key['count']:,}"
        )
    for key_id, count in census["legacy_key_id"].items():
        click.echo(f"  legacy key_id {key_id!r}: {count:,}")
    _print_left_alone(census)


def _print_left_alone(census: dict[str, Any]) -> None:
    """What the census did not count as envelopes: other values, unparseable, unreadable."""
    others = ", ".join(f"{kind} {n:,}" for kind, n in census["not_envelope"].items() if n)
    if others:
        click.echo(f"  left alone: {others}")
    if census["unparseable_ids"]:
        click.echo(f"  unparseable ids: {', '.join(census['unparseable_ids'])}")
    _print_blocking(census)


def _print_blocking(census: dict[str, Any]) -> None:
    """The envelopes no reader can open and those where the census was not told to look."""
    if census["needing_retired_key_version"] is None and census["encryption_version"]["kms_v1"]:
        # As the JSON's null says: not "none", unknown.
        click.echo(
            "  kms_v1 values not checked against a KMS (no HMD_KMS_PROVIDER): whether this "
            "deployment's key can still decrypt them is unknown"
        )
    if census["needing_retired_key_version"]:
        click.echo(
            f"  needing a key version the KMS no longer decrypts with (unreadable): "
            f"{census['needing_retired_key_version']:,}"
        )
    if census["sealed_by_another_key"]:
        click.echo(
            f"  sealed by another key than this deployment's (unreadable here): "
            f"{census['sealed_by_another_key']:,}"
        )
    if census["nested_envelope"]:
        where = "outside the JSON path" if census["json_path"] else "inside JSON documents"
        click.echo(
            f"  envelopes {where} (not counted above; name the path with --json-path): "
            f"{census['nested_envelope']:,}, ids {', '.join(census['nested_envelope_ids'])}"
        )
