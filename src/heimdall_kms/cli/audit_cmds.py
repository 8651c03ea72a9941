"""``heimdall-kms audit verify|repair|query``: what a security reviewer needs from the audit log."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from heimdall_kms.audit.anchored import AnchoredVerdict, anchored_report, raise_if_tampered
from heimdall_kms.audit.query import AuditFilter, dangling, query
from heimdall_kms.audit.repair import repair
from heimdall_kms.audit.verify import verify
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.config import Settings
from heimdall_kms.errors import AuditCrashError, IncompleteError, InvalidInputError
from heimdall_kms.inputs import checked_label

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

    Exit 0 when intact; exit 5 naming the first edited, removed, reordered or truncated line;
    exit 3 when the <log>.head checkpoint is behind the end but every line after it still
    chains from the line it names (a writer killed before its checkpoint: a crash), or when
    only a cut-off last line follows the lines it vouches for (killed mid-write; repair it).
    With --anchor: exit 5 when the log is shorter than, behind or different from the signed
    checkpoints; exit 3 when lines after the last signed checkpoint chain but are unsigned
    (a crash, or a writer still running).
    """
    if anchor is not None:
        _verify_anchored(path, anchor, log_id, as_json=as_json)
        return
    try:
        result = verify(path, require_checkpoint=require_checkpoint)
    except AuditCrashError as crash:
        if as_json:
            click.echo(json.dumps(_crash_report(path, crash)))
        raise
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(f"{path}: intact, {result.lines:,} lines, checkpoint {result.checkpoint}")


def _crash_report(path: Path, crash: AuditCrashError) -> dict[str, object]:
    return {
        "path": str(path),
        "lines": crash.lines,
        "last_hash": crash.last_hash,
        "checkpoint": "behind",
        "checkpoint_seq": crash.checkpoint_seq,
        "unvouched_lines": crash.lines - crash.checkpoint_seq,
        "result": "crash",
        "message": str(crash),
    }


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


@audit.command("repair")
@click.argument("path", type=_PATH, callback=_log_path)
@actor_option("repairs the log")
@click.option("--reason", help="Why, e.g. an incident id (audited).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def repair_command(path: Path, actor: str, reason: str | None, as_json: bool) -> None:
    """Move a partial last line aside and continue the chain (audited as audit.repair).

    Under the writers' lock: verifies the chain up to the last complete line (exit 5, changing
    nothing, when it does not verify), moves the partial bytes into <log>.damaged-<UTC time>
    (mode 0600, kept), truncates the log to its last complete line, updates the checkpoint and
    appends an audit.repair event. A log that ends with a complete line: nothing to repair,
    exit 0, nothing written.
    """
    who = checked_label("actor", actor)
    why = checked_label("reason", reason) if reason is not None else None
    done = repair(path, actor=who, reason=why)
    if as_json:
        click.echo(json.dumps(done.to_dict() if done else {"path": str(path), "result": "none"}))
    elif done is None:
        click.echo(f"{path}: nothing to repair (it ends with a complete line)")
    else:
        click.echo(
            f"{path}: moved {done.bytes_moved:,} byte(s) of a partial line to {done.sidecar}; "
            f"the chain continues from seq {done.continues_from_seq} "
            f"(audit.repair at seq {done.event_seq})"
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
    found = _dangling(path, selection) if only_dangling else query(path, selection)
    matched = 0
    for event in found:
        matched += 1
        if not count:
            click.echo(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
    if count:
        click.echo(str(matched))


def _dangling(path: Path, selection: AuditFilter) -> Iterator[dict[str, Any]]:
    # Outcomes are paired over the whole log; the filters then narrow what is shown.
    return iter([e for e in dangling(query(path, AuditFilter())) if selection.matches(e)])
