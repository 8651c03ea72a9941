"""``heimdall-kms demo``: the end-to-end story, on the demo's own key."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import click

from heimdall_kms.cli.progress import ProgressView
from heimdall_kms.demo import DemoSummary, run_demo
from heimdall_kms.jobs.report import ProgressCallback

__all__ = ["demo"]


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to put the demo database, audit log and local keyring (default: a new temp dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(workdir: Path | None, as_json: bool) -> None:
    """Show the whole migration story on the demo's own key, database and audit log.

    Seeds customers whose SSNs the old engine sealed with env keys, reads them in hybrid
    mode, migrates every value to the KMS with progress, proves zero legacy values remain,
    reads everything back in KMS-only mode with no env key, then rotates, rewraps and retires
    and verifies the audit chain.

    With HMD_KMS_PROVIDER=vault it creates a throwaway Transit key (heimdall-demo-<random>),
    works only on it and deletes it at the end, also on failure; otherwise it uses the local
    provider with a keyring in --workdir (aws, gcp and azure are refused). The configured key
    and its versions, HMD_AUDIT_LOG, HMD_DATABASE_URL and HMD_LOCAL_KEYRING are never touched:
    everything the demo writes is in --workdir. SSNs are shown masked.
    """
    where = workdir or Path(tempfile.mkdtemp(prefix="heimdall-demo-"))

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    summary = run_demo(where, os.environ, say, _progress)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
        return
    for line in _summary_lines(summary):
        click.echo(line)


@contextmanager
def _progress(job: str) -> Iterator[ProgressCallback]:
    with ProgressView(f"   {job}", interval=1.0) as view:
        yield view


def _summary_lines(summary: DemoSummary) -> list[str]:
    life = summary.lifecycle
    key = (
        f"throwaway key {summary.key_identifier!r} (created and deleted by the demo)"
        if summary.throwaway_key
        else f"key {summary.key_identifier!r}"
    )
    lines = [
        "",
        "summary",
        f"  provider: {summary.provider}, {key}",
        f"  before: {_versions(summary.before)}   after: {_versions(summary.after)}   "
        f"left alone: {summary.left_alone:,} (not envelopes)",
        f"  migrated {summary.migrated:,} values in run {summary.run_id} "
        f"with {summary.kms_calls} KMS calls",
        f"  read back in kms mode and verified: {summary.verified:,}",
        f"  legacy value refused in kms mode: {_yes(summary.legacy_refused_in_kms_mode)}",
        f"  value moved to another record refused: {_yes(summary.moved_value_refused)}",
        f"  rotated to v{life['rotated_to']}; retire refused first: "
        f"{_yes(bool(life['retire_refused_first']))}; rewrapped {life['rewrapped']:,} "
        f"(ciphertexts untouched: {_yes(bool(life['ciphertexts_untouched']))}); retired "
        f"below v{life['retired_below']}; all readable: "
        f"{_yes(bool(life['readable_after_retire']))}",
        f"  audit events: {_events(summary.audit_events)}",
        f"  audit chain: intact, {summary.audit_chain_lines:,} lines (heimdall-kms audit verify)",
        f"  files: {summary.workdir} ({', '.join(summary.files)})",
    ]
    if summary.provider == "local":
        lines.append("  the local provider keeps its master key in a file: NOT FOR PRODUCTION")
    return lines


def _versions(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{count:,} {name}" for name, count in counts.items())


def _events(counts: Mapping[str, int]) -> str:
    """``crypto.decrypt 5,942 (2 failed), ...``: outcomes per event type; the intent lines
    written before each change are counted once at the end."""
    by_type: dict[str, dict[str, int]] = {}
    for name, count in counts.items():
        event_type, _, result = name.partition(":")
        by_type.setdefault(event_type, {})[result] = count
    parts, intents = [], 0
    for event_type, results in by_type.items():
        intents += results.pop("intent", 0)
        failed = results.get("failure", 0)
        parts.append(
            f"{event_type} {sum(results.values()):,}" + (f" ({failed:,} failed)" if failed else "")
        )
    tail = f"; plus {intents:,} intent lines, each written before its change" if intents else ""
    return ", ".join(parts) + tail


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"
