"""The admin HTTP API (SPEC §7): routes, roles, and :func:`create_app`.

Role map (``auth.Role``)::

    POST /admin/crypto/reencrypt          admin
    GET  /admin/crypto/reencrypt/status   admin, audit
    POST /admin/crypto/rotate             admin
    GET  /admin/crypto/keys               admin, audit
    POST /crypto/encrypt                  app
    POST /crypto/decrypt                  app, worker
    POST /crypto/encrypt-batch            app
    POST /crypto/decrypt-batch            app, worker
    GET  /healthz (and HEAD), /metrics, /openapi.json   no token

``admin`` manages keys and data but cannot read a value: separation of duties. Every route
that needs a token checks it before it reads the body, then refuses undeclared query
parameters. Jobs and value counts work only on the service's own database and targets
(:mod:`heimdall_kms.admin.targets`): a request never names a database URL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry

from heimdall_kms import __version__, modes
from heimdall_kms.admin import batch_routes, crypto_routes
from heimdall_kms.admin._http import MAX_BODY_BYTES, BodyLimit, install_error_handlers
from heimdall_kms.admin.auth import Guard, TokenTable, source_ip
from heimdall_kms.admin.jobs import JobRunner, JobSpec, SharedSink
from heimdall_kms.admin.observe import NATIVE_TELEMETRY_OFF, RequestContext, instrument
from heimdall_kms.admin.openapi_doc import DENIED, KMS_FAILED, body_doc, error_doc
from heimdall_kms.admin.scheduler import RotationScheduler
from heimdall_kms.admin.schemas import (
    JobAccepted,
    JobStatus,
    ReencryptRequest,
    RotateRequest,
    json_body,
)
from heimdall_kms.admin.state import IDENTIFIER, Admin, AdminState, HealthCheck, Reader, state_of
from heimdall_kms.admin.targets import ServerTargets, open_checked
from heimdall_kms.async_crypto import AsyncCrypto
from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.coalescing import LaneLimits
from heimdall_kms.composition import Caller, build_crypto, load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError
from heimdall_kms.jobs.key_report import key_report
from heimdall_kms.jobs.propagation import Propagation
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.jobs.rotation_lock import rotation_lock
from heimdall_kms.key_metrics import DEFAULT_REFRESH_SECONDS
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.store import FieldStore

__all__ = ["create_app"]

router = APIRouter()
_COALESCING = LaneLimits()  # 2 ms window, 250 per batch, 4 batches in flight


@router.post(
    "/admin/crypto/reencrypt",
    status_code=202,
    response_model=JobAccepted,
    summary="Start a background migrate / rewrap / full re-encryption job (role admin)",
    responses={
        **DENIED,
        409: error_doc("A job runs on that column, the wrong mode, or no database configured."),
    },
    openapi_extra=body_doc(ReencryptRequest),
    tags=["admin"],
)
def start_job(
    request: Request,
    principal: Admin,
    body: Annotated[ReencryptRequest, Depends(json_body(ReencryptRequest))],
) -> JobAccepted:
    state = state_of(request)
    database, target = state.targets.resolve("body", body.table, body.column, body.id_column)
    spec = JobSpec(database, target, body.mode, body.batch_size, body.interval_seconds)
    return JobAccepted(job_id=state.jobs.start(spec, principal.actor))


@router.get(
    "/admin/crypto/reencrypt/status",
    response_model=JobStatus,
    response_model_exclude_none=True,
    summary="State and counts of the latest job, or of ?job=ID (roles admin, audit)",
    responses={**DENIED, 404: error_doc("No job with that id.")},
    tags=["admin"],
)
def job_status(
    request: Request,
    principal: Reader,
    job: Annotated[str | None, Query(max_length=64, description="A job id.")] = None,
) -> dict[str, Any]:
    status = state_of(request).jobs.status(job)
    if status is None:
        raise HTTPException(404, detail="no such job")
    return status


@router.post(
    "/admin/crypto/rotate",
    summary="Create a new master key version; with if_due only when due (role admin)",
    responses={**KMS_FAILED, 409: error_doc("The rotation lock cannot be used (configuration).")},
    openapi_extra=body_doc(RotateRequest, required=False),
    tags=["admin"],
)
def rotate_key(
    request: Request,
    principal: Admin,
    body: Annotated[RotateRequest, Depends(json_body(RotateRequest, optional=True))],
) -> dict[str, Any]:
    state = state_of(request)
    result = rotate(
        state.kms,
        SharedSink(state.audit, source_ip=source_ip(request)),
        actor=principal.actor,
        if_due=body.if_due,
        cadence=state.cadence,
        reason=body.reason,
        # Answered once the KMS wraps with the new version (docs/rotation.md).
        propagation=Propagation(bound_seconds=state.settings.kms_propagation_seconds),
        # The lock `rotate --if-due` and the scheduler take: one rotation per period.
        lock=rotation_lock(state.settings, state.kms),
    )
    if result.rotated:
        state.key_metrics.refresh()  # the new version's age and due date, without waiting
    return result.to_dict()


@router.get(
    "/admin/crypto/keys",
    summary="Key versions, ages, next rotation; values per version of a column (admin, audit)",
    responses={**KMS_FAILED, 409: error_doc("A column was named but no database is configured.")},
    tags=["admin"],
)
def keys(
    request: Request,
    principal: Reader,
    *,
    table: Annotated[str | None, Query(pattern=IDENTIFIER)] = None,
    column: Annotated[str | None, Query(pattern=IDENTIFIER)] = None,
    id_column: Annotated[str, Query(pattern=IDENTIFIER)] = "id",
) -> dict[str, Any]:
    state = state_of(request)
    stores: list[FieldStore] = []
    if table or column:
        stores.append(_open_for_reading(state, table, column, id_column))
    try:
        return key_report(state.kms, cadence=state.cadence, stores=stores)
    finally:
        for store in stores:
            store.close()


def _open_for_reading(
    state: AdminState, table: str | None, column: str | None, id_column: str
) -> FieldStore:
    named_table, named_column = _named(table, column)
    url, target = state.targets.resolve("query", named_table, named_column, id_column)
    return open_checked(url, target, writable=False)


def _named(table: str | None, column: str | None) -> tuple[str, str]:
    """The table and column of a query that names either: it must name both.

    Raises:
        RequestValidationError: one of them is missing (both are named in the problems).
    """
    if table and column:
        return table, column
    problems = [
        {"loc": ("query", name), "msg": msg, "type": "value_error"}
        for name, msg, bad in (
            ("table", "required with column", not table),
            ("column", "required with table", not column),
        )
        if bad
    ]
    raise RequestValidationError(problems)


def create_app(
    settings: Settings,
    tokens: TokenTable,
    *,
    audit: AuditSink | None = None,
    registry: CollectorRegistry | None = None,
    provider_factory: Callable[[], KeyManagementService] | None = None,
    targets: ServerTargets | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    key_metrics_seconds: float = DEFAULT_REFRESH_SECONDS,
    coalescing: LaneLimits = _COALESCING,
) -> FastAPI:
    """Build the admin API. The provider (and, unless given, the audit sink) is opened now
    and closed when the app shuts down; background jobs are stopped between two batches.
    Requests work only on ``targets`` (default: any column of ``HMD_DATABASE_URL``).
    ``coalescing``: how the value routes batch concurrent requests (docs/admin-api.md).

    Raises:
        ConfigurationError: legacy mode (no KMS), or the provider cannot be built.
        KMSError: logging in to the KMS failed. AuditWriteError: the audit log cannot open.
    """
    if not modes.uses_kms(settings.mode):
        raise ConfigurationError(
            "HMD_ENCRYPTION_MODE: the admin API needs a KMS (hybrid or kms); it is legacy"
        )
    factory = provider_factory or partial(load_provider, settings)
    kms = factory()
    registry = registry if registry is not None else CollectorRegistry()
    metrics = Metrics(registry)
    sink = _open_audit(settings, kms, audit, metrics)
    observed = instrument(settings, kms, metrics, sink, key_metrics_seconds=key_metrics_seconds)
    sink = observed.audit
    scheduler = _scheduler(settings, kms, sink)
    targets = targets or ServerTargets(settings.database_url)
    state = AdminState(
        settings,
        kms,
        sink,
        registry,
        metrics,
        Guard(tokens, sink),
        _job_runner(settings, sink, metrics, provider_factory, targets),
        HealthCheck(kms),
        scheduler,
        observed.key_metrics,
        targets,
        AsyncCrypto(
            build_crypto(settings, kms=kms, audit=SharedSink(sink), metrics=metrics),
            window_seconds=coalescing.window_seconds,
            max_batch=coalescing.max_batch,
            in_flight=coalescing.in_flight,
            owns_crypto=False,  # the provider and the sink are closed below, after the jobs
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.key_metrics.start()
        state.jobs.start_supervisor()  # resumes jobs whose replica died or stopped
        if state.scheduler is not None:
            state.scheduler.start()
        try:
            yield
        finally:
            if state.scheduler is not None:
                state.scheduler.stop()
            await state.values.aclose()  # pending value calls run before the provider closes
            state.jobs.shutdown()
            state.key_metrics.stop()
            state.guard.close()  # the refusals still counted, before the sink closes
            kms.close()
            if audit is None:
                sink.close()

    app = FastAPI(
        title="heimdall-kms admin API",
        version=__version__,
        description="Key rotation, re-encryption jobs and envelope encryption over a KMS. "
        "See docs/admin-api.md.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        **NATIVE_TELEMETRY_OFF,
    )
    app.state.admin = state
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(RequestContext)  # added last: outermost, so 413s are logged too
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(crypto_routes.router)
    app.include_router(batch_routes.router)
    return app


def _open_audit(
    settings: Settings, kms: KeyManagementService, audit: AuditSink | None, metrics: Metrics
) -> AuditSink:
    """``audit``, or the sink of ``HMD_AUDIT_LOG``; the provider is closed if that fails."""
    if audit is not None:
        return audit
    try:
        return open_sink(settings.audit_log, settings, metrics=metrics)
    except BaseException:
        kms.close()
        raise


def _job_runner(
    settings: Settings,
    sink: AuditSink,
    metrics: Metrics,
    provider_factory: Callable[[], KeyManagementService] | None,
    targets: ServerTargets,
) -> JobRunner:
    # Background jobs pace and retry their own calls (one attempt per call below them).
    return JobRunner(
        settings,
        sink,
        metrics,
        provider_factory or partial(load_provider, settings, caller=Caller.BACKGROUND),
        database=targets.database,  # the records live next to the data (docs/admin-api.md)
        lease_seconds=settings.admin_job_lease_seconds,
    )


def _scheduler(
    settings: Settings, kms: KeyManagementService, sink: AuditSink
) -> RotationScheduler | None:
    """The in-process rotation check, where ``HMD_ROTATION_CHECK_SECONDS`` asks for one."""
    if settings.rotation_check_seconds is None:
        return None
    return RotationScheduler(
        kms,
        sink,
        cadence=timedelta(days=settings.key_rotation_days),
        interval_seconds=settings.rotation_check_seconds,
        propagation=Propagation(bound_seconds=settings.kms_propagation_seconds),
        lock=rotation_lock(settings, kms),
    )
