"""``audit verify --anchor``: the chain, every checkpoint's signature, and the log against
the off-host anchor.

Every checkpoint (from ``<log>.checkpoints`` and from the anchor) must carry a valid signature
of the configured signing key (on AWS, or of a previous one the verifier lists) and name a line
the log holds with that very hash. A checkpoint beyond the log's end (a truncated tail, a
deleted log) or at a line with another hash (a rewritten chain, a deleted and restarted log) is
tampering, reported by seq range and the times the checkpoints were signed. Lines after the last
signed checkpoint that still chain are not tampering: a writer stopped without closing (a crash)
or is still running.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from heimdall_kms.audit.anchor import read_anchor
from heimdall_kms.audit.anchoring import log_id as configured_log_id
from heimdall_kms.audit.checkpoint import Checkpoint, Signer, checkpoints_path, parse_checkpoint
from heimdall_kms.audit.signers import signer_from_settings
from heimdall_kms.audit.verify import verify
from heimdall_kms.config import Settings
from heimdall_kms.errors import (
    AuditCrashError,
    AuditTamperedError,
    ConfigurationError,
    InvalidInputError,
)

__all__ = [
    "AnchoredResult",
    "AnchoredVerdict",
    "anchored_report",
    "raise_if_tampered",
    "verify_anchored",
]


class AnchoredVerdict(StrEnum):
    INTACT = "intact"  # every line up to the end is vouched for by a signed checkpoint
    UNSIGNED_TAIL = "unsigned_tail"  # chained lines after the last checkpoint: crash/running
    TAMPERED = "tampered"


@dataclass(slots=True)
class AnchoredResult:
    path: str
    log_id: str
    signing_key: str
    lines: int = 0
    last_hash: str = ""
    verdict: AnchoredVerdict = AnchoredVerdict.INTACT
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoints: int = 0
    anchored: int = 0
    not_anchored: int = 0
    last_signed: dict[str, Any] | None = None
    unsigned_tail: dict[str, int] | None = None
    anchor_last_recorded_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "log_id": self.log_id,
            "signing_key": self.signing_key,
            "lines": self.lines,
            "last_hash": self.last_hash,
            "checkpoints": self.checkpoints,
            "anchored_checkpoints": self.anchored,
            "checkpoints_not_anchored": self.not_anchored,
            "last_signed_checkpoint": self.last_signed,
            "unsigned_tail": self.unsigned_tail,
            "anchor_last_recorded_at": self.anchor_last_recorded_at,
            "problems": self.problems,
            "notes": self.notes,
            "result": self.verdict.value,
        }

    def message(self) -> str:
        if self.problems:
            return "; ".join(self.problems)
        return "; ".join(self.notes)


def verify_anchored(
    path: Path, *, signer: Signer, log_id: str, anchor_rows: list[tuple[str, str]]
) -> AnchoredResult:
    """Check ``path`` against its signed checkpoints and the anchor's rows.

    Raises:
        AuditTamperedError: the chain itself is broken (as plain ``verify``).
        InvalidInputError: the log cannot be read (and the anchor holds nothing for it).
        KMSError: a signature could not be checked (neither valid nor invalid).
    """
    result = AnchoredResult(str(path), log_id, signer.key_identifier)
    # The checkpoints first, the log after: a checkpoint is written only once its lines are on
    # disk, so a log in use is never mistaken for a truncated one.
    found = _collect(path, anchor_rows, result)
    _read_chain(path, bool(found), result)
    found = _check_signatures(found, signer, log_id, result)
    hashes = _hashes_at(path, {c.seq for c in found if c.seq <= result.lines}, result.lines)
    _compare(found, hashes, result)
    return result


def _read_chain(path: Path, has_checkpoints: bool, result: AnchoredResult) -> None:
    """The log's length and last hash, as plain ``verify`` walks them; a log that does not
    exist while checkpoints name it is a note (they decide what it means)."""
    if not path.exists() and has_checkpoints:
        result.notes.append(f"the log {path} does not exist")
        return
    try:
        chain = verify(path)
        result.lines, result.last_hash = chain.lines, chain.last_hash
    except AuditCrashError as crash:
        # The .head checkpoint is behind a tail that still chains: the signed checkpoints
        # below decide between tampering and an unsigned (crashed) tail.
        result.lines, result.last_hash = crash.lines, crash.last_hash
        result.notes.append(str(crash))


def _collect(
    path: Path, anchor_rows: list[tuple[str, str]], result: AnchoredResult
) -> list[Checkpoint]:
    anchored = _from_anchor(anchor_rows, result)
    unique = dict(anchored)
    for checkpoint in _from_sidecar(checkpoints_path(path), bool(anchor_rows), result):
        unique.setdefault(checkpoint.to_json(), checkpoint)
    result.checkpoints = len(unique)
    result.anchored = len(anchored)
    result.not_anchored = len(unique.keys() - anchored.keys())
    if anchor_rows == [] and unique:
        result.notes.append("the anchor holds no checkpoint for this log")
    return sorted(unique.values(), key=lambda c: (c.seq, c.time))


def _from_anchor(
    anchor_rows: list[tuple[str, str]], result: AnchoredResult
) -> dict[str, Checkpoint]:
    """The anchor's checkpoints by their JSON; a row that is not one is a problem."""
    anchored: dict[str, Checkpoint] = {}
    for number, (text, recorded_at) in enumerate(anchor_rows, start=1):
        try:
            checkpoint = parse_checkpoint(text)
        except ValueError:
            result.problems.append(f"anchor row {number} is not a checkpoint (forged)")
            continue
        anchored[checkpoint.to_json()] = checkpoint
        result.anchor_last_recorded_at = max(result.anchor_last_recorded_at or "", recorded_at)
    return anchored


def _from_sidecar(
    sidecar: Path, anchor_has_rows: bool, result: AnchoredResult
) -> Iterator[Checkpoint]:
    """The checkpoints of ``<log>.checkpoints``; a damaged line is a problem, a torn last
    line (a crash while writing) a note."""
    raw_lines = _sidecar_lines(sidecar, anchor_has_rows, result)
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.endswith(b"\n") and number == len(raw_lines):
            result.notes.append(f"{sidecar}: the last line is incomplete (a crash while writing)")
            continue
        try:
            checkpoint = parse_checkpoint(raw)
        except ValueError:
            result.problems.append(f"{sidecar} line {number}: not a checkpoint (damaged or forged)")
            continue
        yield checkpoint


def _sidecar_lines(sidecar: Path, anchor_has_rows: bool, result: AnchoredResult) -> list[bytes]:
    try:
        return sidecar.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        if anchor_has_rows:
            result.notes.append(f"{sidecar} does not exist; the anchor's checkpoints are used")
    except OSError as exc:
        result.problems.append(f"{sidecar} cannot be read: {exc.strerror}")
    return []


def _check_signatures(
    found: list[Checkpoint], signer: Signer, log_id: str, result: AnchoredResult
) -> list[Checkpoint]:
    """The checkpoints whose signature verifies with a trusted key; why each other one cannot
    vouch for this log is a problem."""
    verified = _verified(found, signer, log_id)
    result.problems += _rejections([c for c in found if id(c) not in verified], signer, log_id)
    return [c for c in found if id(c) in verified]


def _rejections(rejected: list[Checkpoint], signer: Signer, log_id: str) -> list[str]:
    """One problem per rejected checkpoint, except those of this log whose signature names a
    key (AWS): one problem per key they name."""
    problems: list[str] = []
    unverified: dict[str, list[Checkpoint]] = {}
    for checkpoint in rejected:
        named = signer.signing_key_of(checkpoint.signature)
        if checkpoint.log_id == log_id and named is not None:
            unverified.setdefault(named, []).append(checkpoint)
        else:
            problems.append(_signature_problem(checkpoint, log_id, signer.key_identifier))
    return problems + [_untrusted(key, group) for key, group in unverified.items()]


def _verified(found: list[Checkpoint], signer: Signer, log_id: str) -> set[int]:
    """The ids of this log's checkpoints whose signature verifies with a trusted key."""
    ours = [c for c in found if _checkable(c, signer, log_id)]
    valid = signer.verify_many([(c.message(), c.signature) for c in ours])
    return {id(c) for c, ok in zip(ours, valid, strict=True) if ok}


def _checkable(checkpoint: Checkpoint, signer: Signer, log_id: str) -> bool:
    """Whether the checkpoint is this log's and names the signer's key, or its signature
    records a key of its own (which the signer then trusts or not)."""
    # Where a signature records its key (AWS), that key, trusted or not by the signer, decides;
    # the checkpoint's key label is the name its writer was configured with, which an AWS
    # rotation (a new key, a new HMD_AUDIT_SIGNING_KEY) changes.
    return checkpoint.log_id == log_id and (
        checkpoint.key == signer.key_identifier
        or signer.signing_key_of(checkpoint.signature) is not None
    )


def _signature_problem(checkpoint: Checkpoint, log_id: str, key: str) -> str:
    """Why a checkpoint whose signature did not verify cannot vouch for this log."""
    where = f"the checkpoint of seq {checkpoint.seq} signed at {checkpoint.time}"
    if checkpoint.log_id != log_id:
        return f"{where} is for another log ({checkpoint.log_id!r})"
    if checkpoint.key != key:
        return f"{where} names another key ({checkpoint.key!r}): forged"
    return f"{where} has a signature that does not verify: forged"


def _untrusted(key: str, group: list[Checkpoint]) -> str:
    """The checkpoints whose signatures name ``key`` and verify with no trusted key."""
    seqs, times = [c.seq for c in group], [c.time for c in group]
    return (
        f"seq {min(seqs)}..{max(seqs)}: {len(group)} checkpoint(s) signed between {min(times)} "
        f"and {max(times)} name signing key {key} and have a signature that does not verify "
        f"with a trusted key (HMD_AUDIT_SIGNING_KEY, or one listed in "
        f"HMD_AUDIT_PREVIOUS_SIGNING_KEYS): forged, or signed by a previous key not listed"
    )


def _hashes_at(path: Path, wanted: set[int], lines: int) -> dict[int, str]:
    """The hash of each wanted seq among the first ``lines`` lines of the (verified) log;
    lines appended since are not read."""
    hashes: dict[int, str] = {}
    if not wanted or not path.exists():
        return hashes
    with path.open("rb") as handle:
        for _, raw in zip(range(lines), handle, strict=False):
            event = json.loads(raw)
            if event["seq"] in wanted:
                hashes[int(event["seq"])] = str(event["hash"])
    return hashes


def _compare(found: list[Checkpoint], hashes: dict[int, str], result: AnchoredResult) -> None:
    good, bad = _split_by_hash(found, hashes)
    if bad:
        result.problems.append(_describe(good, bad, result.lines))
    if result.problems:
        result.verdict = AnchoredVerdict.TAMPERED
        return
    _note_unsigned_tail(result, _note_last_signed(result, good))


def _split_by_hash(
    found: list[Checkpoint], hashes: dict[int, str]
) -> tuple[list[Checkpoint], list[Checkpoint]]:
    """The checkpoints whose seq the log holds with their hash, and the others."""
    good: list[Checkpoint] = []
    bad: list[Checkpoint] = []
    for checkpoint in found:
        (good if hashes.get(checkpoint.seq) == checkpoint.hash else bad).append(checkpoint)
    return good, bad


def _note_last_signed(result: AnchoredResult, good: list[Checkpoint]) -> int:
    """Record the last checkpoint that vouches for the log; its seq (0 when none does)."""
    last_good = max(good, key=lambda c: c.seq, default=None)
    if last_good is None:
        return 0
    result.last_signed = {"seq": last_good.seq, "time": last_good.time}
    return last_good.seq


def _note_unsigned_tail(result: AnchoredResult, signed_to: int) -> None:
    """Lines after the last signed checkpoint that still chain: a crash, or a running writer."""
    end = result.lines
    if end <= signed_to:
        return
    result.verdict = AnchoredVerdict.UNSIGNED_TAIL
    result.unsigned_tail = {"from_seq": signed_to + 1, "to_seq": end}
    result.notes.append(
        f"seq {signed_to + 1}..{end} ({end - signed_to} line(s)) after the last signed "
        f"checkpoint chain correctly but are not signed: a writer stopped without closing "
        f"(a crash) or is still running"
    )


def _describe(good: list[Checkpoint], bad: list[Checkpoint], end: int) -> str:
    """Which seq range the anchored checkpoints vouch for and this log does not hold."""
    earliest = min(c.moment for c in bad)
    # The lowest broken seq: within the log (a line replaced) whenever any broken one is.
    first = min(c.seq for c in bad)
    restarted = _restarted(good, earliest)
    if first > end and not restarted:
        return _missing(bad, end)
    return _replaced(bad, end, _original_before(good, earliest, first) + 1, restarted=restarted)


def _restarted(good: list[Checkpoint], earliest: datetime) -> bool:
    """Whether a checkpoint that matches the log was signed after the first broken one: the
    log now holds a chain begun after the original was signed."""
    return any(c.moment > earliest for c in good)


def _missing(bad: list[Checkpoint], end: int) -> str:
    last = max(c.seq for c in bad)
    return (
        f"seq {end + 1}..{last} ({_signed_between(bad)}) is missing: the log ends at seq {end} "
        f"but its signed checkpoints reach seq {last} (truncated, or deleted)"
    )


def _replaced(bad: list[Checkpoint], end: int, start: int, *, restarted: bool) -> str:
    last = max(c.seq for c in bad)
    how = "deleted and restarted" if restarted else "rewritten"
    return (
        f"seq {start}..{last} ({_signed_between(bad)}) is not in this log: the log holds "
        f"another chain there (ends at seq {end}; {how}, or rewritten and re-signed)"
    )


def _signed_between(checkpoints: list[Checkpoint]) -> str:
    times = [c.time for c in checkpoints]
    return f"signed between {min(times)} and {max(times)}"


def _original_before(good: list[Checkpoint], earliest: datetime, first: int) -> int:
    """The last seq before ``first`` that the original chain vouches for (0 if none)."""
    # Lines vouched for by a checkpoint signed before the first broken one are the original
    # chain; a matching checkpoint signed later belongs to a chain that replaced it.
    return max((c.seq for c in good if c.moment <= earliest and c.seq < first), default=0)


def anchored_report(
    path: Path, url: str, settings: Settings, *, log_id: str | None = None
) -> AnchoredResult:
    """:func:`verify_anchored` with the signer and anchor table of ``settings`` and the rows
    the anchor at ``url`` (a reading role) holds for the log.

    Raises:
        ConfigurationError: no signing key is configured, or it cannot be used.
        InvalidInputError: the URL is not a postgresql:// URL.
        StoreError: the anchor cannot be read.
        AuditTamperedError: the chain itself is broken.
        KMSError: a signature could not be checked.
    """
    if not url.startswith(("postgresql://", "postgres://")):
        raise InvalidInputError("the anchor must be a postgresql:// URL")
    signer = signer_from_settings(settings)
    if signer is None or settings.audit_anchoring is None:
        raise ConfigurationError(
            "HMD_AUDIT_SIGNING_KEY: names the key whose signatures the checkpoints carry"
        )
    name = log_id or configured_log_id(path, settings)
    rows = read_anchor(url, settings.audit_anchoring.anchor_table, name)
    return verify_anchored(path, signer=signer, log_id=name, anchor_rows=rows)


def raise_if_tampered(result: AnchoredResult) -> None:
    if result.verdict is AnchoredVerdict.TAMPERED:
        raise AuditTamperedError(result.message(), line=result.lines)
