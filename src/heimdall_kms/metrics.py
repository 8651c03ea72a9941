"""The Prometheus metrics of SPEC §7 and §12; nothing else in the package defines metrics.

Labels never carry per-record values (field names, record ids, actors): only the provider,
the key, the key version, the operation, the error type and, for the one-shot jobs, the
configured target, so cardinality stays bounded. ``Metrics(registry)`` registers them in an
embedding application's own registry; the default instance uses prometheus-client's global
registry.

Counters whose label values are known in advance are exported at 0 before their first event
(:meth:`Metrics.preinitialise`), so that ``rate()`` and ``increase()`` see the first error:
a series that appears with the value 1 has no earlier sample to be an increase from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from time import perf_counter

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from heimdall_kms import errors

__all__ = [
    "CIRCUIT_LEVELS",
    "ERROR_TYPES",
    "OPERATIONS",
    "ExposedMetrics",
    "JobMetrics",
    "Metrics",
    "default_metrics",
    "unexported_metrics",
]

# The operations heimdall_crypto_errors_total and the duration histogram are labelled with.
OPERATIONS = ("encrypt", "decrypt", "hmac", "rewrap")
# heimdall_kms_circuit_state: 0 closed, 1 half-open, 2 open (SPEC §12), by BreakerState value.
CIRCUIT_LEVELS = {"closed": 0, "half_open": 1, "open": 2}


def _error_types() -> tuple[str, ...]:
    """Every ``error_type`` declared in :mod:`heimdall_kms.errors`, in a stable order."""
    found: list[str] = []
    pending: list[type[errors.HeimdallKMSError]] = [errors.HeimdallKMSError]
    while pending:
        kind = pending.pop(0)
        # Subclasses defined elsewhere (a job's cancellation, a test's) are not the known set.
        if kind.__module__ == errors.__name__ and kind.error_type not in found:
            found.append(kind.error_type)
        pending.extend(kind.__subclasses__())
    return tuple(sorted(found))


ERROR_TYPES = _error_types()


class Metrics:
    """The service's metrics: SPEC §7 (crypto operations, re-encryption progress) and §12."""

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
        self.jobs_running = Gauge(
            "heimdall_reencryption_jobs_running",
            "Migration and re-encryption jobs running in this process (for the stall alert).",
            registry=registry,
        )
        self._init_spec12(registry)

    def _init_spec12(self, registry: CollectorRegistry) -> None:
        self.build_info = Gauge(
            "heimdall_build_info",
            "Always 1; the version label is the running heimdall-kms release.",
            ["version"],
            registry=registry,
        )
        # The package's own version; imported here because heimdall_kms/__init__ imports us.
        from heimdall_kms import __version__  # noqa: PLC0415

        self.build_info.labels(__version__).set(1)
        self.circuit_state = Gauge(
            "heimdall_kms_circuit_state",
            "The KMS circuit breaker: 0 closed, 1 half-open (probing), 2 open (failing fast).",
            ["provider"],
            registry=registry,
        )
        self.key_age = Gauge(
            "heimdall_key_age_seconds",
            "Age of the master key's latest version, from the KMS's own creation time.",
            ["provider", "key"],
            registry=registry,
        )
        self.rotation_due = Gauge(
            "heimdall_key_rotation_due_timestamp_seconds",
            "When the latest key version reaches the rotation cadence (Unix time).",
            ["provider", "key"],
            registry=registry,
        )
        self.audit_write_failures = Counter(
            "heimdall_audit_write_failures_total",
            "Audit events that could not be written (the operation was refused).",
            registry=registry,
        )
        self.audit_checkpoint_failures = Counter(
            "heimdall_audit_checkpoint_failures_total",
            "Signed audit checkpoints that failed: stage sign (the KMS), anchor (the insert) or "
            "syslog (the copy sent to syslog).",
            ["stage"],
            registry=registry,
        )
        self.audit_anchor_lag = Gauge(
            "heimdall_audit_anchor_lag_seconds",
            "Age of the oldest signed checkpoint not yet in the off-host anchor (0: caught up).",
            registry=registry,
        )

    @contextmanager
    def timed(self, operation: str, provider: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.operation_duration.labels(operation, provider).observe(perf_counter() - start)

    def set_progress(
        self, *, total: int, completed: int, failed: int, throttled: int = 0, kms_rate: float = 0
    ) -> None:
        """The job's values; ``throttled``: KMS answers "slow down" so far; ``kms_rate``: the
        KMS requests per second the job is paced at (0: not paced)."""
        self.reencryption_progress.labels("total").set(total)
        self.reencryption_progress.labels("completed").set(completed)
        self.reencryption_progress.labels("failed").set(failed)
        self.reencryption_progress.labels("throttled").set(throttled)
        self.reencryption_progress.labels("kms_rate").set(kms_rate)

    def preinitialise(self, provider: str, *, legacy_key_ids: Iterable[str] = ()) -> None:
        """Export 0 for every error series of ``provider`` and every legacy decrypt series."""
        for operation in OPERATIONS:
            for error_type in ERROR_TYPES:
                self.errors_total.labels(operation, provider, error_type)
        for key_id in legacy_key_ids:
            self.decrypt_total.labels("legacy", key_id)
        for stage in ("sign", "anchor", "syslog"):
            self.audit_checkpoint_failures.labels(stage)

    def watch_circuit(self, provider: str, state: Callable[[], str] | None) -> None:
        """Read the breaker's state at every scrape; without a breaker the circuit is closed."""
        child = self.circuit_state.labels(provider)
        if state is None:
            child.set(0)
        else:
            child.set_function(lambda: CIRCUIT_LEVELS[state()])

    def observe_key(
        self,
        provider: str,
        key: str,
        *,
        versions: Iterable[int],
        latest: int,
        created_at: datetime | None,
        due_at: datetime | None,
    ) -> None:
        """Key age and rotation due date (when the KMS gives a creation time), and the zero
        encrypt/decrypt series of the versions that can still be used."""
        self.encrypt_total.labels(provider, str(latest))
        for version in versions:
            self.decrypt_total.labels(provider, str(version))
        if created_at is not None:
            created = created_at.timestamp()
            # Computed at scrape time, so the age keeps growing between two KMS lookups.
            self.key_age.labels(provider, key).set_function(lambda: time.time() - created)
        if due_at is not None:
            self.rotation_due.labels(provider, key).set(due_at.timestamp())


class JobMetrics:
    """What only the one-shot jobs (CronJobs, systemd timers) export, next to :class:`Metrics`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_run = Gauge(
            "heimdall_job_last_run_timestamp_seconds",
            "When the job last ended (Unix time), successfully or not.",
            ["command"],
            registry=registry,
        )
        self.last_success = Gauge(
            "heimdall_job_last_success_timestamp_seconds",
            "When the job last ended successfully (Unix time).",
            ["command"],
            registry=registry,
        )
        self.duration = Gauge(
            "heimdall_job_duration_seconds",
            "How long the job's last run took.",
            ["command"],
            registry=registry,
        )
        self.census = Gauge(
            "heimdall_stored_values",
            "Values of a target by kind, as the last status census counted them "
            "(kind: kms_v1, legacy, unparseable, nested_envelope, plaintext, null, ...).",
            ["target", "kind"],
            registry=registry,
        )

    def finished(self, command: str, *, seconds: float, succeeded: bool) -> None:
        now = time.time()
        self.last_run.labels(command).set(now)
        self.duration.labels(command).set(seconds)
        if succeeded:
            self.last_success.labels(command).set(now)


class ExposedMetrics(Collector):
    """A registry as ``/metrics`` and the textfiles show it: without the ``_created`` samples.

    prometheus-client adds a ``<name>_created`` gauge next to every counter and histogram
    (the time the series was created); it is left out so that the exposition carries exactly
    the names SPEC §7 and §12 fix.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            # collect() builds fresh Metric objects, so filtering them changes nothing shared.
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


_default: Metrics | None = None
_default_lock = threading.Lock()


def unexported_metrics() -> Metrics:
    """Metrics on a registry of their own, which nothing exports: counted, seen by nobody."""
    return Metrics(CollectorRegistry())


def default_metrics() -> Metrics:
    """The process-wide instance on prometheus-client's global registry, made on first use."""
    global _default  # noqa: PLW0603 - one registration per process is the point.
    with _default_lock:
        if _default is None:
            _default = Metrics()
        return _default
