"""What the admin service adds for its operators: the SPEC §12 metrics wired to the provider,
the breaker, the key and the audit sink."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from heimdall_kms.audit import AuditSink
from heimdall_kms.audit.sink import FailureCountingSink
from heimdall_kms.config import Settings
from heimdall_kms.key_metrics import KeyMetricsRefresher
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.resilient import breaker_of

__all__ = ["Instrumented", "instrument"]


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
    return Instrumented(FailureCountingSink(audit, metrics.audit_write_failures.inc), refresher)
