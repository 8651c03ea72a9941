"""A loopback TCP proxy in front of a real server, for network faults the server cannot make.

``pass``: bytes flow both ways. ``trickle``: the server's answer is sent back one byte every
``trickle_seconds`` (a stalled load balancer, a dying link). ``down``: the listening socket is
closed, so connections are refused (the server restarting); ``up`` listens again on the same
port. Bounded: it only ever talks to the one loopback upstream it was given.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from enum import StrEnum

from tests.servers import free_port


class Mode(StrEnum):
    PASS = "pass"
    TRICKLE = "trickle"


class FaultProxy:
    def __init__(self, upstream_port: int, *, trickle_seconds: float = 2.0) -> None:
        self.port = free_port()
        self.mode = Mode.PASS
        self.trickle_seconds = trickle_seconds
        self._upstream = ("127.0.0.1", upstream_port)
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._closed = threading.Event()
        self.up()

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones (as a restarting server does)."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for end in self._open:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        self._open.clear()

    def close(self) -> None:
        self._closed.set()
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: down() or close()
            upstream = socket.create_connection(self._upstream, timeout=10)
            upstream.settimeout(None)
            self._open += [client, upstream]
            for source, sink, answer in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, answer, listener), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, answer: bool, listener: socket.socket
    ) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                data = source.recv(65536)
                if not data or listener.fileno() == -1:
                    break
                if answer and self.mode is Mode.TRICKLE:
                    for byte in data:
                        if self._closed.is_set() or listener.fileno() == -1:
                            break
                        sink.sendall(bytes([byte]))
                        time.sleep(self.trickle_seconds)
                else:
                    sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
