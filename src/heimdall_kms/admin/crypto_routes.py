"""The value routes (``/crypto/encrypt``, ``/crypto/decrypt``) and the unauthenticated
operations routes (``/healthz``, ``/metrics``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from heimdall_kms.admin.schemas import (
    DecryptRequest,
    DecryptResponse,
    EncryptRequest,
    Health,
    json_body,
)
from heimdall_kms.admin.state import AppRole, Decrypter, state_of
from heimdall_kms.admin.value_calls import NO_STORE, caller, value_route
from heimdall_kms.metrics import ExposedMetrics

__all__ = ["router"]

router = APIRouter()


@value_route(
    router, "/crypto/encrypt", EncryptRequest, "Encrypt one value, bound to its context (role app)"
)
async def encrypt(
    request: Request,
    principal: AppRole,
    body: Annotated[EncryptRequest, Depends(json_body(EncryptRequest))],
) -> JSONResponse:
    origin, values = caller(request, principal)
    envelope = await values.encrypt_for(origin, body.plaintext, body.context)
    return JSONResponse(envelope.to_dict(), headers=NO_STORE)


@value_route(
    router,
    "/crypto/decrypt",
    DecryptRequest,
    "Decrypt one envelope; the token and the reason are audited (roles app, worker)",
    DecryptResponse,
)
async def decrypt(
    request: Request,
    principal: Decrypter,
    body: Annotated[DecryptRequest, Depends(json_body(DecryptRequest))],
) -> JSONResponse:
    origin, values = caller(request, principal, body.reason)
    text = await values.decrypt_for(origin, body.envelope, body.context)
    return JSONResponse({"plaintext": text}, headers=NO_STORE)


_HEALTH = "200 when a real wrap/unwrap round trip through the KMS works, else 503"
_UNHEALTHY: dict[int | str, dict[str, Any]] = {
    503: {"model": Health, "description": "The KMS cannot be used."}
}


@router.get(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    summary=_HEALTH,
    responses=_UNHEALTHY,
    tags=["ops"],
)
# Load balancers' health checks often ask with HEAD: the same check and status, no body (the
# server leaves it out). A route of its own, so the OpenAPI document gives it its own id.
@router.head(
    "/healthz",
    response_model=Health,
    response_model_exclude_none=True,
    summary=_HEALTH,
    responses=_UNHEALTHY,
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
