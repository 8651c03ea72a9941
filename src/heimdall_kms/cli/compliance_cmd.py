"""``heimdall-kms compliance report``: the evidence for PCI DSS, GDPR Art. 32 and SOC 2."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import click

from heimdall_kms.audit.anchored import AnchoredResult, anchored_report
from heimdall_kms.cli._targets import TargetSpec, opened_stores, target_options
from heimdall_kms.compliance import gather
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings

__all__ = ["compliance"]


def _anchor_check(url: str | None, settings: Settings) -> Callable[[Path], AnchoredResult] | None:
    if url is None:
        return None
    return lambda log: anchored_report(log, url, settings)


@click.group()
def compliance() -> None:
    """Evidence for auditors (see docs/compliance.md)."""


@compliance.command("report")
@target_options
@click.option(
    "--drill-reports",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory with `drill compromise` reports (the latest one is used).",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Markdown report here too.",
)
@click.option(
    "--anchor",
    metavar="URL",
    help="Check the audit log against its signed checkpoints in this postgresql:// anchor.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of Markdown.")
def report(
    *,
    spec: TargetSpec,
    drill_reports: Path | None,
    output: Path | None,
    anchor: str | None,
    as_json: bool,
) -> None:
    """Key versions and ages, rotation and retirement history, a census of the named targets,
    the audit chain verified, the latest drill — mapped to the controls they support.
    """
    settings = Settings.from_env(os.environ)
    kms = load_provider(settings)
    audit_log = None if settings.audit_log == "stderr" else Path(settings.audit_log)
    try:
        with opened_stores(spec, required=False) as stores:
            evidence = gather(
                kms,
                stores,
                cadence=timedelta(days=settings.key_rotation_days),
                audit_log=audit_log,
                drill_reports=drill_reports,
                audit_anchor=_anchor_check(anchor, settings),
            )
    finally:
        kms.close()
    markdown = evidence.markdown()
    if output is not None:
        output.write_text(markdown, encoding="utf-8")
    click.echo(json.dumps(evidence.to_dict(), default=str) if as_json else markdown)
