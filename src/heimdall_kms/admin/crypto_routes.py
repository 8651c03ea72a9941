"""The value routes (``/crypto/encrypt``, ``/crypto/decrypt``) and the unauthenticated
operations routes (``/healthz``, ``/metrics``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from heimdall_kms.admin.schemas import (
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    Health,
    body_doc,
    json_body,
)
from heimdall_kms.admin.state import DENIED, AppRole, Decrypter, state_of
from heimdall_kms.metrics import ExposedMetrics

__all__ = ["router"]

# Plaintext and envelopes must not linger in a proxy's or a client's cache.
_NO_STORE = {"Cache-Control": "no-store"}
router = APIRouter()


@router.post(
    "/crypto/encrypt",
    summary="Encrypt one value, bound to its context (role app)",
    responses=DENIED,
    openapi_extra=body_doc(EncryptRequest),
    tags=["crypto"],
)
def encrypt(
    request: Request,
    principal: AppRole,
    body: Annotated[EncryptRequest, Depends(json_body(EncryptRequest))],
) -> JSONResponse:
    crypto = state_of(request).crypto(request)
    envelope = crypto.encrypt(body.plaintext, context=body.context, actor=principal.actor)
    return JSONResponse(envelope.to_dict(), headers=_NO_STORE)


@router.post(
    "/crypto/decrypt",
    response_model=DecryptResponse,
    summary="Decrypt one envelope; the token and the reason are audited (roles app, worker)",
    responses=DENIED,
    openapi_extra=body_doc(DecryptRequest),
    tags=["crypto"],
)
def decrypt(
    request: Request,
    principal: Decrypter,
    body: Annotated[DecryptRequest, Depends(json_body(DecryptRequest))],
) -> JSONResponse:
    crypto = state_of(request).crypto(request)
    text = crypto.decrypt(
        body.envelope, actor=principal.actor, reason=body.reason, context=body.context
    )
    return JSONResponse({"plaintext": text}, headers=_NO_STORE)


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    summary="200 when a real wrap/unwrap round trip through the KMS works, else 503",
    responses={503: {"model": Health, "description": "The KMS cannot be used."}},
    tags=["ops"],
)
def healthz(request: Request) -> JSONResponse:
    state = state_of(request)
    error = state.health.check()
    # The circuit breaker's state (remote providers): "open" means calls are failing fast.
    breaker = getattr(state.kms, "breaker", None)
    circuit = {"circuit": breaker.state.value} if breaker is not None else {}
    if error is not None:
        body = {"status": "unavailable", "error_type": error, **circuit}
        return JSONResponse(body, status_code=503)
    return JSONResponse(
        {
            "status": "ok",
            "provider": state.kms.name.value,
            "key": state.kms.key_identifier,
            **circuit,
        }
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics (SPEC §7 and §12; see docs/operations.md)",
    response_class=Response,
    tags=["ops"],
)
def metrics(request: Request) -> Response:
    exposed = ExposedMetrics(state_of(request).registry)
    return Response(generate_latest(exposed), media_type=CONTENT_TYPE_LATEST)
