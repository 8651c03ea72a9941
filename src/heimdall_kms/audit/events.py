"""Audit events (SPEC §8): who did what to which field, with which key, and how it ended.

An event never carries plaintext, key material, or a hash of a value. ``context`` is the
non-secret encryption context (table, field, record id) the value is bound to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = ["AuditEvent", "EventType", "Result"]


class EventType(StrEnum):
    ENCRYPT = "crypto.encrypt"
    DECRYPT = "crypto.decrypt"
    HMAC = "crypto.hmac"
    KEY_CREATE = "key.create"
    KEY_ROTATE = "key.rotate"
    KEY_RETIRE = "key.retire"
    REENCRYPT_BATCH = "reencrypt.batch"
    REENCRYPT_ROLLBACK = "reencrypt.rollback"
    JOURNAL_PURGE = "journal.purge"
    ACCESS_DENIED = "access.denied"


class Result(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event_type: EventType
    actor: str
    request_id: str
    result: Result
    timestamp: str = field(default_factory=now_rfc3339)
    field_identifier: str | None = None
    key_identifier: str | None = None
    key_version: int | None = None
    provider: str | None = None
    encryption_version: str | None = None
    reason: str | None = None
    source_ip: str | None = None
    error_type: str | None = None
    context: Mapping[str, str] | None = None
    details: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a JSON object; absent optional fields are left out."""
        document: dict[str, Any] = {
            "timestamp": self.timestamp,
            "event_type": self.event_type.value,
            "actor": self.actor,
            "request_id": self.request_id,
            "result": self.result.value,
        }
        optional = {
            "field_identifier": self.field_identifier,
            "key_identifier": self.key_identifier,
            "key_version": self.key_version,
            "provider": self.provider,
            "encryption_version": self.encryption_version,
            "reason": self.reason,
            "source_ip": self.source_ip,
            "error_type": self.error_type,
            "context": dict(self.context) if self.context is not None else None,
            "details": dict(self.details) if self.details is not None else None,
        }
        document.update({key: value for key, value in optional.items() if value is not None})
        return document

    def chain_halves(self, seq: int, prev_hash: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """:meth:`to_dict` plus ``seq`` and ``prev_hash``, split around where ``hash`` sorts.

        The two halves are what :func:`heimdall_kms.audit.chain.seal_split` takes; built
        directly, without the intermediate document, because the audit log writes one per
        value. ``tests/unit/test_audit_chain_fast.py`` checks the result against the plain
        ``seal_line(to_dict())``.
        """
        before: dict[str, Any] = {
            "actor": self.actor,
            "event_type": self.event_type.value,
        }
        if self.context is not None:
            before["context"] = dict(self.context)
        if self.details is not None:
            before["details"] = dict(self.details)
        if self.encryption_version is not None:
            before["encryption_version"] = self.encryption_version
        if self.error_type is not None:
            before["error_type"] = self.error_type
        if self.field_identifier is not None:
            before["field_identifier"] = self.field_identifier
        after: dict[str, Any] = {
            "prev_hash": prev_hash,
            "request_id": self.request_id,
            "result": self.result.value,
            "seq": seq,
            "timestamp": self.timestamp,
        }
        for key, value in (
            ("key_identifier", self.key_identifier),
            ("key_version", self.key_version),
            ("provider", self.provider),
            ("reason", self.reason),
            ("source_ip", self.source_ip),
        ):
            if value is not None:
                after[key] = value
        return before, after
