"""How long DEKs live in ``Crypto.encrypt_many`` when KMS calls are batched and overlapped.

The provider here is a test double for the batching logic only (real servers are tested
elsewhere): it keeps the very ``bytearray`` objects it is asked to wrap, "wraps" them by XOR
with a fixed key so that ``decrypt_many`` can reverse it, and checks, during each call, how
many DEKs are alive. ``primitives.new_deks`` is spied on as well, so DEKs that were made but never
sent to the KMS (a failure half-way) are checked too.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Sequence

import pytest

from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink, Result
from heimdall_kms.config import ProviderName, Settings
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import HeimdallKMSError, IntegrityError, KMSError
from heimdall_kms.providers import KeyContext, WrappedKey
from heimdall_kms.providers.base import Batching, BatchingHint, batching_of
from heimdall_kms.service import Crypto
from tests.unit.conftest import KEY_NAME

SIZE = 10
IN_FLIGHT = 2
MAX_ALIVE = (IN_FLIGHT + 1) * SIZE  # the batches in flight plus the one being sealed
VALUES = 95  # nine full batches and a short one
WAIT = 5.0  # seconds: only reached when something is broken

_XOR_KEY = bytes(range(1, primitives.DEK_BYTES + 1))
_PREFIX = "fake:v7:"


def is_wiped(dek: bytearray) -> bool:
    return not any(dek)


class RecordingProvider:
    """Wraps by XOR with a fixed key; records every DEK object and watches how many live."""

    def __init__(self, created: list[bytearray], *, fail_on_call: int | None = None) -> None:
        self.created = created  # every DEK primitives.new_deks made, in order
        self.fail_on_call = fail_on_call
        self.lock = threading.Lock()
        self.batches: list[list[bytearray]] = []  # the lists passed to wrap_many, in call order
        self.batch_sizes: list[int] = []
        self.peak_recorded_alive = 0
        self.peak_created_alive = 0
        self.calls = 0
        self.threads: set[int] = set()

    # -- the parts of KeyManagementService that Crypto uses ------------------------------------

    @property
    def name(self) -> ProviderName:
        return ProviderName.LOCAL

    @property
    def key_identifier(self) -> str:
        return KEY_NAME

    @property
    def batching(self) -> Batching:
        return Batching(size=SIZE, in_flight=IN_FLIGHT)

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        assert len(deks) == len(contexts)
        with self.lock:
            self.calls += 1
            call = self.calls
            self.batches.append(list(deks))  # the same objects, not copies
            self.batch_sizes.append(len(deks))
            self.threads.add(threading.get_ident())
            # Checked while this call runs: never more live DEKs than the batches allowed.
            self.peak_recorded_alive = max(
                self.peak_recorded_alive,
                sum(not is_wiped(d) for batch in self.batches for d in batch),
            )
            self.peak_created_alive = max(
                self.peak_created_alive, sum(not is_wiped(d) for d in list(self.created))
            )
        if call == 1:
            # Hold the first call until the caller has queued as far ahead as it may, so that
            # the limit below is reached deterministically, not only when the timing allows.
            wait_for(lambda: len(self.created) >= min(MAX_ALIVE, VALUES))
            with self.lock:
                self.peak_created_alive = max(
                    self.peak_created_alive, sum(not is_wiped(d) for d in list(self.created))
                )
        if call == self.fail_on_call:
            raise KMSError("the KMS is unavailable (test)")
        return [WrappedKey(_PREFIX + xor_b64(dek), 7) for dek in deks]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        results: list[bytearray | HeimdallKMSError] = []
        for item in wrapped:
            if not item.startswith(_PREFIX):
                results.append(IntegrityError("not a wrapped key of this provider"))
                continue
            raw = base64.b64decode(item[len(_PREFIX) :])
            results.append(bytearray(a ^ b for a, b in zip(raw, _XOR_KEY, strict=True)))
        return results

    def close(self) -> None:
        return None

    # -- for the assertions ---------------------------------------------------------------------

    @property
    def recorded(self) -> list[bytearray]:
        return [dek for batch in self.batches for dek in batch]


def xor_b64(dek: bytearray) -> str:
    return base64.b64encode(bytes(a ^ b for a, b in zip(dek, _XOR_KEY, strict=True))).decode()


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.001)):
        if condition():
            return
        event.wait(0.001)


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    """Every DEK made by ``primitives.new_deks`` during the test (the objects themselves)."""
    made: list[bytearray] = []
    real = primitives.new_deks

    def spy(count: int) -> list[bytearray]:
        deks = real(count)
        made.extend(deks)
        return deks

    monkeypatch.setattr(primitives, "new_deks", spy)
    return made


def build(
    env: dict[str, str], created: list[bytearray], *, fail_on_call: int | None = None
) -> tuple[Crypto, RecordingProvider, MemoryAuditSink]:
    kms = RecordingProvider(created, fail_on_call=fail_on_call)
    sink = MemoryAuditSink()
    return Crypto(Settings.from_env(env), kms=kms, audit=sink), kms, sink  # type: ignore[arg-type]


def items(count: int = VALUES) -> list[tuple[str, dict[str, str]]]:
    return [(f"value-{i:03d}", {"field": "ssn", "record": f"r{i}"}) for i in range(count)]


def test_the_double_is_read_as_a_batching_provider(
    local_env: dict[str, str], created: list[bytearray]
) -> None:
    _, kms, _ = build(local_env, created)
    assert isinstance(kms, BatchingHint)
    assert batching_of(kms) == Batching(size=SIZE, in_flight=IN_FLIGHT)  # type: ignore[arg-type]


def test_encrypt_many_wraps_in_batches_of_the_provider_size(
    local_env: dict[str, str], created: list[bytearray]
) -> None:
    service, kms, _ = build(local_env, created)

    envelopes = service.encrypt_many(items())

    assert len(envelopes) == VALUES
    assert all(size <= SIZE for size in kms.batch_sizes)
    assert sorted(kms.batch_sizes) == [5] + [SIZE] * 9
    # One fresh DEK per value, each sent to the KMS exactly once.
    assert len(created) == VALUES
    assert len({id(dek) for dek in kms.recorded}) == VALUES
    assert {id(dek) for dek in kms.recorded} == {id(dek) for dek in created}


def test_every_dek_is_wiped_when_encrypt_many_returns(
    local_env: dict[str, str], created: list[bytearray]
) -> None:
    service, kms, _ = build(local_env, created)

    service.encrypt_many(items())

    assert len(kms.recorded) == VALUES
    assert all(is_wiped(dek) for dek in kms.recorded)
    assert all(is_wiped(dek) for dek in created)


def test_live_deks_never_exceed_the_batches_in_flight_plus_one(
    local_env: dict[str, str], created: list[bytearray]
) -> None:
    service, kms, _ = build(local_env, created)

    service.encrypt_many(items())

    assert kms.calls == 10
    assert kms.peak_recorded_alive <= MAX_ALIVE
    # Counting the DEKs made but not yet sent as well; the first call is held until the
    # caller has queued as far as it may, so the limit is reached exactly, not merely kept.
    assert kms.peak_created_alive == MAX_ALIVE
    assert threading.get_ident() not in kms.threads  # the calls ran on worker threads


def test_a_kms_failure_on_the_fourth_batch_wipes_every_dek_and_is_audited(
    local_env: dict[str, str], created: list[bytearray]
) -> None:
    service, kms, sink = build(local_env, created, fail_on_call=4)

    with pytest.raises(KMSError, match="unavailable"):
        service.encrypt_many(items())

    assert kms.calls >= 4
    assert kms.peak_recorded_alive <= MAX_ALIVE
    assert all(is_wiped(dek) for dek in kms.recorded)
    assert all(is_wiped(dek) for dek in created)  # including DEKs never sent to the KMS
    assert len(created) < VALUES  # the batches after the failure were never prepared
    # One failure event per value, and no success event.
    assert len(sink.events) == VALUES
    assert all(event.result is Result.FAILURE for event in sink.events)
    assert {event.error_type for event in sink.events} == {"kms"}


@pytest.mark.parametrize("fail_on_call", [1, 2, 9, 10])
def test_a_kms_failure_on_any_batch_leaves_no_dek_behind(
    local_env: dict[str, str], created: list[bytearray], fail_on_call: int
) -> None:
    service, kms, sink = build(local_env, created, fail_on_call=fail_on_call)

    with pytest.raises(KMSError):
        service.encrypt_many(items())

    assert all(is_wiped(dek) for dek in created)
    assert kms.peak_recorded_alive <= MAX_ALIVE
    assert [event.result for event in sink.events] == [Result.FAILURE] * VALUES


def test_the_envelopes_decrypt_again(local_env: dict[str, str], created: list[bytearray]) -> None:
    service, _, sink = build(local_env, created)
    plaintexts = items()

    envelopes = service.encrypt_many(plaintexts)

    sealed = [envelope for envelope in envelopes if isinstance(envelope, KmsV1Envelope)]
    assert len(sealed) == VALUES
    assert [envelope.context for envelope in sealed] == [ctx for _, ctx in plaintexts]
    assert {envelope.encrypted_dek[: len(_PREFIX)] for envelope in sealed} == {_PREFIX}
    opened = service.decrypt_many(
        envelopes, actor="alice", reason="t-1", contexts=[ctx for _, ctx in plaintexts]
    )
    assert opened == [text for text, _ in plaintexts]
    assert [event.result for event in sink.events] == [Result.SUCCESS] * (2 * VALUES)


class FailingUnwrap(RecordingProvider):
    """Unwraps in batches like the double above, keeps every DEK it hands out, and fails the
    ``fail_unwrap_on``-th unwrap call as a whole (the KMS went away mid-read)."""

    def __init__(self, created: list[bytearray], fail_unwrap_on: int) -> None:
        super().__init__(created)
        self.fail_unwrap_on = fail_unwrap_on
        self.unwrap_calls = 0
        self.handed_out: list[bytearray] = []

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        with self.lock:
            self.unwrap_calls += 1
            call = self.unwrap_calls
        if call == self.fail_unwrap_on:
            raise KMSError("the KMS is unavailable (test)")
        results = super().unwrap_many(wrapped, contexts)
        with self.lock:
            self.handed_out.extend(r for r in results if isinstance(r, bytearray))
        return results


@pytest.mark.parametrize("fail_unwrap_on", [1, 3, 10])
def test_a_kms_failure_while_decrypting_wipes_every_unwrapped_dek_and_is_audited(
    local_env: dict[str, str], created: list[bytearray], fail_unwrap_on: int
) -> None:
    kms = FailingUnwrap(created, fail_unwrap_on)
    sink = MemoryAuditSink()
    service = Crypto(Settings.from_env(local_env), kms=kms, audit=sink)  # type: ignore[arg-type]
    envelopes = service.encrypt_many(items())
    sink.events.clear()

    with pytest.raises(KMSError):
        service.decrypt_many(envelopes, actor="alice", reason="t-2")

    assert kms.unwrap_calls >= fail_unwrap_on
    assert all(is_wiped(dek) for dek in kms.handed_out)  # batches opened before and after it
    assert len(sink.events) == VALUES  # no plaintext handed back, every value recorded failed
    assert {event.result for event in sink.events} == {Result.FAILURE}
    assert {event.error_type for event in sink.events} == {"kms"}


class TestWipeAll:
    def test_zeroes_every_buffer_in_place(self) -> None:
        buffers = [*primitives.new_deks(3), bytearray(b"\x01" * 7)]
        same = [id(b) for b in buffers]
        primitives.wipe_all(buffers)
        assert [bytes(b) for b in buffers] == [bytes(32)] * 3 + [bytes(7)]
        assert [id(b) for b in buffers] == same
