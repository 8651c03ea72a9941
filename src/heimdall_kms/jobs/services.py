"""What a data job works with, each collaborator named (built by :mod:`heimdall_kms.composition`).

A job seals and opens values through the facade, asks the provider for the latest version,
writes the run's and each batch's audit events, publishes progress, and reports the KMS calls
its paced provider counted. Each of these is a field here, so a job never digs them out of the
facade.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from heimdall_kms.audit import AuditSink
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.service import Crypto

__all__ = ["JobServices"]


@dataclass(frozen=True, slots=True)
class JobServices:
    crypto: Crypto  # seals and opens the values (audited and counted per value)
    kms: KeyManagementService | None  # the provider under ``crypto``: versions, canaries
    audit: AuditSink  # the run's intent and outcome, one event per batch
    metrics: Metrics  # progress gauges, jobs running
    meter: MeteredProvider | None  # the paced provider's call counts and pacing
    stall_seconds: float  # a job stops after this long without progress
    propagation_seconds: float  # the bound on waiting for a new key version to wrap
    # The same provider and sink writing the legacy format (``reencrypt`` back to the engine);
    # None where the settings cannot write it.
    legacy_writer: Crypto | None = None

    @classmethod
    def of(cls, crypto: Crypto, meter: MeteredProvider | None = None) -> JobServices:
        """The services of a facade a caller built itself (tests, benchmarks, embedders).

        The composition root builds :class:`JobServices` directly; this is for code that holds
        only a :class:`Crypto`. ``meter`` defaults to the facade's provider when that is a
        :class:`MeteredProvider`. Its legacy writer is the facade's provider, sink and metrics
        writing the env-key format, where the settings hold the env key.
        """
        from heimdall_kms.composition import legacy_writer  # noqa: PLC0415 - the root imports us

        if meter is None and isinstance(crypto.kms, MeteredProvider):
            meter = crypto.kms
        # A data-plane-only provider serves a migration; re-encryption asks for the admin side.
        kms = cast(KeyManagementService | None, crypto.kms)
        settings = crypto.settings
        return cls(
            crypto,
            kms,
            crypto.audit,
            crypto.metrics,
            meter,
            settings.resilience.job_stall_seconds,
            settings.kms_propagation_seconds,
            legacy_writer(settings, crypto.kms, crypto.audit, crypto.metrics),
        )
