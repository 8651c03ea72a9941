"""A total deadline for one HTTP exchange with the KMS, however slowly the answer trickles in.

``requests`` and urllib3 time out each socket read, not the exchange: an answer that arrives
one byte every few seconds never times out, and a job waiting on it holds its batch (and its
PostgreSQL row locks) forever. :func:`watch` makes a session's connections report themselves
to the thread that uses them; :func:`deadline` gives the exchange to one watchdog thread that,
when its time is up, shuts the socket of the exchange in flight down, so the blocked read
returns at once and the call fails as unavailable (a transient error: a background job rolls
its batch back and tries again).
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
import urllib3.connection

from heimdall_kms.errors import KMSUnavailableError

__all__ = ["deadline", "watch"]

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

    A ``threading.Timer`` per exchange started (and tore down) one thread per Vault request:
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
    if exchange is not None:
        exchange.connection = connection


class _HTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _report(self)
        super().request(*args, **kwargs)


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _report(self)
        super().request(*args, **kwargs)


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def watch(session: requests.Session) -> None:
    """Let :func:`deadline` cut this session's exchanges (its transport adapters' pools)."""
    for adapter in session.adapters.values():
        if isinstance(adapter, requests.adapters.HTTPAdapter):
            manager = adapter.poolmanager
            manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
            manager.clear()  # pools made before use the plain classes


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[_Exchange]:
    """Bound the exchanges this thread makes inside the block by ``seconds`` in total.

    Raises:
        KMSUnavailableError: the deadline passed before the answer was complete. A block
            that swallows the cut exchange's error sees ``expired`` on the yielded object.
    """
    exchange = _Exchange()
    outer = getattr(_local, "exchange", None)
    _local.exchange = exchange
    _WATCHDOG.watch(exchange, seconds)
    try:
        yield exchange
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError):
        if exchange.expired:
            raise KMSUnavailableError(
                f"{what}: no complete answer within {seconds:g}s (the total deadline of one "
                "request)"
            ) from None
        raise
    finally:
        exchange.finish()
        _local.exchange = outer
