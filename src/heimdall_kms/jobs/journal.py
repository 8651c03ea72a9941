"""Rollback and purge of the migration journal (the seed's rollback plan).

A migration keeps each value it replaced, with its run id, in ``heimdall_kms_journal``.
``rollback`` puts those values back wherever the stored value is still the one the run wrote
(compare-and-swap again: a value the application changed since is left alone and counted).
``purge`` deletes journal rows after the grace period, after which no env-key ciphertext
remains anywhere. Both record their intent before touching the store
(:func:`heimdall_kms.audit.audited`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from heimdall_kms.audit import AuditEvent, AuditSink, EventType, Result, audited
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import RefusedError
from heimdall_kms.jobs.reading import reader_for
from heimdall_kms.providers.base import KeyInfo
from heimdall_kms.store import FieldStore

__all__ = [
    "PurgeResult",
    "RestoreCounts",
    "RollbackResult",
    "journaled_below",
    "purge",
    "rollback",
]

_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class RestoreCounts:
    """What a rollback did on one target (or on all of them, added up)."""

    journaled: int = 0
    restored: int = 0
    conflicts: int = 0  # changed since the run: left alone
    not_envelope: int = 0  # no envelope where the target says: never written back

    def __add__(self, other: RestoreCounts) -> RestoreCounts:
        return RestoreCounts(
            self.journaled + other.journaled,
            self.restored + other.restored,
            self.conflicts + other.conflicts,
            self.not_envelope + other.not_envelope,
        )

    def to_dict(self) -> dict[str, int]:
        return {
            "journaled": self.journaled,
            "restored": self.restored,
            "conflicts": self.conflicts,
            "not_envelope": self.not_envelope,
        }


@dataclass
class RollbackResult:
    run_id: str
    targets: dict[str, RestoreCounts] = field(default_factory=dict)

    @property
    def totals(self) -> RestoreCounts:
        return sum(self.targets.values(), RestoreCounts())

    def to_dict(self) -> dict[str, Any]:
        targets = {t: counts.to_dict() for t, counts in self.targets.items()}
        return {"action": "rollback", "run_id": self.run_id, "targets": targets}


@dataclass
class PurgeResult:
    run_id: str | None
    deleted: dict[str, int] = field(default_factory=dict)  # journal rows, per target

    @property
    def total_deleted(self) -> int:
        return sum(self.deleted.values())

    def to_dict(self) -> dict[str, Any]:
        targets = {t: {"deleted": n} for t, n in self.deleted.items()}
        return {"action": "purge", "run_id": self.run_id, "targets": targets}


def rollback(
    stores: Sequence[FieldStore],
    run_id: str,
    audit: AuditSink,
    actor: str,
    *,
    describe: Callable[[], KeyInfo] | None = None,
) -> RollbackResult:
    """Restore every value the run replaced, where it is unchanged since.

    A run whose old values are ``kms_v1`` (a rewrap, say) is restored only if the KMS can still
    decrypt every one of them: ``describe`` (asked once, only then) gives the key's minimum
    decryption version; old values of this key below it are retired versions, and restoring
    them would make them unreadable, so the target is refused as a whole (nothing restored).

    Per target, the intent is recorded before the journal is read, and the outcome after.
    A journal row whose old value does not hold an envelope where the target says (the column,
    or its JSON path), parsing strictly as its format, is never written back: it is counted as
    ``not_envelope`` and left in the journal.

    Raises:
        AuditWriteError: an intent could not be recorded (that target is not touched).
        RefusedError: old values need retired key versions, or no KMS to tell (audited).
        StoreError: the database failed (the current chunk is rolled back).
    """
    result = RollbackResult(run_id)
    # The key is described at most once, when a kms_v1 old value needs it.
    once = functools.cache(describe) if describe is not None else None
    for store in stores:
        event = _event(EventType.REENCRYPT_ROLLBACK, actor, run_id, str(store.target), {})
        with audited(audit, event) as attempt:
            counts = _restore(store, run_id, once)
            result.targets[str(store.target)] = counts
            attempt.details = counts.to_dict()
    return result


def _restore(
    store: FieldStore, run_id: str, describe: Callable[[], KeyInfo] | None
) -> RestoreCounts:
    """Restore the run's journaled envelopes of one target, in chunks."""
    store.ensure_journal()
    entries = store.journal(run_id)
    reader = reader_for(store)
    restorable = [e for e in entries if reader(e.old_value).kind.is_envelope]
    _refuse_retired(store, [reader(e.old_value).envelope for e in restorable], describe)
    restored = 0
    for start in range(0, len(restorable), _CHUNK):
        restored += sum(store.restore(restorable[start : start + _CHUNK]))
    return RestoreCounts(
        journaled=len(entries),
        restored=restored,
        conflicts=len(restorable) - restored,
        not_envelope=len(entries) - len(restorable),
    )


def _refuse_retired(
    store: FieldStore, old: Sequence[object], describe: Callable[[], KeyInfo] | None
) -> None:
    kms_v1 = [envelope for envelope in old if isinstance(envelope, KmsV1Envelope)]
    if not kms_v1:
        return
    if describe is None:
        raise RefusedError(
            f"{store.target}: the journal holds kms_v1 values and no KMS is configured to tell "
            "whether their key versions are still usable (HMD_KMS_PROVIDER); nothing restored"
        )
    _refuse_below_minimum(store, kms_v1, describe())


def _refuse_below_minimum(store: FieldStore, kms_v1: list[KmsV1Envelope], info: KeyInfo) -> None:
    minimum = info.min_decryption_version
    retired = [envelope for envelope in kms_v1 if _retired_under(envelope, info)]
    if retired:
        lowest = min(envelope.key_version for envelope in retired)
        raise RefusedError(
            f"{store.target}: {len(retired)} journaled values need key versions below "
            f"{minimum}, retired in the KMS; restoring them would make them unreadable, so "
            "nothing was restored. The current values are readable. To roll back anyway, make "
            f"version {lowest} usable again first where the KMS still has it (Vault: set the "
            f"key's min_decryption_version to {lowest}), then roll back and re-wrap"
        )


def _retired_under(envelope: KmsV1Envelope, info: KeyInfo) -> bool:
    """Whether ``envelope`` was wrapped by this key under a version it no longer decrypts."""
    ours = (envelope.provider, envelope.key_identifier) == (
        info.provider.value,
        info.key_identifier,
    )
    return ours and envelope.key_version < info.min_decryption_version


def purge(
    stores: Sequence[FieldStore],
    audit: AuditSink,
    actor: str,
    *,
    older_than_days: int | None,
    run_id: str | None,
    now: datetime | None = None,
) -> PurgeResult:
    """Delete journal rows older than ``older_than_days`` (and/or of one run).

    Raises:
        AuditWriteError: an intent could not be recorded (that target is not touched).
        StoreError: the database failed.
    """
    cutoff = None
    if older_than_days is not None:
        moment = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
        cutoff = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    result = PurgeResult(run_id)
    for store in stores:
        details: dict[str, Any] = {"older_than": cutoff}
        event = _event(EventType.JOURNAL_PURGE, actor, run_id or "", str(store.target), details)
        with audited(audit, event) as attempt:
            store.ensure_journal()
            deleted = store.purge_journal(older_than=cutoff, run_id=run_id)
            result.deleted[str(store.target)] = deleted
            attempt.details["deleted"] = deleted
    return result


def _event(
    kind: EventType, actor: str, run_id: str, target: str, details: dict[str, Any]
) -> AuditEvent:
    return AuditEvent(
        event_type=kind,
        actor=actor,
        request_id=run_id or "-",
        result=Result.SUCCESS,
        field_identifier=target,
        details=details,
    )


def journaled_below(
    stores: Sequence[FieldStore], provider: str, key_identifier: str, below_version: int
) -> dict[str, dict[str, int]]:
    """Per target and run, how many journaled old values need a key version below N.

    These are what a rollback of that run would put back; once the versions are retired they
    would no longer decrypt. Read-only: a target without a journal table has none.

    Raises:
        StoreError: the database failed.
    """
    found: dict[str, dict[str, int]] = {}
    for store in stores:
        if not store.has_journal():
            continue
        per_run = _runs_needing(store, (provider, key_identifier), below_version)
        if per_run:
            found[str(store.target)] = per_run
    return found


def _runs_needing(store: FieldStore, key: tuple[str, str], below_version: int) -> dict[str, int]:
    """Per run of the store's journal, the old values under a version of ``key`` below N."""
    reader = reader_for(store)
    per_run: dict[str, int] = {}
    for run_id, _, _ in store.runs():
        old = (reader(entry.old_value).envelope for entry in store.journal(run_id))
        needing = sum(_below(envelope, key, below_version) for envelope in old)
        if needing:
            per_run[run_id] = needing
    return per_run


def _below(envelope: object, key: tuple[str, str], below_version: int) -> bool:
    return (
        isinstance(envelope, KmsV1Envelope)
        and (envelope.provider, envelope.key_identifier) == key
        and envelope.key_version < below_version
    )
