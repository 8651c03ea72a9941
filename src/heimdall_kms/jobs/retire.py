"""Guarded retirement of old key versions (``heimdall-kms retire``).

A version is retired (the KMS's minimum decryption version raised) only when the census of the
named targets finds no stored value that still needs it, unless forced; the outcome is
reported once a canary wrapped under each retired version is refused
(:mod:`heimdall_kms.jobs.propagation`). The attempt and its outcome are one audited
``key.retire`` (:func:`heimdall_kms.audit.audited`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from heimdall_kms.audit import AuditSink, EventType, audited
from heimdall_kms.errors import RefusedError
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.journal import journaled_below
from heimdall_kms.jobs.propagation import (
    Effect,
    Propagation,
    confirm_refused,
    retire_canaries,
)
from heimdall_kms.jobs.rotation import key_event
from heimdall_kms.providers import KeyAdmin, KeyInfo, KeyManagementService
from heimdall_kms.store import FieldStore

__all__ = [
    "DAMAGED_VERSION",
    "UNSEEN_VERSION",
    "RetireBlock",
    "RetireRefusedError",
    "RetireResult",
    "retire",
    "values_per_version",
]


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
        counts[census.target] = census.versions_of(kms.name.value, kms.key_identifier)
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


def _where(stranded: dict[str, dict[int, int]]) -> str:
    """``target: v1 12, v2 3; other: ...``, the stranded values as a refusal names them."""
    return "; ".join(
        f"{t}: " + ", ".join(_version_count(v, n) for v, n in c.items())
        for t, c in stranded.items()
    )


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
    intent = key_event(
        EventType.KEY_RETIRE,
        kms,
        actor,
        version=below_version,
        reason=reason,
        details={"below_version": below_version, "forced": force},
    )
    # Intent first: nothing is counted or retired while the audit log cannot be written.
    with audited(audit, intent) as attempt:
        result = RetireResult(below_version, force, _stranded(kms, stores, below_version))
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


def _stranded(
    kms: KeyAdmin, stores: Sequence[FieldStore], below_version: int
) -> dict[str, dict[int, int]]:
    """Per target with any, how many values need each version below N."""
    per_version = values_per_version(kms, stores)
    per_target = {target: _below(counts, below_version) for target, counts in per_version.items()}
    return {t: c for t, c in per_target.items() if c}


def _below(counts: Counter[int], below_version: int) -> dict[int, int]:
    return {v: n for v, n in sorted(counts.items()) if v < below_version}


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
    where = _where(result.stranded)
    unseen = any(UNSEEN_VERSION in c for c in result.stranded.values())
    raise RetireRefusedError(
        f"refusing to retire: {result.stranded_total:,} stored values still need a version "
        f"below {result.below_version} ({where}); re-encrypt them to the latest version first",
        RetireBlock.STRANDED,
        unseen=unseen,
    )
