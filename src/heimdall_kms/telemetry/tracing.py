"""OpenTelemetry spans around KMS calls, jobs and admin API requests (extra ``otel``).

Nothing here imports OpenTelemetry unless tracing is wanted: either the standard ``OTEL_*``
variables ask for an exporter (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; ``OTEL_SDK_DISABLED=true`` turns it all off), which
:func:`configure` turns into an SDK tracer provider (service name and resource from
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, as the SDK reads them), or an embedding
application has set a tracer provider of its own. Otherwise every helper is a no-op.

Spans carry the provider, the key id, the operation, batch sizes and an error's
``error_type``: never a value, a context, an envelope or an exception's message.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.providers.base import KeyManagementService
from heimdall_kms.providers.wrapper import KMSOperation, ProviderWrapper

__all__ = [
    "TracedProvider",
    "active",
    "configure",
    "server_span",
    "span",
    "trace_id_of",
    "traced",
]

_T = TypeVar("_T")
_EXPORTER_VARIABLES = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
_EXTRA = "tracing needs: pip install 'heimdall-kms[otel]'"


def configure(environ: Mapping[str, str]) -> None:
    """Install an SDK tracer provider when the ``OTEL_*`` variables ask for an exporter.

    Raises:
        ConfigurationError: tracing is asked for but the ``otel`` extra (or the chosen
            exporter) is not installed, or ``OTEL_TRACES_EXPORTER`` names an unknown one.
    """
    names = _asked_exporters(environ)
    if not names:
        return
    if importlib.util.find_spec("opentelemetry") is None:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER: {_EXTRA}")
    from opentelemetry import trace  # noqa: PLC0415 - the otel extra is optional.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    provider = TracerProvider(resource=Resource.create())
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)


def _asked_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters ``OTEL_*`` ask for; none when the SDK is off or nowhere to send is set."""
    if not _exporting(environ):
        return []
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    return [] if names == ["none"] else names


def _exporting(environ: Mapping[str, str]) -> bool:
    """Whether the SDK is on and a variable says where to send spans."""
    disabled = environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    return not disabled and any(environ.get(name, "").strip() for name in _EXPORTER_VARIABLES)


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        # stderr: stdout carries the command's output (an envelope, a JSON summary).
        return ConsoleSpanExporter(out=sys.stderr)
    if name != "otlp":
        raise ConfigurationError("OTEL_TRACES_EXPORTER: expected otlp, console or none")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ModuleNotFoundError:
        raise ConfigurationError(f"OTEL_TRACES_EXPORTER=otlp: {_EXTRA}") from None
    return OTLPSpanExporter()


def _tracer() -> Any | None:
    """The tracer, or None while nobody set up tracing (OpenTelemetry not even imported)."""
    if "opentelemetry.trace" not in sys.modules:
        return None
    from opentelemetry import trace  # noqa: PLC0415

    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    return trace.get_tracer("heimdall_kms")


def active() -> bool:
    return _tracer() is not None


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span around the block (None inside when tracing is off); an error is recorded by its
    ``error_type`` (or exception type) only."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(
        name,
        attributes=dict(attributes or {}),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            _failed(current, exc)
            raise


@contextlib.contextmanager
def server_span(name: str, traceparent: str | None, attributes: Mapping[str, Any]) -> Iterator[Any]:
    """The span of one admin API request, continuing the caller's trace when it sent a
    (validated) ``traceparent``."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    parent = None
    if traceparent is not None:
        parent = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.SERVER,
        attributes=dict(attributes),
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        try:
            yield current
        except BaseException as exc:
            _failed(current, exc)
            raise


def trace_id_of(current: Any) -> str | None:
    """The 32-hex trace id of a span from :func:`server_span`, if it is a real one."""
    if current is None:
        return None
    context = current.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def _failed(current: Any, exc: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

    error_type = exc.error_type if isinstance(exc, HeimdallKMSError) else type(exc).__name__
    current.set_attribute("heimdall.error_type", error_type)
    current.set_status(Status(StatusCode.ERROR, error_type))


def traced(kms: KeyManagementService) -> KeyManagementService:
    """``kms`` with a span per KMS call when tracing is on (checked once, now)."""
    return TracedProvider(kms) if active() else kms


class TracedProvider(ProviderWrapper):
    """A span per KMS call (each retry attempt is its own call, and its own span)."""

    def _around(self, operation: KMSOperation, call: Callable[[], _T], items: int | None) -> _T:
        attributes: dict[str, Any] = {
            "heimdall.provider": self.name.value,
            "heimdall.key": self.key_identifier,
        }
        if items is not None:
            attributes["heimdall.batch_size"] = items
        with span(f"kms.{operation.value}", attributes) as current:
            result = call()
            _count_failed_items(current, result)
            return result


def _count_failed_items(current: Any, result: object) -> None:
    """On a batch call's span, how many of its items failed."""
    if current is not None and isinstance(result, list):
        failed = sum(isinstance(r, HeimdallKMSError) for r in result)
        current.set_attribute("heimdall.failed_items", failed)
