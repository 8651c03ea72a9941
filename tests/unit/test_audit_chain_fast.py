"""The fast chain encoder writes exactly the lines the plain definition of the chain gives.

The plain definition (docs/audit.md) is kept here, written out independently: the body is the
event's JSON object plus ``seq`` and ``prev_hash``, ``hash`` is SHA-256 over ``prev_hash``, a
newline and the body's sorted compact UTF-8 JSON, and the line is the body plus ``hash``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from heimdall_kms.audit import AuditEvent, EventType, Result
from heimdall_kms.audit.chain import GENESIS, seal_line, seal_split
from heimdall_kms.envelope import kms_v1_aad


def plain_seal(event: dict[str, Any], seq: int, prev: str) -> tuple[str, str]:
    def dump(doc: dict[str, Any]) -> bytes:
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    body = {**event, "seq": seq, "prev_hash": prev}
    digest = hashlib.sha256(prev.encode("ascii") + b"\n" + dump(body)).hexdigest()
    return dump({**body, "hash": digest}).decode() + "\n", digest


EVENTS = [
    AuditEvent(EventType.ENCRYPT, "etl", "r-1", Result.SUCCESS, timestamp="2026-01-01T00:00:00Z"),
    AuditEvent(
        EventType.DECRYPT,
        "ålice ☃",
        "r-2",
        Result.FAILURE,
        field_identifier="ssn",
        key_identifier="heimdall-pii",
        key_version=3,
        provider="vault",
        encryption_version="kms_v1",
        reason='ticket "42" \\ \u2028',
        source_ip="10.0.0.1",
        error_type="integrity",
        context={"field": "ssn", "record": "r1", "hash": "x", "zz": "\u00e9\x00"},
        details={"hash": {"a": [1, 2]}, "job": "migrate", "n": 1.5, "ok": True, "none": None},
    ),
    AuditEvent(EventType.KEY_ROTATE, "ops", "r-3", Result.SUCCESS, details={}, context={}),
]


@pytest.mark.parametrize("event", EVENTS)
def test_split_sealing_equals_the_plain_definition(event: AuditEvent) -> None:
    prev = GENESIS
    for seq in (1, 2, 10_000_000):
        expected = plain_seal(event.to_dict(), seq, prev)
        assert seal_split(*event.chain_halves(seq, prev), prev) == expected
        assert seal_line(event.to_dict(), seq, prev) == expected
        prev = expected[1]


def test_generic_documents_seal_like_the_plain_definition() -> None:
    for document in ({}, {"a": 1}, {"z": 1}, {"hash": "mine", "a": 1}, {"hasi": 1, "has": 2}):
        assert seal_line(document, 5, GENESIS) == plain_seal(document, 5, GENESIS)


def test_a_non_ascii_previous_hash_is_refused_as_before() -> None:
    before, after = EVENTS[0].chain_halves(2, "é" * 64)
    with pytest.raises(UnicodeEncodeError):
        seal_split(before, after, "é" * 64)


def test_aad_equals_sorted_compact_json() -> None:
    for context in ({}, {"field": "ssn", "record": "r1"}, {"é": "\u2028", "a": '"'}):
        plain = {"v": "kms_v1", "alg": "AES-256-GCM", "ctx": dict(context)}
        expected = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode("ascii")
        assert kms_v1_aad(context) == expected
