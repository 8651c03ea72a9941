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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from heimdall_kms.envelope import KmsV1Envelope, parse, parse_strict
from heimdall_kms.errors import HeimdallKMSError, MalformedEnvelopeError
from heimdall_kms.policy.rules import Action, Policy
from heimdall_kms.policy.walk import Leaf, leaves, put
from heimdall_kms.service import Crypto
from heimdall_kms.wrapped_key import is_hmac_tag

__all__ = ["REDACTED", "PolicyEngine", "Violation", "validate_no_plaintext"]

REDACTED = "[REDACTED]"
_JSON = "json"  # context "encoding" of a value that was not a string


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
        to_encrypt: list[tuple[int, Leaf, str, dict[str, str]]] = []
        to_hmac: list[tuple[int, Leaf, str]] = []
        for index, record in enumerate(output):
            for leaf in list(leaves(record, self.policy)):
                action = leaf.action
                if action is Action.PASSTHROUGH:
                    continue
                if action is Action.SCRUB:
                    put(record, leaf.location, REDACTED)
                    continue
                text = leaf.value if isinstance(leaf.value, str) else json.dumps(leaf.value)
                if action is Action.HASH:
                    # Byte for byte the engine's value for every input: it hashes a value
                    # that already looks like a sha256: hash again, and so does this.
                    put(record, leaf.location, _sha256(text))
                elif action is Action.HMAC and not _is_hmac(leaf.value):
                    to_hmac.append((index, leaf, text))
                elif action is Action.ENCRYPT and not _is_envelope(leaf.value):
                    to_encrypt.append((index, leaf, text, self._context(record, leaf)))
        if to_encrypt:
            sealed = self.crypto.encrypt_many(
                [(text, ctx) for _, _, text, ctx in to_encrypt], actor=self.actor
            )
            for (index, leaf, _, _), envelope in zip(to_encrypt, sealed, strict=True):
                put(output[index], leaf.location, envelope.to_json())
        if to_hmac:
            tags = self.crypto.hmac_many(
                [text for _, _, text in to_hmac],
                actor=self.actor,
                contexts=[{"field": leaf.path} for _, leaf, _ in to_hmac],
            )
            for (index, leaf, _), tag in zip(to_hmac, tags, strict=True):
                put(output[index], leaf.location, tag)
        return output

    def _context(self, record: Mapping[str, Any], leaf: Leaf) -> dict[str, str]:
        context = {"field": leaf.path}
        record_id = self.policy.record_id
        if record_id is not None and record.get(record_id) is not None:
            context["record"] = str(record[record_id])
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
        found: list[tuple[int, Leaf, dict[str, str]]] = []
        for index, record in enumerate(output):
            assert isinstance(record, dict)
            for leaf in leaves(record, self.policy):
                if leaf.action is Action.ENCRYPT and _is_envelope(leaf.value):
                    stated = {"field": leaf.path}
                    if self.policy.record_id and record.get(self.policy.record_id) is not None:
                        stated["record"] = str(record[self.policy.record_id])
                    found.append((index, leaf, stated))
        if not found:
            return output
        outcomes = self.crypto.decrypt_outcomes(
            [leaf.value for _, leaf, _ in found],
            actor=actor,
            reason=reason,
            contexts=[stated for _, _, stated in found],
        )
        for (index, leaf, _), outcome in zip(found, outcomes, strict=True):
            record = output[index]
            if isinstance(record, HeimdallKMSError):
                continue
            if isinstance(outcome, HeimdallKMSError):
                output[index] = outcome
                continue
            put(record, leaf.location, _decode(leaf.value, outcome))
        return output

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
    value, action = leaf.value, leaf.action
    if action is Action.ENCRYPT and not _is_envelope(value):
        return "not encrypted where the policy says encrypt"
    if action is Action.HASH and not (_is_hash(value) or _is_hmac(value)):
        return "not hashed where the policy says hash"
    if action is Action.HMAC and not _is_hmac(value):
        return (
            "an unkeyed sha256: hash where the policy says hmac"
            if _is_hash(value)
            else "not hashed where the policy says hmac"
        )
    if action is Action.SCRUB and value != REDACTED:
        return "not scrubbed where the policy says scrub"
    return None


def _sha256(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_hash(value: Any) -> bool:
    return (
        isinstance(value, str)
        and value.startswith("sha256:")
        and len(value) == 71
        and all(c in "0123456789abcdef" for c in value[7:])
    )


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
