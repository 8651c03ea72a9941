"""Signing the chain head periodically, off the hot path.

The file sink calls :meth:`Checkpointer.note` after every batch with the head it wrote: a
lock and two assignments. A daemon thread signs the latest head when
``HMD_AUDIT_CHECKPOINT_SECONDS`` have passed since the last checkpoint or
``HMD_AUDIT_CHECKPOINT_LINES`` lines were written since, and at close; so the KMS sees at
most one ``sign`` per interval or per N lines, never one per batch. Each signed checkpoint is
appended (and synced) to ``<log>.checkpoints`` and handed to the anchor (and syslog).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from heimdall_kms.audit.checkpoint import Checkpoint, Signer, checkpoints_path, new_checkpoint

__all__ = ["CheckpointPolicy", "Checkpointer", "Destination"]


class Destination(Protocol):
    """Where signed checkpoints also go, off the host (the PostgreSQL anchor, syslog)."""

    def put(self, checkpoint: Checkpoint) -> None:
        """Queue it; never blocks (a full queue is counted as a failure)."""

    def close(self, timeout: float | None = None) -> bool:
        """Wait at most ``timeout`` for what is queued; True when all of it went out."""


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    log_id: str
    seconds: float = 60.0
    lines: int = 1000
    close_timeout_seconds: float = 5.0


class Checkpointer:
    def __init__(
        self,
        log: Path,
        signer: Signer,
        policy: CheckpointPolicy,
        *,
        destinations: Sequence[Destination] = (),
        on_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self._path = checkpoints_path(log)
        self._signer = signer
        self._policy = policy
        self._destinations = tuple(destinations)
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._head: tuple[int, str] | None = None  # the latest head this process wrote
        self._signed_seq = 0  # the head of the last checkpoint signed
        self._lines = 0  # lines written since it
        self._closing = False
        self._last = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="heimdall-checkpoint", daemon=True)
        self._thread.start()

    def note(self, seq: int, digest: str, lines: int) -> None:
        """The sink wrote ``lines`` lines ending at ``seq``/``digest``."""
        with self._lock:
            self._head = (seq, digest)
            self._lines += lines
            if self._lines >= self._policy.lines:
                self._wake.notify()

    def checkpoint_now(self) -> None:
        """Sign the latest head now, in the caller's thread, unless it is signed already
        (a drill's verification step; a failure is counted, as on the thread)."""
        with self._lock:
            head = self._unsigned_head()
        if head is not None:
            self._sign(*head)

    def close(self) -> None:
        """Sign the last head, hand it to the destinations and wait for them, all within one
        bounded time."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        deadline = time.monotonic() + self._policy.close_timeout_seconds
        self._thread.join(self._policy.close_timeout_seconds)
        for destination in self._destinations:
            destination.close(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            closing, head = self._wait()
            if head is not None:
                self._sign(*head)
            if closing:
                return

    def _wait(self) -> tuple[bool, tuple[int, str] | None]:
        """Wait until a checkpoint is due (or the close); whether closing, and the head to
        sign (None when it is signed already)."""
        with self._lock:
            self._wake.wait_for(self._due, timeout=self._policy.seconds)
            head = self._unsigned_head()
            if head is not None or self._due_by_time():
                self._lines = 0
                self._last = time.monotonic()
            return self._closing, head

    def _unsigned_head(self) -> tuple[int, str] | None:
        """The latest head written, unless a checkpoint signed it (the lock is held)."""
        return self._head if self._head is not None and self._head[0] != self._signed_seq else None

    def _due(self) -> bool:
        return self._closing or self._lines >= self._policy.lines or self._due_by_time()

    def _due_by_time(self) -> bool:
        return time.monotonic() - self._last >= self._policy.seconds

    def _sign(self, seq: int, digest: str) -> None:
        try:
            checkpoint = new_checkpoint(self._policy.log_id, seq, digest, self._signer)
            _append_line(self._path, checkpoint.to_json())
        except Exception:  # noqa: BLE001 - never let the thread die: count it, retry later
            self._on_failure()
            return
        with self._lock:
            self._signed_seq = seq
        for destination in self._destinations:
            destination.put(checkpoint)


def _append_line(path: Path, line: str) -> None:
    # One write of one short line with O_APPEND: lines from several writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
        os.fdatasync(fd)
    finally:
        os.close(fd)
