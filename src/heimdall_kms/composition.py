"""The composition root: the one place that builds the provider stack, the facade and the
collaborators of the data jobs, and hands each part what it uses.

The provider stack, innermost first:

* the configured provider (:func:`heimdall_kms.providers.open_provider`);
* :class:`~heimdall_kms.telemetry.tracing.TracedProvider`, a span per KMS call, when tracing
  is on (inside the retries: each attempt is its own span);
* :class:`~heimdall_kms.providers.resilient.ResilientProvider`, retries and the circuit breaker
  (none for ``local``: a file on this host has no network to break). Its patience depends on
  the caller (:class:`Caller`): an application's call is retried; a background job's call is
  tried once, because the job paces and retries whole batches itself;
* for a background job, :class:`~heimdall_kms.jobs.metered.MeteredProvider`, which paces the
  job's calls and counts them.

Metrics are explicit everywhere: the facade of :func:`facade` registers on prometheus-client's
global registry (the one an embedding application exposes); every other builder is told which
:class:`~heimdall_kms.metrics.Metrics` to use.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum

from heimdall_kms import modes
from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.audit.sink import FailureCountingSink
from heimdall_kms.config import ProviderName, Settings, WriteFormat
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.rate import TokenBucket
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.metrics import Metrics, default_metrics
from heimdall_kms.providers import KeyManagementService, KeyWrapper, open_provider
from heimdall_kms.providers.resilient import CircuitBreaker, ResilientProvider, RetryPolicy
from heimdall_kms.service import Crypto
from heimdall_kms.telemetry.tracing import traced

__all__ = [
    "Caller",
    "build_crypto",
    "facade",
    "job_provider",
    "job_services",
    "legacy_writer",
    "load_provider",
]

# botocore, google-api-core and azure-core already retry each request with backoff; doing it
# again around the whole batch would multiply the attempts. They keep the breaker.
_SDK_RETRIES = frozenset({ProviderName.AWS, ProviderName.GCP, ProviderName.AZURE})


class Caller(StrEnum):
    """Who calls the provider, which decides how patient the stack is."""

    ONLINE = "online"  # an application or an operator waiting: retried with backoff
    BACKGROUND = "background"  # a job that paces and retries its own batches: one attempt


def load_provider(settings: Settings, *, caller: Caller = Caller.ONLINE) -> KeyManagementService:
    """The configured provider with tracing, retries and the circuit breaker around it.

    Raises:
        ConfigurationError: no provider configured, not available in this release, or its
            SDK extra is not installed.
        KMSError: logging in to the KMS failed.
    """
    provider = traced(open_provider(settings))
    if settings.provider is ProviderName.LOCAL:
        return provider  # a file on this host: nothing to retry, no network to break
    options = settings.resilience
    single = caller is Caller.BACKGROUND or settings.provider in _SDK_RETRIES
    return ResilientProvider(
        provider,
        retry=RetryPolicy(1 if single else options.retry_attempts, options.retry_max_seconds),
        breaker=CircuitBreaker(options.breaker_threshold, options.breaker_cooldown_seconds),
    )


def job_provider(settings: Settings, rate_limit: float = 0.0) -> MeteredProvider:
    """The configured provider as a background job uses it: paced, at most ``rate_limit``
    requests per second (0: as many as the KMS allows), retried by the job itself.

    Raises:
        ConfigurationError, KMSError: as :func:`load_provider`.
    """
    return MeteredProvider(
        load_provider(settings, caller=Caller.BACKGROUND), TokenBucket(rate_limit)
    )


def build_crypto(
    settings: Settings,
    *,
    kms: KeyWrapper | None,
    audit: AuditSink,
    metrics: Metrics,
    default_actor: str = "application",
) -> Crypto:
    """The facade over parts the caller already holds (and closes with it).

    Raises:
        ConfigurationError: a KMS mode without a provider.
    """
    return Crypto(settings, kms=kms, audit=audit, default_actor=default_actor, metrics=metrics)


def facade(
    settings: Settings, *, audit: AuditSink | None = None, default_actor: str = "application"
) -> Crypto:
    """The application's facade (:func:`heimdall_kms.from_settings`): the online provider stack,
    the configured audit log (its write failures counted), the process-wide metrics.

    Raises:
        ConfigurationError: the provider cannot be built from the settings.
        KMSError: logging in to the KMS failed.
        AuditWriteError: the audit log cannot be opened.
    """
    kms = load_provider(settings) if modes.uses_kms(settings.mode) else None
    metrics = default_metrics()
    sink = audit if audit is not None else _counted_sink(settings, kms, metrics)
    # An application exposing prometheus-client's registry sees the first error (SPEC §12).
    metrics.preinitialise(
        kms.name.value if kms is not None else "legacy", legacy_key_ids=settings.legacy_keys
    )
    return build_crypto(settings, kms=kms, audit=sink, metrics=metrics, default_actor=default_actor)


def _counted_sink(settings: Settings, kms: KeyWrapper | None, metrics: Metrics) -> AuditSink:
    """The configured audit log, its write failures counted; the provider is closed if the
    log cannot be opened."""
    try:
        sink = open_sink(settings.audit_log, settings, metrics=metrics)
    except BaseException:
        if kms is not None:
            kms.close()
        raise
    return FailureCountingSink(sink, metrics.audit_write_failures.inc)


def legacy_writer(
    settings: Settings, kms: KeyWrapper | None, audit: AuditSink, metrics: Metrics
) -> Crypto | None:
    """The same provider, sink and metrics writing the legacy env-key format (the documented
    rollback switch), or None where the settings hold no env key to write with."""
    if settings.legacy_key_id not in settings.legacy_keys:
        return None
    legacy = dataclasses.replace(settings, hybrid_write=WriteFormat.LEGACY)
    return build_crypto(legacy, kms=kms, audit=audit, metrics=metrics)


def job_services(
    settings: Settings,
    kms: MeteredProvider,
    audit: AuditSink,
    metrics: Metrics,
    *,
    actor: str,
) -> JobServices:
    """What a data job uses, over a paced provider (:func:`job_provider`); closing
    ``services.crypto`` closes the provider and the sink.

    Raises:
        ConfigurationError: a KMS mode without a provider.
    """
    crypto = build_crypto(settings, kms=kms, audit=audit, metrics=metrics, default_actor=actor)
    return JobServices(
        crypto,
        kms,
        audit,
        metrics,
        kms,
        settings.resilience.job_stall_seconds,
        settings.kms_propagation_seconds,
        legacy_writer(settings, kms, audit, metrics),
    )
