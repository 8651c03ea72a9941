"""The fast line encoder writes exactly the lines the plain definition of the chain gives.

The plain definition (docs/audit.md) is written out here independently: the body is the
event's JSON object plus ``seq`` and ``prev_hash``, ``hash`` is SHA-256 over ``prev_hash``, a
newline and the body's sorted compact UTF-8 JSON, and the line is the body plus ``hash``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heimdall_kms.audit import AuditEvent, EventType, Result
from heimdall_kms.audit.chain import GENESIS, seal_line
from heimdall_kms.audit.lines import chain_events
from heimdall_kms.context_json import CheckedContext, aad_json
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
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        correlation_id="checkout-42",
        context={"field": "ssn", "record": "r1", "hash": "x", "zz": "\u00e9\x00"},
        details={"hash": {"a": [1, 2]}, "job": "migrate", "n": 1.5, "ok": True, "none": None},
    ),
    AuditEvent(EventType.KEY_ROTATE, "ops", "r-3", Result.SUCCESS, details={}, context={}),
    AuditEvent(
        EventType.ACCESS_DENIED, "anonymous", "caller-1", Result.FAILURE, trace_id="ab" * 16
    ),
]


def plain_chain(events: list[AuditEvent], seq: int, prev: str) -> tuple[str, int, str]:
    lines = []
    for event in events:
        seq += 1
        line, prev = plain_seal(event.to_dict(), seq, prev)
        lines.append(line)
    return "".join(lines), seq, prev


@pytest.mark.parametrize("event", EVENTS)
def test_lines_equal_the_plain_definition(event: AuditEvent) -> None:
    prev = GENESIS
    for seq in (1, 2, 10_000_000):
        expected = plain_seal(event.to_dict(), seq, prev)
        assert chain_events([event], seq - 1, prev) == (expected[0], seq, expected[1])
        assert seal_line(event.to_dict(), seq, prev) == expected
        prev = expected[1]


def test_a_batch_sharing_members_equals_the_plain_definition() -> None:
    # The encoder reuses shared members across events: vary each one between neighbours.
    events = [*EVENTS, *EVENTS, EVENTS[1], EVENTS[1], EVENTS[0]]
    assert chain_events(events, 41, GENESIS) == plain_chain(events, 41, GENESIS)


_text = st.text(max_size=12)
_optional_text = st.none() | st.sampled_from(["ssn", "vault", "x"]) | _text


@st.composite
def audit_events(draw: st.DrawFn) -> AuditEvent:
    context: dict[str, str] | None = draw(st.none() | st.dictionaries(_text, _text, max_size=4))
    if context is not None and draw(st.booleans()):
        # A checked context, as the facade's events hold: the line reuses its AAD encoding
        # (made here already, or not yet).
        context = CheckedContext(context)
        if draw(st.booleans()):
            aad_json(context)
    return AuditEvent(
        event_type=draw(st.sampled_from(list(EventType))),
        actor=draw(st.sampled_from(["etl", "ålice"]) | _text),
        request_id=draw(st.sampled_from(["r-1", "r-2"])),
        result=draw(st.sampled_from(list(Result))),
        timestamp=draw(st.sampled_from(["2026-01-01T00:00:00.000000Z", "t"])),
        field_identifier=draw(_optional_text),
        key_identifier=draw(_optional_text),
        key_version=draw(st.none() | st.integers(min_value=-(2**40), max_value=2**40)),
        provider=draw(_optional_text),
        encryption_version=draw(st.none() | st.sampled_from(["kms_v1", "legacy"])),
        reason=draw(_optional_text),
        source_ip=draw(_optional_text),
        error_type=draw(_optional_text),
        trace_id=draw(st.none() | st.sampled_from(["4bf92f3577b34da6a3ce929d0e0e4736", "t"])),
        correlation_id=draw(st.none() | st.sampled_from(["checkout-42", "r-1"]) | _text),
        context=context,
        details=draw(st.none() | st.dictionaries(_text, st.integers() | _text, max_size=3)),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(audit_events(), max_size=8), st.integers(min_value=0, max_value=10**9))
def test_generated_batches_equal_the_plain_definition(events: list[AuditEvent], seq: int) -> None:
    assert chain_events(events, seq, GENESIS) == plain_chain(events, seq, GENESIS)


def test_generic_documents_seal_like_the_plain_definition() -> None:
    for document in ({}, {"a": 1}, {"z": 1}, {"hash": "mine", "a": 1}, {"hasi": 1, "has": 2}):
        assert seal_line(document, 5, GENESIS) == plain_seal(document, 5, GENESIS)


def test_a_non_ascii_previous_hash_is_refused_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        chain_events(EVENTS[:1], 2, "é" * 64)


def test_aad_equals_sorted_compact_json() -> None:
    for context in ({}, {"field": "ssn", "record": "r1"}, {"é": "\u2028", "a": '"'}):
        plain = {"v": "kms_v1", "alg": "AES-256-GCM", "ctx": dict(context)}
        expected = json.dumps(plain, sort_keys=True, separators=(",", ":")).encode("ascii")
        assert kms_v1_aad(context) == expected
