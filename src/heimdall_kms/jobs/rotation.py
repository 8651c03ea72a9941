"""Key lifecycle: rotation on a cadence, guarded retirement, and the key report.

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
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from heimdall_kms.audit import AuditEvent, AuditSink, EventType, Result, audited
from heimdall_kms.errors import RefusedError
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.journal import journaled_below
from heimdall_kms.jobs.propagation import (
    Effect,
    Propagation,
    confirm_primary,
    confirm_refused,
    retire_canaries,
)
from heimdall_kms.jobs.rotation_lock import RotationLock
from heimdall_kms.providers import KeyAdmin, KeyInfo, KeyManagementService
from heimdall_kms.store import FieldStore

__all__ = [
    "ClockSource",
    "RetireBlock",
    "RetireRefusedError",
    "RetireResult",
    "RotationResult",
    "is_due",
    "key_now",
    "key_report",
    "next_due",
    "retire",
    "rotate",
    "values_per_version",
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
    intent = _key_event(EventType.KEY_ROTATE, kms, actor, reason=reason, details=details)
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


def values_per_version(kms: KeyAdmin, stores: Sequence[FieldStore]) -> dict[str, Counter[int]]:
    """Per target, how many stored values each version of *this* key still protects.

    Envelopes the census saw only inside JSON documents it was not told to look into count
    under version 0, and damaged envelopes (whose ``key_version`` cannot be verified against
    their wrapped key) under version -1: their version is unknown, so they block every
    retirement.
    """
    counts: dict[str, Counter[int]] = {}
    for store in stores:
        census = take_census(store)
        counts[census.target] = Counter(
            {
                version: n
                for (provider, key_id, version), n in census.key_versions.items()
                if provider == kms.name.value and key_id == kms.key_identifier
            }
        )
        if census.nested:
            counts[census.target][UNSEEN_VERSION] = census.nested
        damaged = census.kinds[ValueKind.UNPARSEABLE]
        if damaged:
            # A damaged envelope (an edited key_version among them) may need any version:
            # it blocks every retirement until it is repaired or removed.
            counts[census.target][DAMAGED_VERSION] = damaged
    return counts


UNSEEN_VERSION = 0
DAMAGED_VERSION = -1


def _version_count(version: int, count: int) -> str:
    if version == UNSEEN_VERSION:
        return f"{count:,} inside JSON documents (version unseen: name the path inside them)"
    if version == DAMAGED_VERSION:
        return f"{count:,} damaged envelopes (version unverifiable; the census lists their ids)"
    return f"v{version} {count:,}"


class RetireBlock(StrEnum):
    """Why a retirement was refused."""

    NO_TARGETS = "no_targets"  # no stored values were named to check, and it was not forced
    STRANDED = "stranded"  # stored values still need a version below N


class RetireRefusedError(RefusedError):
    """A refused retirement; ``block`` says why, ``unseen`` whether some of the values sit in
    JSON documents at a path nobody named. The caller says which of its options fix it."""

    def __init__(self, message: str, block: RetireBlock, *, unseen: bool = False) -> None:
        super().__init__(message)
        self.block = block
        self.unseen = unseen


@dataclass
class RetireResult:
    below_version: int
    forced: bool
    stranded: dict[str, dict[int, int]] = field(default_factory=dict)
    info: KeyInfo | None = None
    # Journaled old values (per target, per run) a rollback would restore unreadable.
    journal: dict[str, dict[str, int]] = field(default_factory=dict)
    # How the KMS was seen to refuse the retired versions (heimdall_kms.jobs.propagation).
    effect: Effect = Effect.UNCONFIRMED

    @property
    def journal_total(self) -> int:
        return sum(sum(runs.values()) for runs in self.journal.values())

    @property
    def stranded_total(self) -> int:
        return sum(sum(versions.values()) for versions in self.stranded.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "below_version": self.below_version,
            "forced": self.forced,
            "min_decryption_version": self.info.min_decryption_version if self.info else None,
            "stranded_values": self.stranded_total,
            "stranded": {t: {str(v): n for v, n in c.items()} for t, c in self.stranded.items()},
            "journal_values_below": self.journal_total,
            "journal": self.journal,
            "effect": self.effect.value,
        }


def retire(
    kms: KeyManagementService,
    stores: Sequence[FieldStore],
    audit: AuditSink,
    *,
    below_version: int,
    actor: str,
    force: bool = False,
    reason: str | None = None,
    propagation: Propagation | None = None,
) -> RetireResult:
    """Raise the KMS's minimum decryption version to ``below_version``, if nothing needs older.

    Success is reported only once a canary wrapped under each retired version just before is
    refused by unwrap (``propagation`` bounds the wait), where the provider can wrap under a
    named version; ``RetireResult.effect`` says how the effect was established.

    Raises:
        RetireRefusedError: stored values still need a version below N (and not ``force``),
            or no targets were named to check (and not ``force``); audited as a ``key.retire``
            failure.
        InvalidInputError: N is outside 1..latest. KMSError: the KMS refused or failed.
        NotInEffectError: disabled, but a retired version still decrypts after the wait.
    """
    intent = _key_event(
        EventType.KEY_RETIRE,
        kms,
        actor,
        version=below_version,
        reason=reason,
        details={"below_version": below_version, "forced": force},
    )
    # Intent first: nothing is counted or retired while the audit log cannot be written.
    with audited(audit, intent) as attempt:
        stranded = {
            target: {v: n for v, n in sorted(counts.items()) if v < below_version}
            for target, counts in values_per_version(kms, stores).items()
        }
        result = RetireResult(below_version, force, {t: c for t, c in stranded.items() if c})
        # Not a refusal: those runs' rollbacks become impossible, which retiring means. The
        # caller warns, and the event records them.
        result.journal = journaled_below(stores, kms.name.value, kms.key_identifier, below_version)
        attempt.details = result.to_dict()
        _check_retire(result, bool(stores))
        # Wrapped before, while the versions still encrypt: what the wait below must see refused.
        result.effect, canaries = retire_canaries(kms, kms.describe(), below_version)
        result.info = kms.retire(below_version)
        attempt.details = {**result.to_dict(), "in_effect": False}
        confirm_refused(kms, canaries, propagation or Propagation())
        attempt.details = result.to_dict()
    return result


def _check_retire(result: RetireResult, targets_named: bool) -> None:
    """Raises RetireRefusedError unless the retirement is forced or nothing needs the versions."""
    if result.forced:
        return
    if not targets_named:
        raise RetireRefusedError(
            "refusing to retire: name the targets whose stored values to check, or force it",
            RetireBlock.NO_TARGETS,
        )
    if not result.stranded_total:
        return
    where = "; ".join(
        f"{t}: " + ", ".join(_version_count(v, n) for v, n in c.items())
        for t, c in result.stranded.items()
    )
    unseen = any(UNSEEN_VERSION in c for c in result.stranded.values())
    raise RetireRefusedError(
        f"refusing to retire: {result.stranded_total:,} stored values still need a version "
        f"below {result.below_version} ({where}); re-encrypt them to the latest version first",
        RetireBlock.STRANDED,
        unseen=unseen,
    )


def key_report(
    kms: KeyAdmin,
    *,
    cadence: timedelta,
    now: datetime | None = None,
    stores: Sequence[FieldStore] = (),
) -> dict[str, Any]:
    """What ``heimdall-kms keys`` shows: versions, ages, next due date, values per version."""
    info = kms.describe()
    moment, clock = key_now(info, now or datetime.now(UTC))
    due = next_due(info, cadence)
    counts = values_per_version(kms, stores) if stores else {}
    totals: Counter[int] = Counter()
    for per_target in counts.values():
        totals.update(per_target)
    return {
        "provider": info.provider.value,
        "key_identifier": info.key_identifier,
        "latest_version": info.latest_version,
        "min_decryption_version": info.min_decryption_version,
        "rotation_days": cadence.days,
        "next_due": due.isoformat() if due else None,
        "due": is_due(info, now=moment, cadence=cadence),
        "clock": clock.value,
        "versions": [
            {
                "version": v.version,
                "created_at": v.created_at.isoformat() if v.created_at else None,
                "age_days": (moment - v.created_at).days if v.created_at else None,
                **({"values": totals.get(v.version, 0)} if stores else {}),
            }
            for v in info.versions
        ],
        "values_by_target": {
            t: {str(v): n for v, n in sorted(c.items())} for t, c in counts.items()
        },
    }


def _key_event(
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
        reason=reason,
        details=details,
    )
