"""Protect and reveal records by policy, in batches that share KMS calls.

A batch of records costs one ``encrypt_many`` and one ``hmac_many`` call (reveal: one
``decrypt_many``), however many fields and records it holds. Protection is idempotent for
``encrypt``, ``hmac`` and ``scrub``: a value already in the protected form of its action is left
as it is. ``hash`` is not, on purpose: it gives the legacy engine's value for every input, and
the engine hashes a value that already looks like ``sha256:<hex>`` again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from heimdall_kms.envelope import KmsV1Envelope, parse, parse_strict
from heimdall_kms.errors import HeimdallKMSError, MalformedEnvelopeError
from heimdall_kms.policy.rules import Action, Policy
from heimdall_kms.policy.walk import Leaf, leaves, put
from heimdall_kms.service import Crypto
from heimdall_kms.wrapped_key import is_hmac_tag

__all__ = ["REDACTED", "PolicyEngine", "Violation", "validate_no_plaintext"]

REDACTED = "[REDACTED]"
_JSON = "json"  # context "encoding" of a value that was not a string
_NO_CONTEXT: Mapping[str, str] = MappingProxyType({})
_HASH = re.compile(r"sha256:[0-9a-f]{64}")  # the legacy engine's unkeyed hash


class _Item(NamedTuple):
    """A value waiting for the batch's KMS call, and where its protected form goes."""

    record: dict[str, Any]  # the output record the value is put back into
    leaf: Leaf
    text: str
    context: Mapping[str, str] = _NO_CONTEXT  # encrypt only

    def __repr__(self) -> str:  # the record and text are plaintext PII: never in a repr
        return f"_Item(path={self.leaf.path!r}, action={self.leaf.action.value!r})"


class _Sealed(NamedTuple):
    """An encrypted value of a batch being revealed."""

    position: int  # of its record in the batch
    leaf: Leaf
    stated: dict[str, str]  # the context the reveal states for it


@dataclass(slots=True)
class _Deferred:
    """The values of a batch whose protected form needs a KMS call (one call per action)."""

    encrypt: list[_Item] = field(default_factory=list)
    hmac: list[_Item] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Violation:
    record: int  # 0-based position in the input
    field: str
    reason: str


class PolicyEngine:
    def __init__(self, crypto: Crypto, policy: Policy, *, actor: str = "policy") -> None:
        self.crypto = crypto
        self.policy = policy
        self.actor = actor

    # -- protect --------------------------------------------------------------------------------

    def protect(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return self.protect_many([record])[0]

    def protect_many(self, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Apply the policy to every record; one encrypt and one hmac call for the batch.

        Raises:
            HeimdallKMSError: the KMS or the audit log failed (nothing is returned).
        """
        output = [copy.deepcopy(dict(record)) for record in records]
        deferred = _Deferred()
        for record in output:
            for leaf in list(leaves(record, self.policy)):
                self._protect_leaf(record, leaf, deferred)
        self._seal(deferred.encrypt)
        self._tag(deferred.hmac)
        return output

    def _protect_leaf(self, record: dict[str, Any], leaf: Leaf, deferred: _Deferred) -> None:
        """Put the protected form of one value in place, or defer it to the batch's KMS call."""
        protect = _PROTECT.get(leaf.action)
        if protect is not None:
            protect(self, record, leaf, deferred)

    def _scrub(self, record: dict[str, Any], leaf: Leaf, deferred: _Deferred) -> None:
        put(record, leaf.location, REDACTED)

    def _hash(self, record: dict[str, Any], leaf: Leaf, deferred: _Deferred) -> None:
        # Byte for byte the engine's value for every input: it hashes a value
        # that already looks like a sha256: hash again, and so does this.
        put(record, leaf.location, _sha256(_text(leaf)))

    def _defer_hmac(self, record: dict[str, Any], leaf: Leaf, deferred: _Deferred) -> None:
        if not _is_hmac(leaf.value):
            deferred.hmac.append(_Item(record, leaf, _text(leaf)))

    def _defer_encrypt(self, record: dict[str, Any], leaf: Leaf, deferred: _Deferred) -> None:
        if not _is_envelope(leaf.value):
            deferred.encrypt.append(_Item(record, leaf, _text(leaf), self._context(record, leaf)))

    def _seal(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        sealed = self.crypto.encrypt_many(
            [(item.text, item.context) for item in items], actor=self.actor
        )
        for item, envelope in zip(items, sealed, strict=True):
            put(item.record, item.leaf.location, envelope.to_json())

    def _tag(self, items: Sequence[_Item]) -> None:
        if not items:
            return
        tags = self.crypto.hmac_many(
            [item.text for item in items],
            actor=self.actor,
            contexts=[{"field": item.leaf.path} for item in items],
        )
        for item, tag in zip(items, tags, strict=True):
            put(item.record, item.leaf.location, tag)

    def _context(self, record: Mapping[str, Any], leaf: Leaf) -> dict[str, str]:
        """The context an encrypted value is bound to: what a reveal states, and how the
        value was encoded to text if it was not a string."""
        context = self._stated(record, leaf)
        if not isinstance(leaf.value, str):
            context["encoding"] = _JSON
        return context

    # -- reveal ---------------------------------------------------------------------------------

    def reveal(self, record: Mapping[str, Any], *, actor: str, reason: str) -> dict[str, Any]:
        result = self.reveal_outcomes([record], actor=actor, reason=reason)[0]
        if isinstance(result, HeimdallKMSError):
            raise result
        return result

    def reveal_outcomes(
        self, records: Sequence[Mapping[str, Any]], *, actor: str, reason: str
    ) -> list[dict[str, Any] | HeimdallKMSError]:
        """Decrypt every encrypted field (audited per field); one decrypt call per batch.

        A record with a field that cannot be decrypted comes back as that error.
        """
        output: list[dict[str, Any] | HeimdallKMSError] = [copy.deepcopy(dict(r)) for r in records]
        found = self._sealed(records)
        outcomes = self._open(found, actor=actor, reason=reason)
        for (index, leaf, _), outcome in zip(found, outcomes, strict=True):
            output[index] = _revealed(output[index], leaf, outcome)
        return output

    def _sealed(self, records: Sequence[Mapping[str, Any]]) -> list[_Sealed]:
        """Every encrypted value of the batch, with its record's position and stated context."""
        return [
            _Sealed(index, leaf, self._stated(record, leaf))
            for index, record in enumerate(records)
            for leaf in self._encrypted(record)
        ]

    def _open(
        self, found: Sequence[_Sealed], *, actor: str, reason: str
    ) -> Sequence[str | HeimdallKMSError]:
        """One decrypt call for every value found (none when there is none)."""
        if not found:
            return []
        return self.crypto.decrypt_outcomes(
            [sealed.leaf.value for sealed in found],
            actor=actor,
            reason=reason,
            contexts=[sealed.stated for sealed in found],
        )

    def _encrypted(self, record: Mapping[str, Any]) -> Iterator[Leaf]:
        """The values of a record the policy encrypts that hold an envelope."""
        for leaf in leaves(record, self.policy):
            if leaf.action is Action.ENCRYPT and _is_envelope(leaf.value):
                yield leaf

    def _stated(self, record: Mapping[str, Any], leaf: Leaf) -> dict[str, str]:
        """The context a reveal states for an encrypted value: its field, and its record."""
        stated = {"field": leaf.path}
        record_id = self.policy.record_id
        if record_id is not None and record.get(record_id) is not None:
            stated["record"] = str(record[record_id])
        return stated

    def iter_protect(
        self, records: Iterable[Mapping[str, Any]], batch_size: int = 500
    ) -> Iterable[dict[str, Any]]:
        batch: list[Mapping[str, Any]] = []
        for record in records:
            batch.append(record)
            if len(batch) >= batch_size:
                yield from self.protect_many(batch)
                batch = []
        if batch:
            yield from self.protect_many(batch)


def validate_no_plaintext(records: Iterable[Mapping[str, Any]], policy: Policy) -> list[Violation]:
    """Which fields of which records break the policy (values are never reported)."""
    violations: list[Violation] = []
    for index, record in enumerate(records):
        for leaf in leaves(record, policy):
            reason = _violation(leaf)
            if reason is not None:
                violations.append(Violation(index, leaf.path, reason))
    return violations


def _violation(leaf: Leaf) -> str | None:
    check = _VIOLATIONS.get(leaf.action)
    return None if check is None else check(leaf.value)


def _not_encrypted(value: Any) -> str | None:
    return None if _is_envelope(value) else "not encrypted where the policy says encrypt"


def _not_hashed(value: Any) -> str | None:
    if _is_hash(value) or _is_hmac(value):
        return None
    return "not hashed where the policy says hash"


def _not_keyed_hashed(value: Any) -> str | None:
    if _is_hmac(value):
        return None
    if _is_hash(value):
        return "an unkeyed sha256: hash where the policy says hmac"
    return "not hashed where the policy says hmac"


def _not_scrubbed(value: Any) -> str | None:
    return None if value == REDACTED else "not scrubbed where the policy says scrub"


# How each action protects a value (now, or deferred to the batch's KMS call); passthrough
# leaves it as it is.
_PROTECT: dict[Action, Callable[[PolicyEngine, dict[str, Any], Leaf, _Deferred], None]] = {
    Action.SCRUB: PolicyEngine._scrub,
    Action.HASH: PolicyEngine._hash,
    Action.HMAC: PolicyEngine._defer_hmac,
    Action.ENCRYPT: PolicyEngine._defer_encrypt,
}

# What each action's protected form must look like; passthrough asks nothing.
_VIOLATIONS: dict[Action, Callable[[Any], str | None]] = {
    Action.ENCRYPT: _not_encrypted,
    Action.HASH: _not_hashed,
    Action.HMAC: _not_keyed_hashed,
    Action.SCRUB: _not_scrubbed,
}


def _revealed(
    record: dict[str, Any] | HeimdallKMSError, leaf: Leaf, outcome: str | HeimdallKMSError
) -> dict[str, Any] | HeimdallKMSError:
    """A record after one field's decrypt outcome: the first error stands for the record."""
    if isinstance(record, HeimdallKMSError):
        return record
    if isinstance(outcome, HeimdallKMSError):
        return outcome
    put(record, leaf.location, _decode(leaf.value, outcome))
    return record


def _text(leaf: Leaf) -> str:
    """The value as the text that is protected: a string as it is, anything else as JSON."""
    return leaf.value if isinstance(leaf.value, str) else json.dumps(leaf.value)


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


def _is_hmac(value: Any) -> bool:
    return is_hmac_tag(value)


def _is_envelope(value: Any) -> bool:
    """Protected only if it parses strictly as its format: an unknown field carries data."""
    if not isinstance(value, str) or not value.startswith("{"):
        return False
    try:
        parse_strict(value)
    except MalformedEnvelopeError:
        return False
    return True


def _decode(stored: str, text: str) -> Any:
    envelope = parse(stored)
    if isinstance(envelope, KmsV1Envelope) and envelope.context.get("encoding") == _JSON:
        return json.loads(text)
    return text
