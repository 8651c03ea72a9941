"""A total deadline for one HTTP exchange with the KMS, however slowly the answer trickles in.

``requests`` and urllib3 time out each socket read, not the exchange: an answer that arrives
one byte every few seconds never times out, and a job waiting on it holds its batch (and its
PostgreSQL row locks) forever. :func:`watch` makes a session's connections report themselves
to the thread that uses them; :func:`deadline` starts a timer that, when it fires, shuts the
socket of the exchange in flight down, so the blocked read returns at once and the call fails
as unavailable (a transient error: a background job rolls its batch back and tries again).
"""

from __future__ import annotations

import contextlib
import socket
import threading
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
    timer = threading.Timer(seconds, exchange.expire)
    timer.daemon = True
    timer.start()
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
        timer.cancel()
        _local.exchange = outer
