"""``heimdall-kms journal list|purge``: the migration journal kept for rollback."""

from __future__ import annotations

import json
import os
from typing import Any

import click

from heimdall_kms.audit import open_sink
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._targets import TargetSpec, checked_stores, opened_stores, target_options
from heimdall_kms.config import audit_destination
from heimdall_kms.jobs.journal import purge as purge_journal

__all__ = ["journal"]


@click.group()
def journal() -> None:
    """The values migrations replaced, kept per run for `migrate --rollback`.

    The journal holds env-key ciphertext; purge it after the rollback grace period so none
    remains anywhere.
    """


@journal.command("list")
@target_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_runs(
    *,
    spec: TargetSpec,
    as_json: bool,
) -> None:
    """List journaled runs: run id, values kept, when."""
    with opened_stores(spec) as stores:
        for store in stores:
            store.check(writable=False, scans=False)
            store.ensure_journal()
        runs = {str(store.target): store.runs() for store in stores}
    if as_json:
        click.echo(json.dumps(_runs_document(runs)))
    else:
        _print_runs(runs)


def _runs_document(runs: dict[str, list[tuple[str, int, str]]]) -> dict[str, Any]:
    return {
        t: [{"run_id": r, "values": n, "created_at": c} for r, n, c in rs] for t, rs in runs.items()
    }


def _print_runs(runs: dict[str, list[tuple[str, int, str]]]) -> None:
    for target, rows in runs.items():
        click.echo(f"{target}: {len(rows)} runs journaled")
        for run_id, count, created in rows:
            click.echo(f"  {run_id}  {count:,} values  since {created}")


@journal.command("purge")
@target_options
@click.option(
    "--older-than-days",
    type=click.IntRange(0),
    default=30,
    show_default=True,
    help="Delete journal rows older than this many days.",
)
@click.option("--run", "run_id", help="Only this run's rows.")
@actor_option("purges")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def purge(
    *,
    spec: TargetSpec,
    older_than_days: int,
    run_id: str | None,
    actor: str,
    as_json: bool,
) -> None:
    """Delete journal rows after the grace period (default 30 days); audited."""
    sink = open_sink(audit_destination(os.environ))
    with checked_stores(spec, writable=True, scans=False) as stores:
        result = purge_journal(stores, sink, actor, older_than_days=older_than_days, run_id=run_id)
    sink.close()
    if as_json:
        click.echo(json.dumps(result.to_dict()))
        return
    for target, deleted in result.deleted.items():
        click.echo(f"purged {deleted:,} journal rows of {target}")
