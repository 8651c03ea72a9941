"""What every value route (one value or a batch) shares: its declaration and its caller.

A value route is a ``POST`` under ``/crypto/`` that needs a role, documents its JSON body and
the refusals (401, 403, 422), and never lets a proxy cache its answer. Every value it handles
is audited with the token's actor, the request's client address and, for decrypts, the reason:
:func:`caller` captures that once per request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel

from heimdall_kms.admin.auth import Principal, source_ip
from heimdall_kms.admin.openapi_doc import KMS_FAILED, body_doc
from heimdall_kms.admin.state import state_of
from heimdall_kms.async_crypto import AsyncCrypto
from heimdall_kms.coalescing import Origin

__all__ = ["NO_STORE", "caller", "value_route"]

# Plaintext and envelopes must not linger in a proxy's or a client's cache.
NO_STORE = {"Cache-Control": "no-store"}

_F = TypeVar("_F", bound=Callable[..., Any])


def value_route(
    router: APIRouter,
    path: str,
    body: type[BaseModel],
    summary: str,
    response_model: type[BaseModel] | None = None,
) -> Callable[[_F], _F]:
    """Declare ``POST path`` on ``router`` as a value route taking ``body``."""
    return router.post(
        path,
        response_model=response_model,
        summary=summary,
        responses=KMS_FAILED,
        openapi_extra=body_doc(body),
        tags=["crypto"],
    )


def caller(
    request: Request, principal: Principal, reason: str | None = None
) -> tuple[Origin, AsyncCrypto]:
    """Who asks (for the audit events of every value of the request) and the app's coalescer.

    Concurrent requests share batched KMS calls; each event still names its own caller.
    """
    return Origin.capture(principal.actor, reason, source_ip(request)), state_of(request).values
