"""``heimdall-kms protect``, ``reveal`` and ``check``: the PII policy over NDJSON streams."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import click

import heimdall_kms
from heimdall_kms.cli._actor import actor_option
from heimdall_kms.errors import IncompleteError
from heimdall_kms.policy import PolicyEngine, Violation, load_policy, validate_no_plaintext
from heimdall_kms.policy.stream import (
    MAX_LINE_BYTES,
    Handler,
    StreamReport,
    checked_record,
    process_ndjson,
)

__all__ = ["check", "protect", "reveal"]

_POLICY = click.option(
    "--policy",
    "policy_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help='JSON or YAML: {"rules": {"ssn": "encrypt", ...}, "default_action": "passthrough"}.',
)
_BATCH = click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Records per batch: one KMS call per action per batch.",
)
_STRICT = click.option(
    "--strict",
    is_flag=True,
    help="Stop at the first malformed line instead of reporting and going on.",
)


def _problem(line: str) -> None:
    click.echo(f"heimdall-kms: warning: {line}", err=True)


@contextmanager
def _engine(policy_path: Path, actor: str) -> Iterator[PolicyEngine]:
    """The policy's engine over the configured facade (closed afterwards)."""
    policy = load_policy(policy_path)
    with heimdall_kms.from_env(default_actor=actor) as crypto:
        yield PolicyEngine(crypto, policy, actor=actor)


def _stream(handler: Handler, *, batch_size: int, strict: bool) -> StreamReport:
    """The NDJSON records of stdin through ``handler``, batch by batch, to stdout."""
    return process_ndjson(
        sys.stdin.buffer,
        sys.stdout,
        handler,
        batch_size=batch_size,
        strict=strict,
        report_problem=_problem,
    )


def _finish(report: StreamReport, verb: str) -> None:
    if report.problem_count:
        raise IncompleteError(
            f"{report.problem_count} lines could not be {verb} (reported above by number); "
            f"{report.written} records written"
        )


@click.command()
@_POLICY
@_BATCH
@_STRICT
@actor_option("protects")
def protect(policy_path: Path, batch_size: int, strict: bool, actor: str) -> None:
    """Apply the policy to NDJSON records on stdin; write them to stdout in the same order.

    Per field: scrub -> [REDACTED], hash -> sha256:<hex> (legacy, unkeyed), hmac -> a keyed
    hash whose key stays in the KMS, encrypt -> a kms_v1 envelope bound to the field (and the
    record, with "record_id" in the policy), passthrough -> unchanged. Memory stays bounded
    by --batch-size whatever the input size.
    """
    with _engine(policy_path, actor) as engine:
        report = _stream(engine.protect_many, batch_size=batch_size, strict=strict)
    _finish(report, "protected")


@click.command()
@_POLICY
@click.option("--actor", required=True, help="Who is reading (audited per field).")
@click.option("--reason", required=True, help="Why, e.g. a ticket id (audited per field).")
@_BATCH
@_STRICT
def reveal(policy_path: Path, actor: str, reason: str, batch_size: int, strict: bool) -> None:
    """Decrypt the encrypted fields of NDJSON records on stdin (hashes stay hashes).

    Every decrypted field is an audit event with --actor and --reason. A record with a field
    that does not decrypt (tampered, moved to another field) is reported by line, not written.
    """
    with _engine(policy_path, actor) as engine:
        report = _stream(
            lambda records: engine.reveal_outcomes(records, actor=actor, reason=reason),
            batch_size=batch_size,
            strict=strict,
        )
    _finish(report, "revealed")


@click.command()
@_POLICY
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--json", "as_json", is_flag=True, help="Print the violations as JSON lines.")
def check(policy_path: Path, source: BinaryIO, as_json: bool) -> None:
    """Check NDJSON records (a file, or stdin) for plaintext where the policy forbids it.

    For a CI gate or a backup scan: prints `line N: FIELD: what is wrong` (never the value)
    and exits 3 if anything breaks the policy. Needs no KMS.
    """
    policy = load_policy(policy_path)
    found = unreadable = 0
    for number, raw in _lines(source):
        record = checked_record(raw)
        if isinstance(record, str):
            unreadable += 1
            click.echo(f"line {number}: {record}", err=True)
            continue
        violations = validate_no_plaintext([record], policy)
        found += len(violations)
        for violation in violations:
            _print_violation(number, violation, as_json=as_json)
    if found or unreadable:
        raise IncompleteError(f"{found} fields break the policy; {unreadable} lines unreadable")


def _lines(source: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Each line that is not blank, with its number (at most ``MAX_LINE_BYTES`` + 1 bytes)."""
    lines = iter(functools.partial(source.readline, MAX_LINE_BYTES + 1), b"")
    return ((number, raw) for number, raw in enumerate(lines, 1) if raw.strip())


def _print_violation(number: int, violation: Violation, *, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({"line": number, "field": violation.field, "reason": violation.reason})
        )
    else:
        click.echo(f"line {number}: {violation.field}: {violation.reason}")
