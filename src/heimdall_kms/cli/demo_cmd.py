"""``heimdall-kms demo``: the end-to-end story on the embedded default."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

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
    """Show the whole story on SQLite + the local provider (or the configured KMS).

    Seeds customers whose SSNs the old engine left as env-key envelopes or in the clear,
    seals them all as kms_v1 through the KMS, reads them back with audited decrypts, and
    proves a value copied to another record is refused. Nothing outside --workdir is touched.
    """
    where = workdir or Path(tempfile.mkdtemp(prefix="heimdall-demo-"))

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    summary = run_demo(where, os.environ, say)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    click.echo("")
    click.echo("summary")
    click.echo(f"  values before: {dict(summary.before)}")
    click.echo(f"  values after:  {dict(summary.after)}")
    click.echo(f"  decrypted and verified: {summary.verified}")
    click.echo(f"  moved value refused: {'yes' if summary.moved_value_refused else 'NO'}")
    click.echo(f"  audit events: {dict(summary.audit_events)}")
    click.echo(f"  files: {summary.workdir} (demo.db, audit.log, local-keyring.json)")
    if summary.provider == "local":
        click.echo("  the local provider keeps its master key in a file: NOT FOR PRODUCTION")
