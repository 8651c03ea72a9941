"""The per-item audit stamping of coalesced batches (heimdall_kms.coalescing)."""

from __future__ import annotations

import pytest

from heimdall_kms.audit import AuditEvent, EventType, MemoryAuditSink, Result
from heimdall_kms.coalescing import LaneLimits, Origin, StampingSink
from heimdall_kms.errors import AuditWriteError, ConfigurationError


def event(actor: str = "batch") -> AuditEvent:
    return AuditEvent(EventType.ENCRYPT, actor, "batch-id", Result.SUCCESS)


class TestStampingSink:
    def test_each_event_gets_its_own_origin(self) -> None:
        inner = MemoryAuditSink()
        origins = [Origin("alice", None, "r1", source_ip="10.0.0.1"), Origin("bob", "why", "r2")]
        StampingSink(inner, origins).emit([event(), event()])
        assert [(e.actor, e.reason, e.request_id, e.source_ip) for e in inner.events] == [
            ("alice", None, "r1", "10.0.0.1"),
            ("bob", "why", "r2", None),
        ]

    def test_a_count_mismatch_is_refused_and_nothing_written(self) -> None:
        inner = MemoryAuditSink()
        with pytest.raises(AuditWriteError):
            StampingSink(inner, [Origin("alice", None, "r1")]).emit([event(), event()])
        assert inner.events == []


class TestLaneLimits:
    @pytest.mark.parametrize(
        "knobs", [{"window_seconds": -1}, {"window_seconds": 2}, {"max_batch": 0}, {"in_flight": 0}]
    )
    def test_out_of_range_is_refused(self, knobs: dict[str, float]) -> None:
        with pytest.raises(ConfigurationError):
            LaneLimits(**knobs)  # type: ignore[arg-type]
