"""The census behind ``heimdall-kms status``: what every stored value of a target is.

This is the evidence a security lead needs before ``HMD_ENCRYPTION_MODE=kms``: zero legacy
values, zero unparseable ones, and which KMS key versions still protect how many values.
Counting needs no key and makes no KMS call; :func:`count_unreadable` then sets against what
the KMS says can still decrypt (one ``describe``) the values that need a version it no
longer has — retired, disabled or destroyed — and those sealed by a key this deployment does
not use (another provider, another key name): no reader of this deployment can open either.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope
from heimdall_kms.jobs.classify import NOT_ENVELOPE, Classified, ValueKind
from heimdall_kms.jobs.reading import reader_for
from heimdall_kms.providers.base import KeyInfo
from heimdall_kms.store import FieldStore, Match

__all__ = ["Census", "count_unreadable", "take_census"]

_MAX_LISTED_IDS = 100


@dataclass
class Census:
    target: str
    kinds: Counter[ValueKind] = field(default_factory=Counter)
    key_versions: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    legacy_key_ids: Counter[str] = field(default_factory=Counter)
    unparseable_ids: list[str] = field(default_factory=list)
    # Rows holding an envelope-shaped value where the census was not told to look.
    nested: int = 0
    nested_ids: list[str] = field(default_factory=list)
    json_path: str | None = None
    # Values of the configured key under a version the KMS can no longer decrypt with; None
    # where that was not checked (no KMS configured).
    unreadable: int | None = None
    # kms_v1 values sealed by another key than the configured one (this deployment refuses to
    # open them); None where that was not checked.
    other_keys: int | None = None

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    @property
    def legacy(self) -> int:
        return self.kinds[ValueKind.LEGACY]

    @property
    def plaintext(self) -> int:
        return self.kinds[ValueKind.PLAINTEXT]

    def remaining(self, *, allow_plaintext: bool) -> dict[str, int]:
        """What the cut-over gate refuses, by kind (only kinds with a count)."""
        blocking = {
            "legacy": self.legacy,
            "unparseable": self.kinds[ValueKind.UNPARSEABLE],
            "nested_envelope": self.nested,
            "plaintext": 0 if allow_plaintext else self.plaintext,
            "needing_a_retired_key_version": self.unreadable or 0,
            "sealed_by_another_key": self.other_keys or 0,
        }
        return {kind: n for kind, n in blocking.items() if n}

    def count(self, key: str, found: Classified) -> None:
        """Count one value; ``key`` is its row's id, listed if the value is one to look at."""
        self.kinds[found.kind] += 1
        if found.nested:
            self.nested += 1
            _list_id(self.nested_ids, key)
        if isinstance(found.envelope, KmsV1Envelope):
            env = found.envelope
            self.key_versions[(env.provider, env.key_identifier, env.key_version)] += 1
        elif isinstance(found.envelope, LegacyEnvelope):
            self.legacy_key_ids[found.envelope.key_id] += 1
        elif found.kind is ValueKind.UNPARSEABLE:
            _list_id(self.unparseable_ids, key)

    def versions_of(self, provider: str, key_identifier: str) -> Counter[int]:
        """How many values each version of one key protects."""
        return Counter(
            {
                version: n
                for (named_provider, named, version), n in self.key_versions.items()
                if named_provider == provider and named == key_identifier
            }
        )

    @classmethod
    def combined(cls, target: str, censuses: Iterable[Census]) -> Census:
        """One census adding up ``censuses`` (the ids listed up to the same limit)."""
        overall = cls(target)
        for census in censuses:
            overall.add(census)
        return overall

    def add(self, other: Census) -> None:
        self.kinds.update(other.kinds)
        self.key_versions.update(other.key_versions)
        self.legacy_key_ids.update(other.legacy_key_ids)
        _extend_listed(self.unparseable_ids, other.unparseable_ids)
        self.nested += other.nested
        if other.unreadable is not None:
            self.unreadable = (self.unreadable or 0) + other.unreadable
        if other.other_keys is not None:
            self.other_keys = (self.other_keys or 0) + other.other_keys
        _extend_listed(self.nested_ids, other.nested_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total": self.total,
            "encryption_version": {
                "kms_v1": self.kinds[ValueKind.KMS_V1],
                "legacy": self.kinds[ValueKind.LEGACY],
            },
            "key_version": self._per_version(),
            "keys": [
                {"provider": p, "key_identifier": k, "key_version": v, "count": n}
                for (p, k, v), n in sorted(self.key_versions.items())
            ],
            "legacy_key_id": dict(sorted(self.legacy_key_ids.items())),
            "not_envelope": {kind.value: self.kinds[kind] for kind in NOT_ENVELOPE},
            "skipped": sum(self.kinds[kind] for kind in NOT_ENVELOPE),
            "unparseable": self.kinds[ValueKind.UNPARSEABLE],
            "unparseable_ids": list(self.unparseable_ids),
            "plaintext": self.plaintext,
            "nested_envelope": self.nested,
            "nested_envelope_ids": list(self.nested_ids),
            "json_path": self.json_path,
            "needing_retired_key_version": self.unreadable,
            "sealed_by_another_key": self.other_keys,
        }

    def _per_version(self) -> dict[str, int]:
        """Values per key version, whatever the key (as JSON keys, in version order)."""
        versions: Counter[int] = Counter()
        for (_, _, version), count in self.key_versions.items():
            versions[version] += count
        return {str(v): n for v, n in sorted(versions.items())}


def _list_id(ids: list[str], key: str) -> None:
    if len(ids) < _MAX_LISTED_IDS:
        ids.append(key)


def _extend_listed(ids: list[str], more: list[str]) -> None:
    """Append ``more`` to ``ids`` as far as the listing limit allows."""
    room = _MAX_LISTED_IDS - len(ids)
    ids.extend(more[: max(room, 0)])


def take_census(store: FieldStore, *, batch_size: int = 5000) -> Census:
    """Classify every value of the store's target (read-only, keyset batches).

    Raises:
        StoreError: the database failed.
    """
    census = Census(str(store.target), json_path=store.target.json_path)
    classify = reader_for(store)
    for rows in store.scan(batch_size, Match.ALL):
        for row in rows:
            census.count(row.key, classify(row.value))
    return census


def count_unreadable(census: Census, key: KeyInfo, identifier: str) -> None:
    """Set ``census.unreadable``: its values of the key envelopes name ``identifier`` (the
    provider's ``key_identifier``) under a version not among those the KMS says can still
    decrypt (``key.versions``); and ``census.other_keys``: its values of any other key."""
    readable = {version.version for version in key.versions}
    per_version = census.versions_of(key.provider, identifier)
    census.unreadable = sum(n for version, n in per_version.items() if version not in readable)
    census.other_keys = census.kinds[ValueKind.KMS_V1] - sum(per_version.values())
