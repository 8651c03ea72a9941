"""HTTP plumbing of the admin API: the body size limit and the mapping of errors to answers.

Every error answer is ``{"error_type": ..., "detail": ...}``. ``error_type`` is the error
class's own label (``errors.py``); ``detail`` is the error's message, which this package
builds without secrets, or for a validation error the list of ``{loc, msg, type}`` with the
offending value left out. Errors are reported once, here, at the edge (STYLE §4.7).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heimdall_kms.errors import (
    AuditWriteError,
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    KMSUnavailableError,
    MalformedEnvelopeError,
    ModeViolationError,
    RateLimitedError,
    RefusedError,
    StoreError,
)
from heimdall_kms.metrics import ExposedMetrics

__all__ = [
    "MAX_BODY_BYTES",
    "BodyLimit",
    "ExposedMetrics",
    "error_response",
    "install_error_handlers",
]

MAX_BODY_BYTES = 1024 * 1024
_log = logging.getLogger(__name__)
_MAX_ERRORS = 20
_MAX_LOC_CHARS = 64

# First match wins, so subclasses come before their base class.
_STATUS: tuple[tuple[type[HeimdallKMSError], int], ...] = (
    (RateLimitedError, 429),
    (KMSUnavailableError, 503),
    (KeyNotFoundError, 422),
    (KeyVersionRetiredError, 422),
    # Our credentials were refused by the KMS: an upstream failure, not the caller's.
    (AuthenticationError, 502),
    (KMSError, 502),
    (ConfigurationError, 409),
    (RefusedError, 409),
    (InvalidInputError, 422),
    (MalformedEnvelopeError, 422),
    (IntegrityError, 422),
    (ModeViolationError, 422),
    (StoreError, 422),
    (AuditWriteError, 503),
)
_HTTP_ERROR_TYPES = {
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
}


def error_response(
    status: int, error_type: str, detail: Any, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error_type": error_type, "detail": detail},
        status_code=status,
        headers=dict(headers) if headers else None,
    )


def status_of(exc: HeimdallKMSError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 503 if exc.retryable else 500


def retry_after_header(exc: HeimdallKMSError) -> str:
    """The KMS's own Retry-After (whole seconds, at least 1) when it gave one; else 5."""
    retry_after = exc.retry_after if isinstance(exc, KMSError) else None
    return str(max(1, math.ceil(retry_after))) if retry_after is not None else "5"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HeimdallKMSError)
    async def _known(request: Request, exc: HeimdallKMSError) -> JSONResponse:
        status = status_of(exc)
        headers = {"Retry-After": retry_after_header(exc)} if exc.retryable else None
        return error_response(status, exc.error_type, " ".join(str(exc).split()), headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "loc": [_short(part) for part in error.get("loc", ())],
                "msg": str(error.get("msg", "")),
                "type": str(error.get("type", "")),
            }
            for error in exc.errors()[:_MAX_ERRORS]
        ]
        return error_response(422, "invalid_request", errors)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        error_type = _HTTP_ERROR_TYPES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, error_type, exc.detail, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The message of an unexpected exception could hold data: name only its type.
        _log.error("internal error (%s) on %s", type(exc).__name__, request.url.path)
        return error_response(500, "internal", "internal error")


def _short(part: object) -> str | int:
    # A location names a field; a client-chosen key could be long, so it is cut.
    if isinstance(part, int):
        return part
    return str(part)[:_MAX_LOC_CHARS]


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before any route sees them.

    The body is read (at most ``max_bytes``) before routing and replayed to the app, so the
    limit holds for chunked requests without a Content-Length too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refuse_declared(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body = await self._body(receive)
        if body is None:
            return  # The client went away before sending its body.
        if len(body) > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    def _refuse_declared(self, scope: Scope) -> JSONResponse | None:
        """The answer to a Content-Length that is not a number or over the limit, if so."""
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is None:
            return None
        try:
            length = int(declared)
        except ValueError:
            return error_response(400, "invalid_request", "bad Content-Length")
        return self._too_large() if length > self.max_bytes else None

    async def _body(self, receive: Receive) -> bytes | None:
        """The body, read up to the first chunk past the limit; None if the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_bytes or not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self) -> JSONResponse:
        return error_response(
            413, "too_large", f"request body is larger than {self.max_bytes} bytes"
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
