"""How long re-encrypting the configured targets would take, against the 24-hour SLA.

The count per target comes from the census (read-only, no KMS call); the rate is measured:
either a drill's own timed re-encryption step, or :func:`measure_encrypt_rate` — a bounded
sample of synthetic values sealed through the configured KMS in a throwaway context whose
audit events and metrics stay in memory (nothing is stored, nothing reaches the audit
log or the exported metrics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from heimdall_kms.config import ProviderName
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import DEFAULT_BATCHING, batching_of
from heimdall_kms.service import Crypto

__all__ = [
    "SLA_SECONDS",
    "Projection",
    "TargetCount",
    "measure_encrypt_rate",
    "values_per_request",
]

SLA_SECONDS = 24 * 3600.0
_SAMPLE_FIELD = "heimdall-estimate-sample"


@dataclass(frozen=True, slots=True)
class TargetCount:
    """``values`` to re-encrypt; ``unclassified``: unparseable or nested envelopes the census
    saw but could not count as either (never in the projection, always reported)."""

    target: str
    values: int
    unclassified: int = 0


@dataclass(frozen=True, slots=True)
class Projection:
    """``values`` at ``rate`` values/s; ``rate_source`` says how the rate was measured."""

    targets: tuple[TargetCount, ...]
    rate: float
    rate_source: str
    sla_seconds: float = SLA_SECONDS

    @property
    def values(self) -> int:
        return sum(t.values for t in self.targets)

    @property
    def seconds(self) -> float:
        if self.values == 0:
            return 0.0
        return self.values / self.rate if self.rate > 0 else float("inf")

    @property
    def within_sla(self) -> bool:
        return self.seconds <= self.sla_seconds

    def to_dict(self) -> dict[str, Any]:
        finite = self.seconds != float("inf")
        return {
            "targets": [
                {"target": t.target, "values": t.values, "unclassified": t.unclassified}
                for t in self.targets
            ],
            "values": self.values,
            "rate_per_second": round(self.rate, 1),
            "rate_source": self.rate_source,
            "projected_seconds": round(self.seconds, 1) if finite else None,
            "sla_seconds": self.sla_seconds,
            "within_sla": self.within_sla,
        }

    def summary(self) -> str:
        """``projected 3h 20m for 12,000,000 values at 1,000/s: within the 24 h SLA``."""
        sla = f"{self.sla_seconds / 3600:g} h SLA"
        verdict = (
            f"within the {sla}"
            if self.within_sla
            else f"OVER the {sla}: add workers (see docs/performance.md)"
        )
        return (
            f"projected {_duration(self.seconds)} for {self.values:,} values at "
            f"{self.rate:,.0f}/s: {verdict}"
        )

    def lines(self) -> list[str]:
        return [
            *(f"  {t.target}: {t.values:,} values{_unclassified(t)}" for t in self.targets),
            f"  rate: {self.rate_source}",
            f"  {self.summary()}",
        ]


def measure_encrypt_rate(crypto: Crypto, *, sample: int, batch_size: int) -> float:
    """Values per second sealed through ``crypto`` in batches, over ``sample`` synthetic values.

    The values are made up (no stored value is read) and the envelopes are thrown away: pass a
    facade whose audit events stay in memory (:func:`heimdall_kms.composition.memory_crypto`).
    Database reads and writes are not in the sample.

    Raises:
        KMSError: the KMS failed.
    """
    items = [(f"sample-{i:07d}", {"field": _SAMPLE_FIELD, "record": str(i)}) for i in range(sample)]
    started = time.perf_counter()
    for start in range(0, sample, batch_size):
        crypto.encrypt_many(items[start : start + batch_size], actor="heimdall-estimate")
    elapsed = time.perf_counter() - started
    return sample / elapsed if elapsed > 0 else float("inf")


def values_per_request(kms: KeyWrapper, batch_size: int) -> int:
    """How many values one paced KMS request carries (as the job's pacing counts them):
    Vault a whole Transit batch, the local provider a call; AWS, GCP and Azure one value."""
    batching = batching_of(kms)
    if batching is DEFAULT_BATCHING and kms.name is not ProviderName.LOCAL:
        return 1
    return max(1, min(batch_size, batching.size))


def _unclassified(target: TargetCount) -> str:
    if not target.unclassified:
        return ""
    return (
        f" (and {target.unclassified:,} unparseable or nested values the census could not "
        "classify: not in the projection)"
    )


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "forever"
    minutes = round(seconds / 60)
    if minutes < 1:
        return f"{seconds:.0f}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"
