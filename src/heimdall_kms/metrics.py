"""The five Prometheus metrics of SPEC §7; nothing else in the package defines metrics.

Labels never carry per-record values (field names, record ids, actors): only the provider,
the key version, the operation and the error type, so cardinality stays bounded.
``Metrics(registry)`` registers them in an embedding application's own registry; the default
instance uses prometheus-client's global registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics", "default_metrics"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else REGISTRY
        self.encrypt_total = Counter(
            "heimdall_crypto_encrypt_total",
            "Values encrypted.",
            ["provider", "key_version"],
            registry=registry,
        )
        self.decrypt_total = Counter(
            "heimdall_crypto_decrypt_total",
            "Values decrypted.",
            ["provider", "key_version"],
            registry=registry,
        )
        self.operation_duration = Histogram(
            "heimdall_crypto_operation_duration_seconds",
            "Duration of crypto operations (one observation per call, batched or not).",
            ["operation", "provider"],
            registry=registry,
        )
        self.errors_total = Counter(
            "heimdall_crypto_errors_total",
            "Failed crypto operations by error type.",
            ["operation", "provider", "error_type"],
            registry=registry,
        )
        self.reencryption_progress = Gauge(
            "heimdall_reencryption_progress",
            "Progress of the current re-encryption job (values).",
            ["status"],
            registry=registry,
        )

    @contextmanager
    def timed(self, operation: str, provider: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.operation_duration.labels(operation, provider).observe(perf_counter() - start)

    def set_progress(self, *, total: int, completed: int, failed: int) -> None:
        self.reencryption_progress.labels("total").set(total)
        self.reencryption_progress.labels("completed").set(completed)
        self.reencryption_progress.labels("failed").set(failed)


_default: Metrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> Metrics:
    """The process-wide instance on prometheus-client's global registry, made on first use."""
    global _default  # noqa: PLW0603 - one registration per process is the point.
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default
