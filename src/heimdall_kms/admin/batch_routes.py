"""The batch value routes (``/crypto/encrypt-batch``, ``/crypto/decrypt-batch``) for callers
in other languages: up to ``MAX_BATCH_ITEMS`` values per request, one result or error per item.

The items go through the app's coalescer (:class:`heimdall_kms.async_crypto.AsyncCrypto`), so
they are sealed or opened in batched KMS calls (one per ``max_batch`` items, shared with
concurrent requests), and every item gets its own audit event: the token's actor, the request's
``X-Request-ID`` and client address, and for decrypts the request's reason. An item's own
error (bad input, tampered or moved value, malformed envelope) is its result and touches no
other item; the answer is 200 whenever the body itself was valid.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from heimdall_kms.admin.schemas import (
    MAX_BATCH_ITEMS,
    DecryptBatchRequest,
    DecryptBatchResponse,
    EncryptBatchRequest,
    EncryptBatchResponse,
    json_body,
)
from heimdall_kms.admin.state import AppRole, Decrypter
from heimdall_kms.admin.value_calls import NO_STORE, caller, value_route
from heimdall_kms.envelope import Envelope
from heimdall_kms.errors import HeimdallKMSError

__all__ = ["router"]

router = APIRouter()
_T = TypeVar("_T")


@value_route(
    router,
    "/crypto/encrypt-batch",
    EncryptBatchRequest,
    f"Encrypt up to {MAX_BATCH_ITEMS} values, each bound to its context (role app)",
    EncryptBatchResponse,
)
async def encrypt_batch(
    request: Request,
    principal: AppRole,
    body: Annotated[EncryptBatchRequest, Depends(json_body(EncryptBatchRequest))],
) -> JSONResponse:
    origin, values = caller(request, principal)
    outcomes = await _each(values.encrypt_for(origin, i.plaintext, i.context) for i in body.items)
    results = [
        {"error": _item_error(o)} if isinstance(o, HeimdallKMSError) else {"envelope": _doc(o)}
        for o in outcomes
    ]
    return _answer(results)


@value_route(
    router,
    "/crypto/decrypt-batch",
    DecryptBatchRequest,
    f"Decrypt up to {MAX_BATCH_ITEMS} envelopes; each item is audited with the token "
    "and the reason (roles app, worker)",
    DecryptBatchResponse,
)
async def decrypt_batch(
    request: Request,
    principal: Decrypter,
    body: Annotated[DecryptBatchRequest, Depends(json_body(DecryptBatchRequest))],
) -> JSONResponse:
    origin, values = caller(request, principal, body.reason)
    outcomes = await _each(values.decrypt_for(origin, i.envelope, i.context) for i in body.items)
    results = [
        {"error": _item_error(o)} if isinstance(o, HeimdallKMSError) else {"plaintext": o}
        for o in outcomes
    ]
    return _answer(results)


async def _each(calls: Any) -> list[_T | HeimdallKMSError]:
    """Every call's result or its own package error; anything else is raised (a 500)."""

    async def one(call: Awaitable[_T]) -> _T | HeimdallKMSError:
        try:
            return await call
        except HeimdallKMSError as exc:
            return exc

    return list(await asyncio.gather(*(one(call) for call in calls)))


def _doc(envelope: Envelope) -> dict[str, Any]:
    return envelope.to_dict()


def _item_error(exc: HeimdallKMSError) -> dict[str, Any]:
    # The package's messages are built without values or secrets (as the error handlers).
    return {
        "error_type": exc.error_type,
        "detail": " ".join(str(exc).split()),
        "retryable": exc.retryable,
    }


def _answer(results: list[dict[str, Any]]) -> JSONResponse:
    failed = sum(1 for result in results if "error" in result)
    return JSONResponse({"results": results, "failed": failed}, headers=NO_STORE)
