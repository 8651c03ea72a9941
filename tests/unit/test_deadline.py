"""The exchange deadline's watchdog (providers/deadline.py): one thread cuts overdue reads."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from heimdall_kms.providers.deadline import _Exchange, _Watchdog


@dataclass
class Connection:
    """What an exchange knows of its connection: the socket a blocked read waits on."""

    sock: socket.socket


class _Recorded(_Exchange):
    """An exchange that records, in ``into``, its name and when it expired."""

    def __init__(self, name: str, into: list[tuple[str, float]]) -> None:
        super().__init__()
        self._name, self._into = name, into

    def expire(self) -> None:
        super().expire()
        self._into.append((self._name, time.monotonic()))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


class TestWatchdog:
    def test_an_overdue_exchange_has_its_blocked_read_cut(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        ours, _ = pair
        exchange = _Exchange()
        exchange.connection = Connection(ours)
        started = time.monotonic()
        _Watchdog().watch(exchange, 0.2)
        ours.settimeout(10)
        assert ours.recv(1) == b""  # shut down: the read returns instead of waiting 10 s
        assert 0.15 < time.monotonic() - started < 5
        assert exchange.expired

    def test_a_finished_exchange_is_left_alone(
        self, pair: tuple[socket.socket, socket.socket]
    ) -> None:
        ours, theirs = pair
        exchange = _Exchange()
        exchange.connection = Connection(ours)
        _Watchdog().watch(exchange, 0.1)
        exchange.finish()
        time.sleep(0.3)
        assert not exchange.expired
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"

    def test_many_exchanges_share_one_thread_and_expire_in_deadline_order(self) -> None:
        # Ordered by when each expired, never by wall-clock sleeps: a loaded machine may take
        # longer than either deadline to register the 5,000 finished exchanges.
        watchdog = _Watchdog()
        before = threading.active_count()
        expired: list[tuple[str, float]] = []
        late, early = _Recorded("late", expired), _Recorded("early", expired)
        watched_late = time.monotonic()
        watchdog.watch(late, 0.4)
        watchdog.watch(early, 0.1)
        for _ in range(5000):  # finished ones, as a busy job leaves them (compacted)
            done = _Exchange()
            watchdog.watch(done, 30)
            done.finish()
        assert threading.active_count() == before + 1
        give_up = time.monotonic() + 10
        while len(expired) < 2 and time.monotonic() < give_up:
            time.sleep(0.02)
        assert [name for name, _ in expired] == ["early", "late"]
        assert expired[1][1] - watched_late >= 0.4  # never before its deadline
        assert len(watchdog._due) < _Watchdog._COMPACT_AT
