"""``heimdall-kms audit verify|query``: what a security reviewer needs from the audit log."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import click

from heimdall_kms.audit.anchored import AnchoredVerdict, anchored_report, raise_if_tampered
from heimdall_kms.audit.query import AuditFilter, dangling, query
from heimdall_kms.audit.verify import verify
from heimdall_kms.config import Settings
from heimdall_kms.errors import IncompleteError, InvalidInputError

__all__ = ["audit"]

_PATH = click.Path(dir_okay=False, path_type=Path)


def _log_path(_: click.Context, __: click.Parameter, path: Path) -> Path:
    # `audit verify "$HMD_AUDIT_LOG"` with the default: say why there is nothing to read.
    if str(path) == "stderr" and not path.exists():
        raise InvalidInputError(
            "HMD_AUDIT_LOG is stderr: the events went to each process's standard error, so "
            "there is no log file here; give the path of the file the events were written to"
        )
    return path


@click.group()
def audit() -> None:
    """Check the audit log's hash chain, and query it."""


@audit.command("verify")
@click.argument("path", type=_PATH, callback=_log_path)
@click.option(
    "--require-checkpoint",
    is_flag=True,
    help="Fail when the <log>.head checkpoint is missing (it detects truncation).",
)
@click.option(
    "--anchor",
    metavar="URL",
    help="Also check every signed checkpoint and the log against this postgresql:// anchor.",
)
@click.option(
    "--log-id",
    help="The log's name in the anchor (default HMD_AUDIT_LOG_ID, else <host>:<absolute path>).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify_command(
    path: Path, require_checkpoint: bool, anchor: str | None, log_id: str | None, as_json: bool
) -> None:
    """Verify every line's hash and link, and the end against the checkpoint.

    Exit 0 when intact; exit 5 naming the first edited, removed, reordered or truncated line.
    With --anchor: exit 5 when the log is shorter than, behind or different from the signed
    checkpoints; exit 3 when lines after the last signed checkpoint chain but are unsigned
    (a crash, or a writer still running).
    """
    if anchor is not None:
        _verify_anchored(path, anchor, log_id, as_json=as_json)
        return
    result = verify(path, require_checkpoint=require_checkpoint)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"{path}: intact, {result.lines:,} lines, checkpoint {result.checkpoint}")


def _verify_anchored(path: Path, url: str, log_id: str | None, *, as_json: bool) -> None:
    result = anchored_report(path, url, Settings.from_env(os.environ), log_id=log_id)
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    raise_if_tampered(result)
    if result.verdict is AnchoredVerdict.UNSIGNED_TAIL:
        raise IncompleteError(result.message())
    if not as_json:
        signed = result.last_signed or {}
        click.echo(
            f"{path}: intact, {result.lines:,} lines, {result.checkpoints} signed checkpoint(s), "
            f"{result.anchored} anchored, last signed at seq {signed.get('seq')} "
            f"({signed.get('time')})"
        )


def _when(_: click.Context, __: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("expected an RFC 3339 time, e.g. 2026-11-28T10:00:00Z") from None
    if moment.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. ...Z or +00:00")
    return moment


@audit.command("query")
@click.argument("path", type=_PATH, callback=_log_path)
@click.option(
    "--event-type", "event_types", multiple=True, help="e.g. crypto.decrypt (repeatable)."
)
@click.option("--actor", help="Only this actor.")
@click.option("--field", help="Only this field_identifier.")
@click.option("--key-version", type=int, help="Only events on this key version.")
@click.option(
    "--result",
    type=click.Choice(["success", "failure", "intent"]),
    help="Only events with this outcome (intent: recorded before a change).",
)
@click.option(
    "--dangling",
    "only_dangling",
    is_flag=True,
    help="Only intents no outcome followed (a change started and never recorded as done).",
)
@click.option("--since", callback=_when, help="From this RFC 3339 time (inclusive).")
@click.option("--until", callback=_when, help="Until this RFC 3339 time (inclusive).")
@click.option("--count", is_flag=True, help="Print only the number of matching events.")
def query_command(
    *,
    path: Path,
    event_types: tuple[str, ...],
    actor: str | None,
    field: str | None,
    key_version: int | None,
    result: str | None,
    since: datetime | None,
    until: datetime | None,
    only_dangling: bool,
    count: bool,
) -> None:
    """Print the matching events as JSON lines, in log order.

    Who decrypted what between T1 and T2 (the compromise runbook's question):
    `heimdall-kms audit query audit.log --event-type crypto.decrypt --since T1 --until T2`

    Changes that were started but never recorded as done (a crash between a change's intent
    and its outcome): `heimdall-kms audit query audit.log --dangling`
    """
    selection = AuditFilter(event_types, actor, field, key_version, result, since, until)
    found = query(path, selection)
    if only_dangling:
        # Outcomes are paired over the whole log; the filters then narrow what is shown.
        found = iter([e for e in dangling(query(path, AuditFilter())) if selection.matches(e)])
    matched = 0
    for event in found:
        matched += 1
        if not count:
            click.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
    if count:
        click.echo(str(matched))
