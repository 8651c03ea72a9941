"""The short paths for sealed and opened values make the same events as the general one."""

from __future__ import annotations

from heimdall_kms.audit import EventType
from heimdall_kms.crypto_events import event_for, opened_events, sealed_events
from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope
from heimdall_kms.errors import IntegrityError
from heimdall_kms.opening import Opened

AT = "2026-11-28T10:00:00.000000Z"


def kms_envelope(context: dict[str, str], version: int = 3) -> KmsV1Envelope:
    return KmsV1Envelope(
        provider="vault",
        key_identifier="heimdall-pii",
        key_version=version,
        ciphertext=b"c" * 20,
        nonce=b"n" * 12,
        encrypted_dek="vault:v3:abc",
        context=context,
        encryption_timestamp=AT,
    )


CONTEXTS = [{"field": "ssn", "record": "r1"}, {"record": "r2"}, {}]


def test_sealed_events_equal_the_general_events() -> None:
    envelopes = [kms_envelope(ctx, version=2 + i) for i, ctx in enumerate(CONTEXTS)]
    legacy = LegacyEnvelope(ciphertext=b"c" * 20, nonce=b"n" * 12, key_id="k1")
    fast = sealed_events(
        [*envelopes, legacy],
        [*CONTEXTS, {"field": "email"}],
        None,
        actor="etl",
        request_id="r-1",
        at=AT,
    )
    general = [
        event_for(EventType.ENCRYPT, "etl", "r-1", env, ctx, at=AT)
        for env, ctx in zip([*envelopes, legacy], [*CONTEXTS, {"field": "email"}], strict=True)
    ]
    assert [e.to_dict() for e in fast] == [e.to_dict() for e in general]


def test_opened_events_equal_the_general_events() -> None:
    items = [Opened("plain", kms_envelope(ctx), ctx) for ctx in CONTEXTS]
    items.append(Opened(IntegrityError("x"), kms_envelope(CONTEXTS[0]), CONTEXTS[0]))
    items.append(Opened(IntegrityError("x"), None, {"field": "ssn"}))
    writer = ("heimdall-pii", "vault")
    fast = opened_events(
        items, actor="alice", request_id="r-2", reason="ticket", at=AT, writer=writer
    )
    general = [
        event_for(
            EventType.DECRYPT,
            "alice",
            "r-2",
            item.envelope,
            item.context,
            at=AT,
            writer=writer,
            reason="ticket",
            error=item.outcome if isinstance(item.outcome, IntegrityError) else None,
        )
        for item in items
    ]
    assert [e.to_dict() for e in fast] == [e.to_dict() for e in general]
