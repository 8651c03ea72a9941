"""``AsyncCrypto`` (SPEC §11) against a live OpenBao whose Transit requests are counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import hvac
import pytest

import heimdall_kms
from heimdall_kms.async_crypto import AsyncCrypto
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import Envelope, KmsV1Envelope
from heimdall_kms.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidInputError,
    KMSUnavailableError,
)
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao, free_port

pytestmark = pytest.mark.vault

N = 200


@dataclass
class Counted:
    crypto: AsyncCrypto
    session: CountingSession
    sink: MemoryAuditSink

    def requests(self, operation: str) -> int:
        return len([s for s in self.session.sent if f"/transit/{operation}/" in s])


def counted(server: OpenBao, **knobs: float) -> Counted:
    session = CountingSession()
    client = hvac.Client(url=server.addr, token=server.root_token, session=session)
    provider = VaultTransitProvider(client, TRANSIT_KEY)
    sink = MemoryAuditSink()
    crypto = Crypto(Settings.from_env(server.env()), kms=provider, audit=sink)
    return Counted(AsyncCrypto(crypto, **knobs), session, sink)  # type: ignore[arg-type]


@pytest.fixture
def bao(openbao: OpenBao) -> Iterator[Counted]:
    made = counted(openbao)
    yield made
    asyncio.run(made.crypto.aclose())


def ctx(i: int) -> dict[str, str]:
    return {"table": "people", "field": "ssn", "record": str(i)}


async def encrypt_as(crypto: AsyncCrypto, i: int) -> Envelope:
    # Every caller in its own scope: its own actor, reason and request id.
    with heimdall_kms.scope(actor=f"user-{i}", reason=f"signup-{i}", request_id=f"req-{i}"):
        return await crypto.encrypt(f"value-{i}", context=ctx(i))


class TestCoalescedEncrypt:
    def test_concurrent_encrypts_share_few_requests_and_round_trip(self, bao: Counted) -> None:
        async def main() -> list[Envelope]:
            return await asyncio.gather(*(encrypt_as(bao.crypto, i) for i in range(N)))

        sealed = asyncio.run(main())
        assert 1 <= bao.requests("encrypt") <= 20
        assert all(isinstance(e, KmsV1Envelope) for e in sealed)
        assert len({e.encrypted_dek for e in sealed if isinstance(e, KmsV1Envelope)}) == N
        texts = bao.crypto.crypto.decrypt_many(sealed, actor="check", reason="round-trip")
        assert texts == [f"value-{i}" for i in range(N)]
        events = [e for e in bao.sink.events if e.event_type.value == "crypto.encrypt"]
        assert len(events) == N
        for event in events:  # each event names its own caller, though batches were shared
            i = event.context["record"] if event.context else "?"
            assert (event.actor, event.reason, event.request_id) == (
                f"user-{i}",
                f"signup-{i}",
                f"req-{i}",
            )

    def test_one_bad_item_fails_only_its_caller(self, bao: Counted) -> None:
        async def one(i: int) -> Envelope | BaseException:
            context: object = {"record": 7} if i == 3 else ctx(i)  # 7 is not a string
            try:
                return await bao.crypto.encrypt(f"v{i}", context=context)  # type: ignore[arg-type]
            except InvalidInputError as exc:
                return exc

        async def main() -> list[Envelope | BaseException]:
            return await asyncio.gather(*(one(i) for i in range(50)))

        results = asyncio.run(main())
        assert isinstance(results[3], InvalidInputError)
        assert all(isinstance(r, KmsV1Envelope) for i, r in enumerate(results) if i != 3)
        assert bao.requests("encrypt") == 1
        assert len(bao.sink.events) == 49  # the refused item reached no KMS and no batch


class TestCoalescedDecrypt:
    def test_decrypts_coalesce_and_a_moved_value_fails_alone(self, bao: Counted) -> None:
        sealed = bao.crypto.crypto.encrypt_many([(f"value-{i}", ctx(i)) for i in range(N)])
        bao.session.sent.clear()
        bao.sink.events.clear()

        async def one(i: int) -> str | BaseException:
            stated = ctx(i + 1) if i == 5 else ctx(i)  # item 5 claims to be read elsewhere
            try:
                return await bao.crypto.decrypt(
                    sealed[i], actor=f"reader-{i}", reason=f"ticket-{i}", context=stated
                )
            except IntegrityError as exc:
                return exc

        async def main() -> list[str | BaseException]:
            return await asyncio.gather(*(one(i) for i in range(N)))

        results = asyncio.run(main())
        assert isinstance(results[5], IntegrityError)
        assert [r for i, r in enumerate(results) if i != 5] == [
            f"value-{i}" for i in range(N) if i != 5
        ]
        assert 1 <= bao.requests("decrypt") <= 20
        events = {e.context["record"]: e for e in bao.sink.events if e.context}
        assert len(bao.sink.events) == N
        assert events["5"].result.value == "failure"
        assert events["5"].error_type == "integrity"
        assert (events["9"].actor, events["9"].reason) == ("reader-9", "ticket-9")

    def test_decrypt_without_actor_or_reason_fails_typed(self, bao: Counted) -> None:
        sealed = bao.crypto.crypto.encrypt("v", context=ctx(1))
        with pytest.raises(InvalidInputError):
            asyncio.run(bao.crypto.decrypt(sealed, actor="a"))
        with heimdall_kms.scope(actor="a", reason="r"):
            assert asyncio.run(bao.crypto.decrypt(sealed)) == "v"


class TestBatchCalls:
    def test_many_calls_follow_the_scope(self, bao: Counted) -> None:
        async def main() -> list[str]:
            with heimdall_kms.scope(actor="etl", reason="export", request_id="job-1"):
                sealed = await bao.crypto.encrypt_many([(f"v{i}", ctx(i)) for i in range(10)])
                return await bao.crypto.decrypt_many(sealed)

        assert asyncio.run(main()) == [f"v{i}" for i in range(10)]
        assert {(e.actor, e.request_id) for e in bao.sink.events} == {("etl", "job-1")}
        assert bao.requests("encrypt") == 1
        assert bao.requests("decrypt") == 1


class TestFailures:
    def test_a_failed_kms_call_fails_each_caller_of_its_batch_audited_as_its_own(
        self, openbao: OpenBao
    ) -> None:
        # Nothing listens on this port: the whole Transit call fails.
        client = hvac.Client(url=f"http://127.0.0.1:{free_port()}", token="t")
        sink = MemoryAuditSink()
        settings = Settings.from_env(openbao.env())
        crypto = AsyncCrypto(
            Crypto(settings, kms=VaultTransitProvider(client, TRANSIT_KEY), audit=sink)
        )

        async def main() -> list[Envelope | BaseException]:
            calls = (encrypt_as(crypto, i) for i in range(10))
            results = await asyncio.gather(*calls, return_exceptions=True)
            await crypto.aclose()
            return results

        results = asyncio.run(main())
        assert all(isinstance(r, KMSUnavailableError) for r in results)
        assert sorted((e.actor, e.result.value) for e in sink.events) == sorted(
            (f"user-{i}", "failure") for i in range(10)
        )

    def test_a_caller_cancelled_before_its_batch_is_left_out(self, openbao: OpenBao) -> None:
        made = counted(openbao, window_seconds=1.0)

        async def main() -> list[Envelope]:
            calls = [asyncio.create_task(encrypt_as(made.crypto, i)) for i in range(3)]
            await asyncio.sleep(0)
            calls[1].cancel()
            await made.crypto.aclose()
            return [calls[0].result(), calls[2].result()]

        assert len(asyncio.run(main())) == 2
        assert sorted(e.actor for e in made.sink.events) == ["user-0", "user-2"]


class TestClose:
    def test_aclose_drains_pending_calls(self, openbao: OpenBao) -> None:
        made = counted(openbao, window_seconds=1.0)  # the window alone would hold them 1 s

        async def main() -> list[Envelope]:
            calls = [
                asyncio.create_task(made.crypto.encrypt("v", context=ctx(i))) for i in range(30)
            ]
            await asyncio.sleep(0)  # every call is queued, none has run
            assert made.requests("encrypt") == 0
            await made.crypto.aclose()
            assert all(call.done() for call in calls)
            with pytest.raises(ConfigurationError):
                await made.crypto.encrypt("late", context=ctx(99))
            return [call.result() for call in calls]

        sealed = asyncio.run(main())
        assert len(sealed) == 30
        assert made.requests("encrypt") == 1

    def test_from_env_async_with_and_without_await(self, openbao: OpenBao) -> None:
        sink = MemoryAuditSink()

        async def main() -> str:
            async with await heimdall_kms.from_env_async(openbao.env(), audit=sink) as crypto:
                sealed = await crypto.encrypt("x", context=ctx(1))
                return await crypto.decrypt(sealed, actor="a", reason="r")

        assert asyncio.run(main()) == "x"
        plain = heimdall_kms.from_env_async(openbao.env(), audit=sink, window_seconds=0)
        assert isinstance(plain, AsyncCrypto)
        asyncio.run(plain.aclose())

    def test_knobs_are_checked(self, openbao: OpenBao) -> None:
        with pytest.raises(ConfigurationError, match="max_batch"):
            heimdall_kms.from_env_async(openbao.env(), audit=MemoryAuditSink(), max_batch=0)
