"""``AsyncCrypto``: the facade of SPEC §5 for asyncio code (SPEC §11).

``await crypto.encrypt(...)`` and ``await crypto.decrypt(...)`` from many tasks at once are
coalesced (:mod:`heimdall_kms.coalescing`): the calls of a short window share one batched KMS
call, run in a worker thread so the event loop never blocks on the KMS. Each caller still gets
its own DEK, its own audit event (with its own actor, reason and request id: its arguments,
else its :func:`heimdall_kms.scope`) and its own error: an item's bad input is refused before
it joins a batch, and a decrypt that fails (tampered, wrong context) fails only its caller.
A failure of the whole KMS call (unreachable, refused) fails every caller of that batch.

``encrypt_many`` and ``decrypt_many`` are the synchronous facade's batch calls, run in a worker
thread under the caller's scope.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from heimdall_kms.coalescing import (
    DEFAULT_IN_FLIGHT,
    DEFAULT_MAX_BATCH,
    DEFAULT_WINDOW_SECONDS,
    Lane,
    LaneLimits,
    Origin,
    StampingSink,
)
from heimdall_kms.composition import build_crypto
from heimdall_kms.envelope import Envelope, check_context
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.inputs import MAX_PLAINTEXT_BYTES, checked_label, plaintext_bytes
from heimdall_kms.opening import EnvelopeInput
from heimdall_kms.scoping import current_scope
from heimdall_kms.service import Crypto

__all__ = ["AsyncCrypto"]

_R = TypeVar("_R")
# The batch call's own actor and reason, replaced on every event by the item's origin.
_BATCH = "coalesced-batch"
_EncryptItem = tuple[str, dict[str, str]]
_DecryptItem = tuple[EnvelopeInput, dict[str, str] | None]


class AsyncCrypto:
    """Build it with :func:`heimdall_kms.from_env_async`, or around a :class:`Crypto`.

    ``window_seconds`` (default 0.002) is how long a call may wait for others to share its
    batch; a batch starts at once when it holds ``max_batch`` (default 250) items; at most
    ``in_flight`` (default 4) batches per kind run at once. ``owns_crypto``: ``aclose`` also
    closes ``crypto`` (its provider and audit sink).
    """

    def __init__(
        self,
        crypto: Crypto,
        *,
        default_actor: str = "application",
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        max_batch: int = DEFAULT_MAX_BATCH,
        in_flight: int = DEFAULT_IN_FLIGHT,
        owns_crypto: bool = True,
    ) -> None:
        limits = LaneLimits(window_seconds, max_batch, in_flight)
        self.crypto = crypto
        self._default_actor = checked_label("actor", default_actor)
        self._owns = owns_crypto
        # Two lanes of `in_flight` batches, and the direct batch calls.
        self._executor = ThreadPoolExecutor(2 * in_flight + 2, thread_name_prefix="heimdall-async")
        self._encrypts: Lane[_EncryptItem, Envelope] = Lane(
            self._encrypt_batch, self._executor, limits
        )
        self._decrypts: Lane[_DecryptItem, str] = Lane(self._decrypt_batch, self._executor, limits)
        self._closed = False

    def __await__(self) -> Generator[Any, None, AsyncCrypto]:
        """``await heimdall_kms.from_env_async()`` gives the same object as without ``await``."""
        return self._itself().__await__()

    async def _itself(self) -> AsyncCrypto:
        return self

    async def __aenter__(self) -> AsyncCrypto:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- single values (coalesced) -------------------------------------------------------------

    async def encrypt(
        self, plaintext: str, *, context: Mapping[str, str] | None = None, actor: str | None = None
    ) -> Envelope:
        """As :meth:`Crypto.encrypt`; the actor is ``actor``, else the scope's, else the
        default. Raises as :meth:`Crypto.encrypt`, and ConfigurationError once closed."""
        in_scope = current_scope()
        who = checked_label("actor", actor or in_scope.actor or self._default_actor)
        return await self.encrypt_for(Origin.capture(who, in_scope.reason), plaintext, context)

    async def decrypt(
        self,
        envelope: EnvelopeInput,
        *,
        actor: str | None = None,
        reason: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> str:
        """As :meth:`Crypto.decrypt`; actor and reason are the arguments, else the scope's.

        Raises:
            InvalidInputError: actor or reason missing. Otherwise as :meth:`Crypto.decrypt`.
        """
        in_scope = current_scope()
        who = checked_label("actor", actor if actor is not None else in_scope.actor)
        why = checked_label("reason", reason if reason is not None else in_scope.reason)
        return await self.decrypt_for(Origin.capture(who, why), envelope, context)

    async def encrypt_for(
        self, origin: Origin, plaintext: str, context: Mapping[str, str] | None = None
    ) -> Envelope:
        """:meth:`encrypt` on behalf of ``origin`` (a server naming its client)."""
        checked_label("actor", origin.actor)
        plaintext_bytes(plaintext, MAX_PLAINTEXT_BYTES)  # refused here, alone, not in a batch
        item = (plaintext, check_context(context or {}))
        return await self._encrypts.submit(item, origin)

    async def decrypt_for(
        self, origin: Origin, envelope: EnvelopeInput, context: Mapping[str, str] | None = None
    ) -> str:
        """:meth:`decrypt` on behalf of ``origin``; its reason is required."""
        checked_label("actor", origin.actor)
        checked_label("reason", origin.reason)
        stated = check_context(context) if context is not None else None
        return await self._decrypts.submit((envelope, stated), origin)

    # -- many values (one call each) -------------------------------------------------------------

    async def encrypt_many(
        self, items: Iterable[tuple[str, Mapping[str, str]]], *, actor: str | None = None
    ) -> list[Envelope]:
        """As :meth:`Crypto.encrypt_many`, in a worker thread under the caller's scope."""
        return await self._in_thread(
            functools.partial(self.crypto.encrypt_many, list(items), actor=actor)
        )

    async def decrypt_many(
        self,
        envelopes: Sequence[EnvelopeInput],
        *,
        actor: str | None = None,
        reason: str | None = None,
        contexts: Sequence[Mapping[str, str] | None] | None = None,
    ) -> list[str]:
        """As :meth:`Crypto.decrypt_many`, in a worker thread under the caller's scope."""
        call = functools.partial(
            self.crypto.decrypt_many, list(envelopes), actor=actor, reason=reason, contexts=contexts
        )
        return await self._in_thread(call)

    async def aclose(self) -> None:
        """Run every pending call, wait for the batches under way, then release the threads
        (and, when owned, close the facade). Calls made after this raise ConfigurationError."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(self._encrypts.drain(), self._decrypts.drain())
        try:
            if self._owns:
                await asyncio.get_running_loop().run_in_executor(self._executor, self.crypto.close)
        finally:
            self._executor.shutdown(wait=False)

    # -- in the worker threads ---------------------------------------------------------------

    async def _in_thread(self, call: functools.partial[_R]) -> _R:
        if self._closed:
            raise ConfigurationError("AsyncCrypto is closed")
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(context.run, call)
        )

    def _batch_crypto(self, origins: list[Origin]) -> Crypto:
        base = self.crypto
        sink = StampingSink(base.audit, origins)
        return build_crypto(base.settings, kms=base.kms, audit=sink, metrics=base.metrics)

    def _encrypt_batch(self, items: list[_EncryptItem], origins: list[Origin]) -> list[Envelope]:
        return self._batch_crypto(origins).encrypt_many(items, actor=_BATCH)

    def _decrypt_batch(
        self, items: list[_DecryptItem], origins: list[Origin]
    ) -> list[str | HeimdallKMSError]:
        return self._batch_crypto(origins).decrypt_outcomes(
            [envelope for envelope, _ in items],
            actor=_BATCH,
            reason=_BATCH,
            contexts=[context for _, context in items],
        )
