"""Request correlation: the caller's ``X-Request-ID`` and W3C ``traceparent``, for the audit
events and the logs of one admin API request.

A caller's values are checked before use: ``X-Request-ID`` is 1-128 characters of
``A-Z a-z 0-9 . _ : - + / =``; ``traceparent`` is the W3C version-00 form
``00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`` with non-zero ids. An invalid value is
ignored and a fresh id generated (never a 400): correlation must not take the data path down
because a proxy sends an odd header, and the id actually used is echoed back in the
response's ``X-Request-ID``. Nothing else from the headers reaches an event or a log line.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass

from heimdall_kms.audit import AuditEvent, AuditSink

__all__ = [
    "CorrelatingSink",
    "Correlation",
    "clear",
    "current",
    "from_headers",
    "reset",
    "use",
]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class Correlation:
    request_id: str
    trace_id: str | None = None  # the W3C trace id (the caller's, from a valid traceparent)
    traceparent: str | None = None  # the caller's traceparent, when valid
    caller_id: bool = False  # request_id came from the caller (else generated here)


_current: ContextVar[Correlation | None] = ContextVar("heimdall_correlation", default=None)


def from_headers(request_id: str | None, traceparent: str | None) -> Correlation:
    """The correlation of a request from its two headers; invalid values are ignored."""
    trace_id, valid = _trace(traceparent)
    if request_id is not None and _REQUEST_ID.fullmatch(request_id):
        return Correlation(request_id, trace_id, valid, caller_id=True)
    return Correlation(str(uuid.uuid4()), trace_id, valid)


def _trace(traceparent: str | None) -> tuple[str | None, str | None]:
    """The trace id and the (stripped) traceparent of a valid ``traceparent``; else neither."""
    if traceparent is None:
        return None, None
    valid = traceparent.strip()
    match = _TRACEPARENT.fullmatch(valid)
    if match and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN:
        return match[1], valid
    return None, None


def current() -> Correlation | None:
    return _current.get()


def use(correlation: Correlation) -> Token[Correlation | None]:
    return _current.set(correlation)


def clear() -> None:
    """No correlation in this context from now on (a batch serving several requests)."""
    _current.set(None)


def reset(token: Token[Correlation | None]) -> None:
    _current.reset(token)


class CorrelatingSink:
    """Stamps the current request's id and trace id on the events it forwards.

    Inside an admin API request every event's ``request_id`` becomes the request's id (the
    caller's ``X-Request-ID``, or the one generated for the request), as SPEC §8/§12 ask, and
    ``correlation_id`` says the same. Lifecycle intents and outcomes pair by their own
    ``details.attempt`` id, so a caller reusing an id cannot make one outcome answer another's
    intent. Outside a request (background jobs, the schedulers) events keep their own ids.
    """

    def __init__(self, inner: AuditSink) -> None:
        self.inner = inner

    def emit(self, events: Sequence[AuditEvent]) -> None:
        correlation = _current.get()
        if correlation is not None:
            events = [
                dataclasses.replace(
                    e,
                    request_id=correlation.request_id,
                    correlation_id=correlation.request_id,
                    trace_id=correlation.trace_id,
                )
                for e in events
            ]
        self.inner.emit(events)

    def close(self) -> None:
        self.inner.close()
