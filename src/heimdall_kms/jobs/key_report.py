"""What ``heimdall-kms keys`` (and ``GET /admin/crypto/keys``) shows about the master key."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from heimdall_kms.jobs.retire import values_per_version
from heimdall_kms.jobs.rotation import is_due, key_now, next_due
from heimdall_kms.providers import KeyAdmin, KeyVersion
from heimdall_kms.store import FieldStore

__all__ = ["key_report"]


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
    counts, totals = _stored_values(kms, stores)
    return {
        "provider": info.provider.value,
        "key_identifier": info.key_identifier,
        "latest_version": info.latest_version,
        "min_decryption_version": info.min_decryption_version,
        "rotation_days": cadence.days,
        "next_due": due.isoformat() if due else None,
        "due": is_due(info, now=moment, cadence=cadence),
        "clock": clock.value,
        "versions": [_version_row(v, moment, totals) for v in info.versions],
        "values_by_target": _by_target(counts),
    }


def _stored_values(
    kms: KeyAdmin, stores: Sequence[FieldStore]
) -> tuple[dict[str, Counter[int]], Counter[int] | None]:
    """Values per version, per target and over all targets; none counted without targets."""
    if not stores:
        return {}, None
    counts = values_per_version(kms, stores)
    totals: Counter[int] = Counter()
    for per_target in counts.values():
        totals.update(per_target)
    return counts, totals


def _by_target(counts: dict[str, Counter[int]]) -> dict[str, dict[str, int]]:
    return {t: {str(v): n for v, n in sorted(c.items())} for t, c in counts.items()}


def _version_row(
    version: KeyVersion, moment: datetime, totals: Counter[int] | None
) -> dict[str, Any]:
    """One version in the key report; ``totals``: stored values per version, if counted."""
    created = version.created_at
    row: dict[str, Any] = {
        "version": version.version,
        "created_at": created.isoformat() if created else None,
        "age_days": (moment - created).days if created else None,
    }
    if totals is not None:
        row["values"] = totals.get(version.version, 0)
    return row
