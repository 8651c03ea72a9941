"""``heimdall-kms demo``: the end-to-end story on the embedded default."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from heimdall_kms.cli.progress import ProgressView
from heimdall_kms.demo import run_demo

__all__ = ["demo"]


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put the demo database, keyring and audit log (default: a new temp dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(workdir: Path | None, as_json: bool) -> None:
    """Show the whole migration story on SQLite + the local provider (or the configured KMS).

    Seeds customers whose SSNs the old engine sealed with env keys, reads them in hybrid
    mode, migrates every value to the KMS with progress, proves zero legacy values remain,
    then reads everything back in KMS-only mode with no env key. Nothing outside --workdir is
    touched; SSNs are shown masked.
    """
    where = workdir or Path(tempfile.mkdtemp(prefix="heimdall-demo-"))

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    with ProgressView("   migrate", interval=1.0) as view:
        summary = run_demo(where, os.environ, say, view)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    click.echo("")
    click.echo("summary")
    click.echo(f"  before: {dict(summary.before)}   after: {dict(summary.after)}")
    click.echo(
        f"  migrated {summary.migrated:,} values in run {summary.run_id} "
        f"with {summary.kms_calls} KMS calls"
    )
    click.echo(f"  read back in kms mode and verified: {summary.verified:,}")
    click.echo(f"  legacy value refused in kms mode: {_yes(summary.legacy_refused_in_kms_mode)}")
    click.echo(f"  value moved to another record refused: {_yes(summary.moved_value_refused)}")
    life = summary.lifecycle
    click.echo(
        f"  rotated to v{life['rotated_to']}; retire refused first: "
        f"{_yes(bool(life['retire_refused_first']))}; rewrapped {life['rewrapped']:,} "
        f"(ciphertexts untouched: {_yes(bool(life['ciphertexts_untouched']))}); retired "
        f"below v{life['retired_below']}; all readable: "
        f"{_yes(bool(life['readable_after_retire']))}"
    )
    click.echo(f"  audit events: {dict(summary.audit_events)}")
    click.echo(f"  files: {summary.workdir} (demo.db, audit.log, local-keyring.json)")
    if summary.provider == "local":
        click.echo("  the local provider keeps its master key in a file: NOT FOR PRODUCTION")


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
