"""``heimdall-kms audit repair``: continue a log whose tail is a partial line, audited.

A crash or a full disk mid-write can leave the log ending in part of a line; writers then
refuse to append (fail closed). Repair, under the writers' lock: verifies the chain up to the
last complete line (it refuses a log that does not verify: repair never hides tampering),
moves the partial bytes into ``<log>.damaged-<UTC time>`` (mode 0600, never deleted),
truncates the log to its last complete line, updates the ``.head`` checkpoint, and appends an
``audit.repair`` event chained to the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heimdall_kms.audit.events import AuditEvent, EventType, Result
from heimdall_kms.audit.lines import chain_events
from heimdall_kms.audit.sink import head_path, write_head
from heimdall_kms.audit.verify import check_head, walk
from heimdall_kms.errors import (
    AuditCrashError,
    AuditTamperedError,
    AuditWriteError,
    InvalidInputError,
)

__all__ = ["Repaired", "repair"]

_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class Repaired:
    path: str
    sidecar: str
    bytes_moved: int
    continues_from_seq: int  # the last complete line, which the repair event follows
    event_seq: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "result": "repaired"}


def repair(path: Path, *, actor: str, reason: str | None) -> Repaired | None:
    """Move a partial tail aside and continue the chain; None when the log verifies and
    ends with a complete line (nothing is written then; a checkpoint behind a tail that
    chains, a crash, is left for the next writer to bring up to date).

    Raises:
        AuditTamperedError: the complete part of the log does not verify (nothing changed).
        InvalidInputError: the log cannot be opened.
        AuditWriteError: the sidecar, the truncation or the event could not be written.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except OSError as exc:
        raise InvalidInputError(f"cannot open audit log {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the writers' lock: no batch lands meanwhile
        size = os.fstat(fd).st_size
        cut = _after_last_newline(fd, size)
        # Verified first, damaged or not: "nothing to repair" never passes a tampered log.
        seq, digest = _verified_prefix(path, fd, cut)
        if cut == size:
            return None
        try:
            return _continue(
                path, fd, span=(cut, size), end=(seq, digest), actor=actor, reason=reason
            )
        except OSError as exc:
            raise AuditWriteError(f"cannot repair audit log {path}: {exc.strerror}") from None
    finally:
        os.close(fd)  # releases the lock


def _after_last_newline(fd: int, size: int) -> int:
    position = size
    while position > 0:
        start = max(0, position - _CHUNK)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _verified_prefix(path: Path, fd: int, cut: int) -> tuple[int, str]:
    """The last seq and hash of the first ``cut`` bytes, verified against the checkpoint
    (a checkpoint behind a tail that chains is a crash, which repair continues from)."""
    checkpoint = _read_head(path)
    with os.fdopen(os.dup(fd), "rb") as handle:
        handle.seek(0)
        seq, digest, at_head = walk(handle, cut, checkpoint)
    if checkpoint is not None:
        # Behind a tail that chains (a crash): continued; anything else raises.
        with contextlib.suppress(AuditCrashError):
            check_head(checkpoint, seq, digest, at_head)
    return seq, digest


def _read_head(path: Path) -> dict[str, Any] | None:
    head = head_path(path)
    try:
        document = json.loads(head.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        document = None
    if not isinstance(document, dict):
        raise AuditTamperedError(f"checkpoint {head} is unreadable", line=0)
    return document


def _continue(
    path: Path,
    fd: int,
    *,
    span: tuple[int, int],
    end: tuple[int, str],
    actor: str,
    reason: str | None,
) -> Repaired:
    cut, size = span
    seq, digest = end
    sidecar = _save_tail(path, os.pread(fd, size - cut, cut))
    os.ftruncate(fd, cut)
    os.fsync(fd)
    head = os.open(head_path(path), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        write_head(head, seq, digest)
        details = {"bytes_moved": size - cut, "sidecar": str(sidecar), "continues_from_seq": seq}
        event = AuditEvent(
            EventType.AUDIT_REPAIR,
            actor,
            str(uuid.uuid4()),
            Result.SUCCESS,
            reason=reason,
            details=details,
        )
        data, last, last_hash = chain_events([event], seq, digest)
        encoded = data.encode("utf-8")
        view = memoryview(encoded)
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
        write_head(head, last, last_hash)
    finally:
        os.close(head)
    return Repaired(str(path), str(sidecar), size - cut, seq, last)


def _save_tail(path: Path, tail: bytes) -> Path:
    moment = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    sidecar = path.with_name(f"{path.name}.damaged-{moment}")
    out = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(tail)
        while view:
            view = view[os.write(out, view) :]
        os.fsync(out)
    finally:
        os.close(out)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return sidecar
