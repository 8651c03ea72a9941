"""The optional second off-host copy: every signed checkpoint as one syslog message.

``HMD_AUDIT_SYSLOG`` is ``udp://HOST[:PORT]`` (default port 514) or ``unix:///PATH`` (a
datagram socket such as ``/dev/log``, whose daemon forwards off the host). The message is the
checkpoint's JSON (heads, hashes and a signature: no event, no secret), sent through the
standard library's :class:`logging.handlers.SysLogHandler` under the ident ``heimdall-kms``.

Sending runs on its own daemon thread behind a bounded queue: :meth:`SyslogAnchor.put` never
blocks, the address is resolved and the socket opened on that thread, and each send is
bounded by a socket timeout. A message that cannot be sent is counted
(``heimdall_audit_checkpoint_failures_total{stage="syslog"}``) and dropped: syslog is a copy
for the SIEM, the PostgreSQL anchor and ``<log>.checkpoints`` keep the evidence.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

from heimdall_kms.audit.checkpoint import Checkpoint
from heimdall_kms.audit_settings import SyslogTarget

__all__ = ["SyslogAnchor"]


class _Handler(logging.handlers.SysLogHandler):
    """Records a failed send instead of printing it (logging's default prints a traceback),
    and bounds every socket it opens by a timeout (a full datagram socket blocks a send)."""

    def __init__(self, target: SyslogTarget, timeout: float) -> None:
        self.failed = False
        self.timeout = timeout  # before the base class opens the socket
        super().__init__(target.address, target.facility, socket.SOCK_DGRAM)
        self.ident = "heimdall-kms: "
        self.append_nul = False  # one JSON document per datagram, nothing after it

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        self.failed = True

    def createSocket(self) -> None:  # noqa: N802 - logging's name
        super().createSocket()
        self._bound()

    def _connect_unixsocket(self, address: Any) -> None:
        # Also called on its own by emit() to reconnect after a failed send.
        super()._connect_unixsocket(address)  # type: ignore[misc]  # not in typeshed
        self._bound()

    def _bound(self) -> None:
        opened: socket.socket | None = self.socket  # type: ignore[attr-defined]
        if opened is not None:
            opened.settimeout(self.timeout)


class SyslogAnchor:
    """Sends checkpoints to syslog on a daemon thread; :meth:`put` never blocks."""

    def __init__(
        self,
        target: SyslogTarget,
        *,
        timeout_seconds: float = 1.0,
        on_failure: Callable[[], None] = lambda: None,
        capacity: int = 1000,
    ) -> None:
        self._target = target
        self._timeout = timeout_seconds
        self._on_failure = on_failure
        self._queue: queue.Queue[Checkpoint | None] = queue.Queue(capacity)
        self._thread = threading.Thread(target=self._run, name="heimdall-syslog", daemon=True)
        self._thread.start()

    def put(self, checkpoint: Checkpoint) -> None:
        try:
            self._queue.put_nowait(checkpoint)
        except queue.Full:
            self._on_failure()

    def close(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout``) for what is queued to be sent; True when it was."""
        wait = self._timeout if timeout is None else timeout
        try:
            self._queue.put(None, timeout=wait)
        except queue.Full:
            return False
        self._thread.join(wait)
        return not self._thread.is_alive()

    def _run(self) -> None:
        handler: _Handler | None = None
        for checkpoint in iter(self._queue.get, None):  # None: the close marker
            handler = self._deliver(handler, checkpoint)
        _close(handler)

    def _deliver(self, handler: _Handler | None, checkpoint: Checkpoint) -> _Handler | None:
        """Send one checkpoint, opening the handler if need be; the handler for the next one
        (None after a failure, counted: reopen, and resolve again)."""
        handler = handler or self._open()
        if handler is not None and self._send(handler, checkpoint):
            return handler
        self._on_failure()
        _close(handler)
        return None

    def _open(self) -> _Handler | None:
        try:
            return _Handler(self._target, self._timeout)
        except OSError:  # the name does not resolve (yet): counted, tried again next time
            return None

    def _send(self, handler: _Handler, checkpoint: Checkpoint) -> bool:
        record = logging.LogRecord(
            "heimdall_kms.audit", logging.INFO, __file__, 0, "%s", (checkpoint.to_json(),), None
        )
        handler.failed = False
        handler.emit(record)
        return not handler.failed


def _close(handler: _Handler | None) -> None:
    if handler is not None:
        handler.close()
