"""``heimdall_kms.scope`` (SPEC §11) on the real local provider, with an in-memory audit sink."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Iterator

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.errors import InvalidInputError
from heimdall_kms.scoping import Scope, current_scope
from tests.unit.conftest import Facade

SSN = "123-45-6789"
CTX = {"table": "people", "field": "ssn", "record": "7"}


@pytest.fixture
def facade(local_env: dict[str, str]) -> Iterator[Facade]:
    sink = MemoryAuditSink()
    with heimdall_kms.from_env(local_env, audit=sink) as built:
        yield Facade(built, sink)


def who(sink: MemoryAuditSink) -> list[tuple[str, str | None, str]]:
    return [(e.actor, e.reason, e.request_id) for e in sink.events]


class TestScope:
    def test_exported_from_the_package(self) -> None:
        assert "scope" in heimdall_kms.__all__
        assert heimdall_kms.scope is heimdall_kms.scoping.scope

    def test_decrypt_takes_actor_reason_and_request_id_from_the_scope(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()
        with heimdall_kms.scope(actor="alice", reason="ticket-42", request_id="req-1"):
            assert crypto.decrypt(envelope) == SSN
            assert crypto.decrypt_many([envelope, envelope]) == [SSN, SSN]
            assert crypto.decrypt_outcomes([envelope]) == [SSN]
        assert who(sink) == [("alice", "ticket-42", "req-1")] * 4

    def test_encrypt_and_hmac_events_carry_the_scope(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        with heimdall_kms.scope(actor="svc", reason="signup", request_id="req-2"):
            crypto.encrypt(SSN, context=CTX)
            crypto.encrypt_many([(SSN, CTX), (SSN, CTX)])
            crypto.hmac_many([SSN])
        assert who(sink) == [("svc", "signup", "req-2")] * 4

    def test_without_a_scope_decrypt_still_fails_typed(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        count = len(sink.events)
        for call in (
            lambda: crypto.decrypt(envelope),
            lambda: crypto.decrypt(envelope, actor="alice"),
            lambda: crypto.decrypt_many([envelope], reason="r"),
            lambda: crypto.decrypt_outcomes([envelope]),
        ):
            with pytest.raises(InvalidInputError, match="required"):
                call()
        # A scope with an actor only still leaves the reason missing.
        with heimdall_kms.scope(actor="alice"), pytest.raises(InvalidInputError, match="reason"):
            crypto.decrypt(envelope)
        assert len(sink.events) == count  # nothing was opened, nothing audited

    def test_explicit_arguments_win_over_the_scope(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        with heimdall_kms.scope(actor="scoped", reason="scoped-why", request_id="req-3"):
            envelope = crypto.encrypt(SSN, context=CTX, actor="writer")
            assert crypto.decrypt(envelope, actor="bob", reason="own") == SSN
            with pytest.raises(InvalidInputError, match="actor"):
                crypto.decrypt(envelope, actor="")  # an explicit empty actor is not replaced
        assert who(sink) == [("writer", "scoped-why", "req-3"), ("bob", "own", "req-3")]

    def test_outside_a_scope_the_old_defaults_hold(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        crypto.decrypt(envelope, actor="a", reason="r")
        first, second = sink.events
        assert (first.actor, first.reason) == ("application", None)
        assert (second.actor, second.reason) == ("a", "r")
        assert first.request_id != second.request_id  # one fresh id per call

    def test_nested_scopes_override_field_by_field(self) -> None:
        with heimdall_kms.scope(actor="a", reason="r", request_id="id-1"):
            with heimdall_kms.scope(reason="r2") as inner:
                assert inner == Scope("a", "r2", "id-1")
                assert current_scope() == inner
            assert current_scope() == Scope("a", "r", "id-1")
        assert current_scope() == Scope()

    def test_a_scope_ends_on_an_exception(self) -> None:
        with pytest.raises(RuntimeError), heimdall_kms.scope(actor="a"):
            raise RuntimeError
        assert current_scope() == Scope()

    @pytest.mark.parametrize(
        ("field", "value"),
        [("actor", ""), ("reason", "  "), ("request_id", "has space"), ("request_id", "x" * 129)],
    )
    def test_bad_values_are_refused(self, field: str, value: str) -> None:
        with pytest.raises(InvalidInputError, match=field), heimdall_kms.scope(**{field: value}):
            pass

    def test_follows_threads_started_with_copy_context(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()
        seen: list[object] = []

        def work() -> None:
            try:
                seen.append(crypto.decrypt(envelope))
            except InvalidInputError as exc:
                seen.append(exc)

        with heimdall_kms.scope(actor="t", reason="thread", request_id="req-t"):
            copied = threading.Thread(target=contextvars.copy_context().run, args=(work,))
            plain = threading.Thread(target=work)  # starts with an empty context
            for thread in (copied, plain):
                thread.start()
                thread.join()
        assert seen[0] == SSN
        assert isinstance(seen[1], InvalidInputError)
        assert who(sink) == [("t", "thread", "req-t")]

    def test_follows_asyncio_tasks_each_its_own(self, facade: Facade) -> None:
        crypto = facade.crypto
        sink = facade.audit
        envelope = crypto.encrypt(SSN, context=CTX)
        sink.events.clear()

        async def request(n: int) -> str:
            with heimdall_kms.scope(actor=f"user-{n}", reason="view", request_id=f"req-{n}"):
                await asyncio.sleep(0)  # the other tasks run in between
                inner = asyncio.create_task(asyncio.to_thread(crypto.decrypt, envelope))
                await asyncio.sleep(0)
                return await inner

        async def main() -> list[str]:
            return await asyncio.gather(*(request(n) for n in range(5)))

        assert asyncio.run(main()) == [SSN] * 5
        assert sorted(who(sink)) == [(f"user-{n}", "view", f"req-{n}") for n in range(5)]
