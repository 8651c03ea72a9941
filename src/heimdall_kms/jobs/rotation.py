"""Key rotation on a cadence (retirement: :mod:`heimdall_kms.jobs.retire`; the key report:
:mod:`heimdall_kms.jobs.key_report`).

There is one rotation logic, :func:`rotate`, used by ``heimdall-kms rotate [--if-due]`` (run
by cron, a systemd timer or a Kubernetes CronJob) and by the admin service. Whether a
rotation is due is judged from the KMS's own times: the age of the latest version is the
KMS's current time (the ``Date`` of its describe answer, :attr:`KeyInfo.server_time`) minus
that version's creation time as the KMS reports it. Only where a provider gives no server
time is the local clock used (``RotationResult.clock``). A due decision is taken again under
a lock (:mod:`heimdall_kms.jobs.rotation_lock`) after reading the key again, so N schedulers
rotate at most once per period. Time is injected.
"""

from __future__ import annotations

import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from heimdall_kms.audit import AuditEvent, AuditSink, EventType, Result, audited
from heimdall_kms.errors import InvalidInputError
from heimdall_kms.inputs import checked_label
from heimdall_kms.jobs.propagation import (
    Propagation,
    confirm_primary,
)
from heimdall_kms.jobs.rotation_lock import RotationLock
from heimdall_kms.providers import KeyAdmin, KeyInfo, KeyManagementService

__all__ = [
    "ClockSource",
    "RotationResult",
    "is_due",
    "key_event",
    "key_now",
    "next_due",
    "rotate",
]


def next_due(info: KeyInfo, cadence: timedelta) -> datetime | None:
    """When the latest version reaches the cadence; None if the KMS gives no creation time."""
    created = info.latest.created_at
    return created + cadence if created is not None else None


class ClockSource(StrEnum):
    """Whose clock measured the latest version's age."""

    KMS = "kms"  # the KMS's own current time (its answer's Date header)
    LOCAL = "local"  # the provider gives no server time: this host's clock


def key_now(info: KeyInfo, local_now: datetime) -> tuple[datetime, ClockSource]:
    """The time to age the key by: the KMS's, where it told it, else ``local_now``."""
    if info.server_time is not None:
        return info.server_time, ClockSource.KMS
    return local_now, ClockSource.LOCAL


def is_due(info: KeyInfo, *, now: datetime, cadence: timedelta) -> bool:
    """True when the latest version is at least ``cadence`` old (or its age is unknown).

    ``now`` is the time to judge by: pass the KMS's (:func:`key_now`).
    """
    due = next_due(info, cadence)
    return due is None or now >= due


@dataclass(frozen=True, slots=True)
class RotationResult:
    rotated: bool
    old_version: int
    new_version: int
    due_at: datetime | None
    clock: ClockSource = ClockSource.LOCAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "rotated": self.rotated,
            "old_version": self.old_version,
            "new_version": self.new_version,
            "next_due": self.due_at.isoformat() if self.due_at else None,
            "clock": self.clock.value,
        }


def rotate(
    kms: KeyManagementService,
    audit: AuditSink,
    *,
    actor: str,
    if_due: bool,
    cadence: timedelta,
    now: datetime | None = None,
    reason: str | None = None,
    propagation: Propagation | None = None,
    lock: RotationLock | None = None,
) -> RotationResult:
    """Create a new key version (with ``if_due``: only when the latest is ``cadence`` old).

    The age is measured by the KMS's clock where the provider reports it; ``now`` (the local
    clock, injectable) is used only where it does not. The decision is taken again inside
    ``lock`` after a fresh read of the key.

    The new version is reported only once a canary wrap lands on it (``propagation`` bounds
    the wait; :mod:`heimdall_kms.jobs.propagation`).

    Raises:
        KMSError: the KMS refused or failed (a failure to rotate is audited as a failed
            ``key.rotate``; a failure to read the key is not, nothing was attempted).
        AuditWriteError: the intent could not be recorded (nothing was rotated), or the
            outcome could not be (the key was rotated; the intent is in the log).
        NotInEffectError: rotated, but new DEKs still wrap with an older version after the
            wait (audited as a failed ``key.rotate`` with ``in_effect: false``).
    """
    # Reading the key changes nothing, and a check that finds nothing due writes no event.
    if if_due:
        before = kms.describe()
        if not _due(before, now, cadence):
            return _not_due(before, now, cadence)
    # Due (or asked): decide again under the lock, from a fresh read, so that a scheduler
    # that waited while another rotated sees the new version and does nothing.
    with (lock or nullcontext)():
        before = kms.describe()
        if if_due and not _due(before, now, cadence):
            return _not_due(before, now, cadence)
        return _rotate_now(
            kms,
            audit,
            before,
            actor=actor,
            if_due=if_due,
            cadence=cadence,
            reason=reason,
            propagation=propagation,
        )


def _due(info: KeyInfo, now: datetime | None, cadence: timedelta) -> bool:
    moment, _ = key_now(info, now or datetime.now(UTC))
    return is_due(info, now=moment, cadence=cadence)


def _not_due(info: KeyInfo, now: datetime | None, cadence: timedelta) -> RotationResult:
    _, clock = key_now(info, now or datetime.now(UTC))
    version = info.latest_version
    return RotationResult(False, version, version, next_due(info, cadence), clock)


def _rotate_now(
    kms: KeyManagementService,
    audit: AuditSink,
    before: KeyInfo,
    *,
    actor: str,
    if_due: bool,
    cadence: timedelta,
    reason: str | None,
    propagation: Propagation | None,
) -> RotationResult:
    details = {
        "old_version": before.latest_version,
        "if_due": if_due,
        "cadence_days": cadence.days,
    }
    intent = key_event(EventType.KEY_ROTATE, kms, actor, reason=reason, details=details)
    # The intent is recorded before the KMS is asked to change anything: with an unwritable
    # audit log, nothing is rotated.
    with audited(audit, intent) as attempt:
        after = kms.rotate()
        attempt.key_version = after.latest_version
        attempt.details["in_effect"] = False
        confirm_primary(kms, after.latest_version, propagation or Propagation())
        attempt.details["in_effect"] = True
    _, clock = key_now(before, datetime.now(UTC))
    return RotationResult(
        True, before.latest_version, after.latest_version, next_due(after, cadence), clock
    )


def key_event(
    kind: EventType,
    kms: KeyAdmin,
    actor: str,
    *,
    version: int | None = None,
    reason: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent(
        event_type=kind,
        actor=actor,
        request_id=str(uuid.uuid4()),
        result=Result.SUCCESS,
        key_identifier=kms.key_identifier,
        key_version=version,
        provider=kms.name.value,
        reason=_given_reason(reason),
        details=details,
    )


def _given_reason(reason: str | None) -> str | None:
    """A reason, where one is given, is audited with the change: blank text says nothing and
    is refused before anything changes, as every reason a read states is.

    Raises:
        InvalidInputError: blank, too long, or not valid Unicode.
    """
    if reason is None:
        return None
    if not reason.strip():
        raise InvalidInputError("reason must not be blank: it is audited with the change")
    return checked_label("reason", reason)
