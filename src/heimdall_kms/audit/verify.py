"""``heimdall-kms audit verify``: walk the chain and name the first line that breaks it."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from heimdall_kms.audit.chain import GENESIS, chain_hash
from heimdall_kms.audit.sink import head_path
from heimdall_kms.errors import (
    AuditCrashError,
    AuditTamperedError,
    HeimdallKMSError,
    InvalidInputError,
)
from heimdall_kms.json_keys import RepeatedKeyError, unique_keys

__all__ = ["VerifiedChain", "verify"]


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    path: str
    lines: int
    last_hash: str
    checkpoint: str  # "matches", "absent"

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": self.lines,
            "last_hash": self.last_hash,
            "checkpoint": self.checkpoint,
            "result": "intact",
        }


def verify(path: Path, *, require_checkpoint: bool = False) -> VerifiedChain:
    """Check every line's hash, sequence and link, then the end against the checkpoint.

    Raises:
        AuditTamperedError: the first broken line, and how it is broken.
        AuditCrashError: the log chains to its end but the checkpoint is behind it, naming
            a line whose hash it holds (a crash between a batch and its checkpoint).
        InvalidInputError: the file cannot be read.
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read audit log {path}: {exc.strerror}") from None
    with handle:
        checkpoint, limit = _snapshot(handle, path)
        try:
            seq, prev, at_checkpoint = walk(handle, limit, checkpoint)
        except _PartialTailError as tail:
            raise _cut_off(tail, checkpoint) from None
    head = head_path(path)
    if checkpoint is _UNREADABLE:
        raise AuditTamperedError(f"checkpoint {head} is unreadable", line=seq)
    if not isinstance(checkpoint, dict):
        if require_checkpoint:
            raise AuditTamperedError(f"checkpoint {head} is missing", line=seq)
        return VerifiedChain(str(path), seq, prev, "absent")
    check_head(checkpoint, seq, prev, at_checkpoint)
    return VerifiedChain(str(path), seq, prev, "matches")


_UNREADABLE = object()


def walk(handle: BinaryIO, limit: int, checkpoint: object) -> tuple[int, str, str | None]:
    """Check every line in the first ``limit`` bytes: the last ``seq`` and ``hash``, and the
    hash of the line at the checkpoint's seq (None when no line has it).

    Raises:
        AuditTamperedError: the first broken line.
    """
    prev, seq = GENESIS, 0
    at_checkpoint: str | None = None
    consumed = 0
    for number, raw in enumerate(handle, start=1):
        if consumed >= limit:
            break  # appended after the snapshot: left for the next verify
        consumed += len(raw)
        if not raw.endswith(b"\n"):  # only the file's last line can lack its newline
            raise _PartialTailError(number, seq, prev, at_checkpoint)
        event = _parse(raw, number)
        _check_link(event, number, seq, prev)
        seq, prev = int(event["seq"]), str(event["hash"])
        if isinstance(checkpoint, dict) and seq == checkpoint.get("seq"):
            at_checkpoint = prev
    return seq, prev, at_checkpoint


def _snapshot(handle: BinaryIO, path: Path) -> tuple[dict[str, Any] | object | None, int]:
    """The checkpoint (a dict, None when absent, or ``_UNREADABLE``) and the log's size, taken
    together under a shared lock.

    Writers hold the lock exclusively for each batch, so the two agree: no batch is half
    written, and the checkpoint names the log's last line. Verifying a log that is in use
    then never mistakes a batch written meanwhile for truncation; lines appended while the
    log is walked are left for the next verify.
    """
    fd = handle.fileno()
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        size = os.fstat(fd).st_size
        try:
            checkpoint = json.loads(head_path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, size
        except (OSError, ValueError):
            return _UNREADABLE, size
        return (checkpoint if isinstance(checkpoint, dict) else _UNREADABLE), size
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class _PartialTailError(AuditTamperedError):
    """The log's last line is cut off; ``seq`` lines before it chain, the last hashing to
    ``prev`` (``at_checkpoint``: the hash of the line at the checkpoint's seq, if any)."""

    def __init__(self, number: int, seq: int, prev: str, at_checkpoint: str | None) -> None:
        super().__init__(f"line {number}: incomplete (the log was cut off mid-line)", line=number)
        self.seq = seq
        self.prev = prev
        self.at_checkpoint = at_checkpoint


def _cut_off(tail: _PartialTailError, checkpoint: object) -> HeimdallKMSError:
    """A cut-off last line is a crash when the checkpoint vouches for no more than the lines
    before it, and names one of them by its hash: a writer killed in the middle of a write
    (Linux ends a write short when the process is killed) leaves that. Anything else, a
    checkpoint that vouches for the cut line or none at all, is a truncated log."""
    if not isinstance(checkpoint, dict):
        return tail
    head_seq, head_hash = checkpoint.get("seq"), checkpoint.get("hash")
    if not isinstance(head_seq, int) or head_seq > tail.seq or head_hash != tail.at_checkpoint:
        return tail
    return AuditCrashError(
        f"line {tail.line}: cut off after {tail.seq} lines that chain from the checkpoint at "
        f"seq {head_seq}: a writer killed in the middle of a write (crash), not tampering; "
        "`heimdall-kms audit repair` removes the cut-off line",
        lines=tail.seq,
        last_hash=tail.prev,
        checkpoint_seq=head_seq,
    )


def _parse(raw: bytes, number: int) -> dict[str, Any]:
    event = _decode(raw, number)
    if not isinstance(event, dict) or not {"seq", "prev_hash", "hash"} <= event.keys():
        raise AuditTamperedError(f"line {number}: not a chained audit event", line=number)
    return event


def _decode(raw: bytes, number: int) -> object:
    """The line's JSON value, refusing a repeated key."""
    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except RepeatedKeyError as exc:
        raise AuditTamperedError(
            f"line {number}: the key {exc.key!r} appears twice (damaged or forged)", line=number
        ) from None
    except (ValueError, RecursionError):
        # RecursionError: nesting deeper than the parser goes, which no event has.
        raise AuditTamperedError(
            f"line {number}: not a JSON object (damaged)", line=number
        ) from None


def _check_link(event: dict[str, Any], number: int, seq: int, prev: str) -> None:
    claimed = event.pop("hash")
    line_seq = event.get("seq")
    if not isinstance(line_seq, int) or isinstance(line_seq, bool):
        raise AuditTamperedError(f"line {number}: seq is not an integer", line=number)
    _check_hash(event, number, claimed)
    event["hash"] = claimed
    _check_order(number, line_seq, seq)
    if event.get("prev_hash") != prev:
        raise AuditTamperedError(
            f"line {number}: does not link to the line before it (reordered or replaced)",
            line=number,
        )


def _check_hash(event: dict[str, Any], number: int, claimed: object) -> None:
    """The line (without its hash) hashes to the hash it claims."""
    try:
        digest = chain_hash(str(event.get("prev_hash")), event)
    except (UnicodeEncodeError, RecursionError, ValueError):
        # A lone surrogate (or a non-ASCII prev_hash) cannot be encoded; nesting too deep to
        # encode: no line the sink writes is either.
        raise AuditTamperedError(
            f"line {number}: holds text that is not valid Unicode, or nests too deeply "
            f"(damaged or forged)",
            line=number,
        ) from None
    if digest != claimed:
        raise AuditTamperedError(
            f"line {number}: content does not match its hash (edited)", line=number
        )


def _check_order(number: int, line_seq: int, seq: int) -> None:
    """The line's seq is the one after the previous line's: none removed, none moved."""
    if line_seq > seq + 1:
        raise AuditTamperedError(
            f"line {number}: seq {line_seq} follows seq {seq}: "
            f"{line_seq - seq - 1} line(s) removed before it",
            line=number,
        )
    if line_seq <= seq:
        raise AuditTamperedError(
            f"line {number}: seq {line_seq} follows seq {seq}: reordered or duplicated",
            line=number,
        )


def check_head(checkpoint: dict[str, Any], seq: int, digest: str, at_head: str | None) -> None:
    head_seq, head_hash = checkpoint.get("seq"), checkpoint.get("hash")
    if isinstance(head_seq, int):
        _check_head_seq(head_seq, head_hash == at_head, seq, digest)
    if head_seq != seq or head_hash != digest:
        raise AuditTamperedError(
            f"the last line (seq {seq}) does not match the checkpoint (replaced or forged)",
            line=seq,
        )


def _check_head_seq(head_seq: int, holds_head: bool, seq: int, digest: str) -> None:
    """A checkpoint beyond the log's last line is a truncation; one behind it, naming a line
    whose hash it holds (``holds_head``), is a crash."""
    if head_seq > seq:
        raise AuditTamperedError(
            f"the log ends at seq {seq} but its checkpoint records seq {head_seq}: "
            f"{head_seq - seq} line(s) truncated from the end",
            line=seq + 1,
        )
    if head_seq < seq and holds_head:
        # Every line after the one it names chains from it (the walk checked that): what a
        # writer killed between its batch's fdatasync and its checkpoint write leaves.
        raise AuditCrashError(
            f"{seq - head_seq} line(s) after the checkpoint at seq {head_seq} are chained but "
            f"not vouched for: a writer stopped before its checkpoint (crash), not tampering",
            lines=seq,
            last_hash=digest,
            checkpoint_seq=head_seq,
        )
