"""A total deadline for one exchange with the KMS, however slowly the answer trickles in.

``requests``, urllib3 and botocore time out each socket read, not the exchange: an answer that
arrives one byte every few seconds never times out, and a job waiting on it holds its batch
(and its PostgreSQL row locks) forever. :func:`watch` (a ``requests`` session: Vault, Azure,
GCP over REST) and :func:`watch_botocore` (AWS) make a client's connections report themselves
to the thread that uses them; :func:`deadline` gives the exchange to one watchdog thread that,
when its time is up, shuts the socket of the exchange in flight down, so the blocked read
returns at once and the call fails as unavailable (a transient error: a background job rolls
its batch back and tries again). An SDK that retries inside the block (botocore, azure-core,
google-api-core) cannot start a new exchange once the deadline has passed (nor retry that
refusal): the block is bounded as a whole.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
import urllib3

from heimdall_kms.errors import KMSUnavailableError

__all__ = ["deadline", "watch", "watch_botocore", "watch_pools"]

_local = threading.local()


class _Exchange:
    """One exchange under a deadline: the connection it uses, and whether it ran out."""

    def __init__(self) -> None:
        self.connection: Any = None
        self.expired = False
        self._lock = threading.Lock()
        self._done = False

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sock = getattr(self.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self._done = True

    @property
    def done(self) -> bool:
        return self._done


class _Watchdog:
    """One daemon thread that expires every exchange whose deadline passed.

    A ``threading.Timer`` per exchange started (and tore down) one thread per request:
    measured with py-spy in ``encrypt_many`` of 250 values, waiting for that thread to start
    took about 9% of the call, more than sealing the 250 values. Finished exchanges stay in the
    heap until they reach its top (or a compaction drops them), so it holds at most the
    exchanges of one deadline's span.
    """

    _COMPACT_AT = 4096

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int, _Exchange]] = []
        self._order = itertools.count()
        self._running = False
        # A forked child has no watchdog thread, and may have copied a held lock: it starts over.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._wake = threading.Condition()
        self._due = []
        self._running = False

    def watch(self, exchange: _Exchange, seconds: float) -> None:
        entry = (time.monotonic() + seconds, next(self._order), exchange)
        with self._wake:
            if not self._running:
                self._running = True
                threading.Thread(
                    target=self._run, name="heimdall-kms-deadline", daemon=True
                ).start()
            if len(self._due) >= self._COMPACT_AT:
                self._due = [item for item in self._due if not item[2].done]
                heapq.heapify(self._due)
            heapq.heappush(self._due, entry)
            if self._due[0] is entry:
                self._wake.notify()

    def _run(self) -> None:
        while True:
            exchange = self._next_overdue()
            exchange.expire()

    def _next_overdue(self) -> _Exchange:
        with self._wake:
            while True:
                while self._due and self._due[0][2].done:
                    heapq.heappop(self._due)
                if not self._due:
                    self._wake.wait()
                    continue
                wait = self._due[0][0] - time.monotonic()
                if wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._wake.wait(wait)


_WATCHDOG = _Watchdog()


def _report(connection: object) -> None:
    exchange = getattr(_local, "exchange", None)
    if exchange is None:
        return
    if exchange.expired:
        # The deadline passed while the SDK was between attempts (its retry backoff): a new
        # exchange would start unbounded, so none is sent.
        raise _DeadlinePassed
    exchange.connection = connection


class _DeadlinePassed(BaseException):
    """Raised in a new attempt once the deadline has passed. A BaseException, so that no
    SDK's ``except Exception`` takes it for a transient failure and retries (after a backoff
    sleep) again: it goes straight up to :func:`deadline`, which reports the deadline."""


_reporting_classes: dict[type[Any], type[Any]] = {}
_classes_lock = threading.Lock()


def _reporting(pool_class: type[Any]) -> type[Any]:
    """``pool_class`` whose connections report themselves to :func:`deadline` (one subclass
    per pool class: urllib3's own, or botocore's ``AWSHTTP(S)ConnectionPool``)."""
    if getattr(pool_class, "_heimdall_deadline", False):
        return pool_class
    with _classes_lock:
        made = _reporting_classes.get(pool_class)
        if made is None:
            base: type[Any] = pool_class.ConnectionCls

            # A new connection connects (TCP, and the TLS handshake, which trickles as well)
            # before it sends; a pooled one only sends.
            def connect(self: Any) -> None:
                _report(self)
                base.connect(self)

            def request(self: Any, *args: Any, **kwargs: Any) -> None:
                _report(self)
                base.request(self, *args, **kwargs)

            members = {"connect": connect, "request": request}
            connection = type(base.__name__, (base,), members)
            made = type(
                pool_class.__name__,
                (pool_class,),
                {"ConnectionCls": connection, "_heimdall_deadline": True},
            )
            _reporting_classes[pool_class] = made
        return made


def watch_pools(manager: urllib3.PoolManager) -> None:
    """Let :func:`deadline` cut the exchanges of this urllib3 pool manager's connections."""
    manager.pool_classes_by_scheme = {
        scheme: _reporting(pool) for scheme, pool in manager.pool_classes_by_scheme.items()
    }
    manager.clear()  # pools made before use the plain classes


def watch(session: requests.Session) -> None:
    """Let :func:`deadline` cut this session's exchanges (its transport adapters' pools)."""
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            watch_pools(adapter.poolmanager)


def watch_botocore(client: Any) -> None:
    """Let :func:`deadline` cut a botocore client's exchanges.

    botocore sends through urllib3 itself (``URLLib3Session``), not ``requests``; its pool
    manager and the pool classes it gives proxy managers are attributes of that session, not
    a public API: if a botocore release renames them this raises AttributeError (and the
    deadline test of the AWS provider fails) rather than leaving requests unbounded unnoticed.
    """
    session = client._endpoint.http_session
    watch_pools(session._manager)
    session._pool_classes_by_scheme = {
        scheme: _reporting(pool) for scheme, pool in session._pool_classes_by_scheme.items()
    }
    for manager in session._proxy_managers.values():
        watch_pools(manager)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[_Exchange]:
    """Bound the exchanges this thread makes inside the block by ``seconds`` in total.

    Raises:
        KMSUnavailableError: the deadline passed before the answer was complete (whatever
            error the cut exchange surfaced as, through the SDK's own translation). A block
            that swallows the cut exchange's error sees ``expired`` on the yielded object.
    """
    exchange = _Exchange()
    outer = getattr(_local, "exchange", None)
    _local.exchange = exchange
    _WATCHDOG.watch(exchange, seconds)
    try:
        yield exchange
    except (Exception, _DeadlinePassed):
        if exchange.expired:
            raise KMSUnavailableError(
                f"{what}: no complete answer within {seconds:g}s (the total deadline of one "
                "request)"
            ) from None
        raise
    finally:
        exchange.finish()
        _local.exchange = outer
