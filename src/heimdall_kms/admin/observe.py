"""What the admin service adds for its operators (SPEC §12): the metrics wired to the
provider, the breaker, the key and the audit sink; request correlation, spans and logs."""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heimdall_kms.audit import AuditSink
from heimdall_kms.audit.sink import FailureCountingSink
from heimdall_kms.config import Settings
from heimdall_kms.key_metrics import KeyMetricsRefresher
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.resilient import breaker_of
from heimdall_kms.telemetry.correlation import (
    CorrelatingSink,
    Correlation,
    from_headers,
    reset,
    use,
)
from heimdall_kms.telemetry.tracing import server_span, trace_id_of

__all__ = ["NATIVE_TELEMETRY_OFF", "Instrumented", "RequestContext", "instrument"]

_log = logging.getLogger("heimdall_kms.admin.requests")
_MAX_HEADER = 256
_SCRAPED = frozenset({"/metrics", "/healthz"})  # polled every few seconds: logged at debug
# FastAPI releases with native OpenTelemetry would add their own request spans next to
# RequestContext's and, with a logger provider, export validation failures "including
# exception messages" (a rejected body's values: plaintext). It is all turned off; the spans
# come from RequestContext, under this package's attribute rules, on every FastAPI release.
NATIVE_TELEMETRY_OFF: dict[str, Any] = (
    {
        "telemetry": {
            "tracing": False,
            "metrics": False,
            "logs": False,
            "operation_spans": False,
            "auto_configure": False,
        }
    }
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


@dataclass(frozen=True, slots=True)
class Instrumented:
    audit: AuditSink  # counts its write failures
    key_metrics: KeyMetricsRefresher


def instrument(
    settings: Settings,
    kms: KeyManagementService,
    metrics: Metrics,
    audit: AuditSink,
    *,
    key_metrics_seconds: float,
) -> Instrumented:
    """Zero series for the known labels, the breaker read at scrape time, the key refresher
    (not started), and the audit sink that counts failures."""
    provider = kms.name.value
    metrics.preinitialise(provider, legacy_key_ids=settings.legacy_keys)
    breaker = breaker_of(kms)
    metrics.watch_circuit(provider, (lambda: breaker.state.value) if breaker else None)
    refresher = KeyMetricsRefresher(
        kms,
        metrics,
        cadence=timedelta(days=settings.key_rotation_days),
        interval_seconds=key_metrics_seconds,
    )
    counted = FailureCountingSink(audit, metrics.audit_write_failures.inc)
    return Instrumented(CorrelatingSink(counted), refresher)


class RequestContext:
    """Outermost ASGI middleware: the request's correlation (``X-Request-ID``, echoed back,
    and ``traceparent``), its server span, and one request log line (info; debug for the
    scrapes of ``/metrics`` and ``/healthz``).

    The log line names the matched route's template (``/crypto/decrypt``), never the raw path
    or query string: a client could put a value there, and a query may carry a database URL.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        correlation = from_headers(
            _header(headers, b"x-request-id"), _header(headers, b"traceparent")
        )
        exchange = _Exchange(str(scope.get("method", "")), correlation, send)
        token = use(correlation)
        try:
            with server_span(
                f"HTTP {exchange.method}", correlation.traceparent, {"http.method": exchange.method}
            ) as current:
                own = trace_id_of(current)
                if correlation.trace_id is None and own is not None:
                    # No caller trace: the audit events name the trace this service started.
                    use(replace(correlation, trace_id=own))
                await self.app(scope, receive, exchange.send)
                if current is not None:
                    route = _route(scope)
                    current.update_name(f"{exchange.method} {route}")
                    current.set_attribute("http.route", route)
                    current.set_attribute("http.status_code", exchange.status)
        finally:
            exchange.log(_route(scope))
            reset(token)


class _Exchange:
    """One request's answer: its status, and the ``X-Request-ID`` added to its headers."""

    def __init__(self, method: str, correlation: Correlation, send: Send) -> None:
        self.method = method
        self.status = 500  # what the client gets if the app fails before answering
        self._header = (b"x-request-id", correlation.request_id.encode("ascii"))
        self._send = send
        self._started = time.perf_counter()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            message = {**message, "headers": [*message.get("headers", ()), self._header]}
        await self._send(message)

    def log(self, route: str) -> None:
        level = logging.DEBUG if route in _SCRAPED else logging.INFO
        fields = {
            "method": self.method,
            "route": route,
            "status": self.status,
            "duration_ms": round((time.perf_counter() - self._started) * 1000, 1),
        }
        _log.log(
            level,
            "%s %s %d",
            self.method,
            route,
            self.status,
            extra={"event": "http.request", "fields": fields},
        )


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    raw = headers.get(name)
    # Longer than any valid value: not even decoded.
    if raw is None or len(raw) > _MAX_HEADER:
        return None
    return raw.decode("latin-1")


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
