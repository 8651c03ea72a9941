"""What the routes share: the app's state, the health check, and the role dependencies."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from heimdall_kms.admin.auth import Guard, Principal, Role
from heimdall_kms.admin.jobs import JobRunner
from heimdall_kms.admin.scheduler import RotationScheduler
from heimdall_kms.admin.targets import ServerTargets, refuse_unknown_query
from heimdall_kms.async_crypto import AsyncCrypto
from heimdall_kms.audit import AuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.key_metrics import KeyMetricsRefresher
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyAdmin, KeyManagementService

__all__ = [
    "IDENTIFIER",
    "Admin",
    "AdminState",
    "AppRole",
    "Decrypter",
    "HealthCheck",
    "Reader",
    "require",
    "state_of",
]

_bearer = HTTPBearer(
    scheme_name="bearer",
    description="A token whose SHA-256 is listed in HMD_ADMIN_TOKENS_FILE with its role.",
    auto_error=False,
)
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$"


class HealthCheck:
    """A real wrap/unwrap round trip per check. While one is in flight, other callers get
    the latest completed result instead of waiting: a flood of unauthenticated ``/healthz``
    calls costs the KMS at most one round trip at a time and ties up no worker threads."""

    def __init__(self, kms: KeyAdmin) -> None:
        self._kms = kms
        self._lock = threading.Lock()
        self._checked = False
        self._error: str | None = None

    def check(self) -> str | None:
        """None when the KMS is usable, else the error type."""
        # Until the first result exists there is nothing to answer with, so callers wait.
        if not self._lock.acquire(blocking=not self._checked):
            return self._error
        try:
            self._kms.health()
            self._error = None
        except HeimdallKMSError as exc:
            self._error = exc.error_type
        finally:
            self._checked = True
            self._lock.release()
        return self._error


@dataclass
class AdminState:
    settings: Settings
    kms: KeyManagementService
    audit: AuditSink
    registry: CollectorRegistry
    metrics: Metrics
    guard: Guard
    jobs: JobRunner
    health: HealthCheck
    scheduler: RotationScheduler | None
    key_metrics: KeyMetricsRefresher
    targets: ServerTargets  # the only database and columns requests may name
    # The value routes' shared coalescer: concurrent requests share batched KMS calls.
    values: AsyncCrypto

    @property
    def cadence(self) -> timedelta:
        return timedelta(days=self.settings.key_rotation_days)


def state_of(request: Request) -> AdminState:
    state: AdminState = request.app.state.admin
    return state


def require(*roles: Role) -> Callable[..., Principal]:
    allowed = frozenset(roles)

    def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    ) -> Principal:
        principal = state_of(request).guard.check(request, credentials, allowed)
        refuse_unknown_query(request)  # after the token check: a stranger gets 401 first
        return principal

    return dependency


Admin = Annotated[Principal, Depends(require(Role.ADMIN))]
Reader = Annotated[Principal, Depends(require(Role.ADMIN, Role.AUDIT))]
AppRole = Annotated[Principal, Depends(require(Role.APP))]
Decrypter = Annotated[Principal, Depends(require(Role.APP, Role.WORKER))]
