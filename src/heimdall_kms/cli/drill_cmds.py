"""``heimdall-kms drill compromise|rotation|migration``: runbooks you can run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from heimdall_kms.cli._estimate import count_targets
from heimdall_kms.cli._targets import TargetSpec, target_options
from heimdall_kms.drill.compromise import run_compromise_drill
from heimdall_kms.drill.environment import DrillEnvironment, drill_environment
from heimdall_kms.drill.report import DrillReport
from heimdall_kms.drill.routine import run_migration_drill, run_rotation_drill
from heimdall_kms.errors import IncompleteError
from heimdall_kms.jobs.classify import ValueKind

__all__ = ["drill"]


@click.group()
def drill() -> None:
    """Run a runbook end to end against a throwaway key, and write a timed report.

    With HMD_KMS_PROVIDER=vault the drill creates (and afterwards deletes) its own Transit key
    next to the real one; without a provider it uses the local provider in --workdir. Real
    keys and real data are never touched.
    """


def _options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(
        command
    )
    command = click.option(
        "--records",
        default=500,
        show_default=True,
        type=click.IntRange(1, 1_000_000),
        help="Rows to seed.",
    )(command)
    command = click.option(
        "--report-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Write the Markdown and JSON reports here (default: workdir).",
    )(command)
    return click.option(
        "--workdir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Drill database, keyring and audit log (default: a temp dir).",
    )(command)


def _run(
    kind: str,
    runner: Callable[[DrillEnvironment], DrillReport],
    *,
    workdir: Path | None,
    report_dir: Path | None,
    as_json: bool,
    legacy: bool = False,
) -> None:
    where = workdir or Path(tempfile.mkdtemp(prefix=f"heimdall-drill-{kind}-"))
    with drill_environment(where, os.environ, with_legacy_key=legacy) as env:
        report = runner(env)
    json_path, md_path = report.write(report_dir or where)
    if as_json:
        click.echo(json.dumps({**report.to_dict(), "report_files": [str(json_path), str(md_path)]}))
    else:
        click.echo(report.markdown())
        click.echo(f"reports: {md_path} and {json_path}")
    if not report.passed:
        raise IncompleteError(f"drill {kind}: a step failed or an SLA was missed; see {md_path}")


@drill.command("compromise")
@_options
@target_options
def compromise(
    *, spec: TargetSpec, workdir: Path | None, report_dir: Path | None, records: int, as_json: bool
) -> None:
    """The P1 key-compromise runbook: rotate, fully re-encrypt, retire, prove, blast radius.

    It also projects the full re-encryption of the configured targets' kms_v1 values (counted
    read-only by their census) at the rate the drill measured, against the 24 h SLA: the
    targets the options name (--table/--column or --targets), else those of the admin API's
    targets file (HMD_ADMIN_TARGETS_FILE). The targets are never written.
    """
    spec = _configured(spec)
    counted = count_targets(spec, lambda census: census.kinds[ValueKind.KMS_V1], required=False)

    def run(env: DrillEnvironment) -> DrillReport:
        report = run_compromise_drill(
            env, records=records, targets=counted.targets, unmeasured=counted.unmeasured
        )
        if not spec.names_targets:
            report.projection_note = _NO_TARGETS
        return report

    _run("compromise", run, workdir=workdir, report_dir=report_dir, as_json=as_json)


_NO_TARGETS = (
    "no targets are configured, so nothing was projected: name them with --table/--column "
    "or --targets FILE, or set HMD_ADMIN_TARGETS_FILE"
)


def _configured(spec: TargetSpec) -> TargetSpec:
    """``spec``, or where it names no target, the admin API's targets file if one is set."""
    configured = os.environ.get("HMD_ADMIN_TARGETS_FILE")
    if spec.names_targets or not configured:
        return spec
    return replace(spec, targets_file=Path(configured))


@drill.command("rotation")
@_options
def rotation(workdir: Path | None, report_dir: Path | None, records: int, as_json: bool) -> None:
    """The routine 90-day path: rotate, rewrap (ciphertexts untouched), retire, verify."""
    _run(
        "rotation",
        lambda env: run_rotation_drill(env, records=records),
        workdir=workdir,
        report_dir=report_dir,
        as_json=as_json,
    )


@drill.command("migration")
@_options
def migration(workdir: Path | None, report_dir: Path | None, records: int, as_json: bool) -> None:
    """Env keys to the KMS: dry run, migrate, census at zero, KMS-only read, rollback, purge."""
    _run(
        "migration",
        lambda env: run_migration_drill(env, records=records),
        workdir=workdir,
        report_dir=report_dir,
        as_json=as_json,
        legacy=True,
    )
