"""Coalescing: single-value calls from many asyncio tasks, run as shared batched KMS calls.

A :class:`Lane` collects the calls of one kind (encrypt, decrypt) that arrive within a short
window (``window_seconds``, default 2 ms) and runs them as one batch, in a worker thread, off
the event loop; a batch also starts as soon as it holds ``max_batch`` items. At most
``in_flight`` batches run at once; calls arriving meanwhile wait for the next batch, so under
load batches grow instead of queueing up. Each caller gets its own result or its own error.

Each item carries its caller's :class:`Origin` (actor, reason, request id, correlation, client
address): the batch's audit events are stamped item by item (:class:`StampingSink`), so one
batch may serve callers of different scopes and each event still names its own caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

from heimdall_kms.audit import AuditEvent, AuditSink
from heimdall_kms.errors import AuditWriteError, ConfigurationError, KMSError
from heimdall_kms.scoping import current_scope
from heimdall_kms.telemetry.correlation import clear as clear_correlation
from heimdall_kms.telemetry.correlation import current as current_correlation

__all__ = [
    "DEFAULT_IN_FLIGHT",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_WINDOW_SECONDS",
    "Lane",
    "Origin",
    "StampingSink",
]

DEFAULT_WINDOW_SECONDS = 0.002
DEFAULT_MAX_BATCH = 250
DEFAULT_IN_FLIGHT = 4

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class Origin:
    """Who made one call, as its audit event must say. Built in the caller's context."""

    actor: str
    reason: str | None
    request_id: str
    correlation_id: str | None = None
    trace_id: str | None = None
    source_ip: str | None = None

    @classmethod
    def capture(cls, actor: str, reason: str | None, source_ip: str | None = None) -> Origin:
        """The origin of a call made now: inside an admin API request its id and trace (as
        the correlating sink stamps them), else the scope's request id, else a fresh one."""
        correlation = current_correlation()
        if correlation is not None:
            return cls(
                actor,
                reason,
                correlation.request_id,
                correlation.request_id,
                correlation.trace_id,
                source_ip,
            )
        request_id = current_scope().request_id or str(uuid.uuid4())
        return cls(actor, reason, request_id, source_ip=source_ip)

    def stamp(self, event: AuditEvent) -> AuditEvent:
        return dataclasses.replace(
            event,
            actor=self.actor,
            reason=self.reason,
            request_id=self.request_id,
            correlation_id=self.correlation_id,
            trace_id=self.trace_id,
            source_ip=self.source_ip or event.source_ip,
        )


class StampingSink:
    """Forwards one batch's events, each stamped with the origin of its item (in order).

    A batch call emits one event per item; anything else is refused (fail closed) rather
    than attributing an event to the wrong caller.
    """

    def __init__(self, inner: AuditSink, origins: Sequence[Origin]) -> None:
        self._inner = inner
        self._origins = origins

    def emit(self, events: Sequence[AuditEvent]) -> None:
        if len(events) != len(self._origins):
            raise AuditWriteError(
                f"a batch of {len(self._origins)} values produced {len(events)} audit events"
            )
        self._inner.emit([o.stamp(e) for o, e in zip(self._origins, events, strict=True)])

    def close(self) -> None:
        return None  # the inner sink belongs to the caller


@dataclass(frozen=True, slots=True)
class LaneLimits:
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    max_batch: int = DEFAULT_MAX_BATCH
    in_flight: int = DEFAULT_IN_FLIGHT

    def __post_init__(self) -> None:
        if not 0 <= self.window_seconds <= 1:
            raise ConfigurationError("window_seconds must be between 0 and 1")
        if self.max_batch < 1 or self.in_flight < 1:
            raise ConfigurationError("max_batch and in_flight must be at least 1")


# One batch: the items and their origins in; one result or error per item out (in order).
BatchRunner = Callable[[list[_T], list[Origin]], Sequence[_R | Exception]]
# An item, its origin, its caller's future, and a copy of its caller's context (for the spans).
_Call = tuple[_T, Origin, "asyncio.Future[_R]", contextvars.Context]


class Lane(Generic[_T, _R]):
    """The pending calls of one kind and the batches that run them (one event loop)."""

    def __init__(self, run: BatchRunner[_T, _R], executor: Executor, limits: LaneLimits) -> None:
        self._run = run
        self._executor = executor
        self._limits = limits
        self._pending: list[_Call[_T, _R]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def submit(self, item: _T, origin: Origin) -> _R:
        """Queue one item; its result, or its error raised, once its batch has run.

        Raises:
            ConfigurationError: the lane is closed, or bound to another running event loop.
        """
        if self._closed:
            raise ConfigurationError("AsyncCrypto is closed")
        loop = self._bind()
        future: asyncio.Future[_R] = loop.create_future()
        self._pending.append((item, origin, future, contextvars.copy_context()))
        if len(self._pending) >= self._limits.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self._limits.window_seconds, self._flush)
        return await future

    async def drain(self) -> None:
        """Refuse new items; run every pending one and wait for the batches under way."""
        self._closed = True
        while self._pending or self._running:
            self._flush()
            if self._running:
                await asyncio.wait(set(self._running))

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and (self._pending or self._running):
                raise ConfigurationError("AsyncCrypto is in use by another event loop")
            self._loop = loop
        return loop

    def _flush(self) -> None:
        self._cancel_timer()
        loop = self._loop
        while loop is not None and self._pending and len(self._running) < self._limits.in_flight:
            calls = self._next_batch()
            if calls:
                task = loop.create_task(self._batch(calls), context=contextvars.Context())
                self._running.add(task)
                task.add_done_callback(self._finished)
        # What is left waits for a running batch to finish (see _finished).

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _next_batch(self) -> list[_Call[_T, _R]]:
        """Take the next batch off the queue, less the calls whose caller gave up waiting."""
        size = self._limits.max_batch
        calls, self._pending = self._pending[:size], self._pending[size:]
        return [call for call in calls if not call[2].done()]

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if self._pending:
            self._flush()

    async def _batch(self, calls: list[_Call[_T, _R]]) -> None:
        outcomes: Sequence[_R | Exception]
        try:
            outcomes = await self._outcomes(calls)
        # Whatever failed the whole batch, each of its callers gets it: none may hang.
        except Exception as exc:  # noqa: BLE001
            outcomes = [exc] * len(calls)
        for (_, _, future, _), outcome in zip(calls, outcomes, strict=True):
            _settle(future, outcome)

    async def _outcomes(self, calls: list[_Call[_T, _R]]) -> Sequence[_R | Exception]:
        """Run the batch in the executor: one outcome per call, in order.

        Raises:
            KMSError: the runner answered with another number of outcomes. Exception: what
                failed the whole batch.
        """
        assert self._loop is not None
        items = [item for item, _, _, _ in calls]
        origins = [origin for _, origin, _, _ in calls]
        # The batch runs in its first caller's context, so that its KMS spans continue that
        # caller's trace; the request correlation is cleared there, so that no caller's id is
        # stamped on the others' events (each event gets its own origin instead).
        context = calls[0][3]
        outcomes = await self._loop.run_in_executor(
            self._executor, context.run, _uncorrelated, self._run, items, origins
        )
        if len(outcomes) != len(calls):
            raise KMSError("a batch answered with the wrong number of results")
        return outcomes


def _settle(future: asyncio.Future[_R], outcome: _R | Exception) -> None:
    """Give a waiting caller its outcome (a caller that gave up has a done future)."""
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _uncorrelated(
    run: BatchRunner[_T, _R], items: list[_T], origins: list[Origin]
) -> Sequence[_R | Exception]:
    clear_correlation()  # in the batch's own copy of the context only
    return run(items, origins)
