"""How long re-encrypting the configured targets would take, against the 24-hour SLA.

The count per target comes from the census (read-only, no KMS call); the rate is measured end
to end: a real job over seeded values in a throwaway SQLite database (a drill's own timed
re-encryption step, or ``migrate --estimate``'s sample migration,
:func:`heimdall_kms.drill.sample.measure_migration`). A target in another database (PostgreSQL)
spends its own time reading and writing, which that rate leaves out: for it the projection is
a lower bound on the time, and the verdict never says "within" the SLA.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from heimdall_kms.config import ProviderName
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import DEFAULT_BATCHING, batching_of

__all__ = [
    "SLA_SECONDS",
    "MeasuredRate",
    "Projection",
    "TargetCount",
    "Verdict",
    "values_per_request",
]

SLA_SECONDS = 24 * 3600.0


class Verdict(StrEnum):
    """What the projection can say about the SLA."""

    WITHIN = "within"  # every target's work is in the measured rate, and it fits
    OVER = "over"  # it does not fit, even at a rate that leaves work out
    UNCONFIRMED = "unconfirmed"  # it fits only at a rate that leaves out work the job does


@dataclass(frozen=True, slots=True)
class MeasuredRate:
    """``values`` re-encrypted in ``seconds`` by a real job (its start included), and the
    values/s of each of its batches."""

    values: int
    seconds: float
    batch_rates: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.values / self.seconds if self.values and self.seconds > 0 else 0.0

    def spread(self) -> str:
        """``batches 2,870-3,410/s (median 3,120)``, or "" with fewer than two batches."""
        if len(self.batch_rates) < 2:
            return ""
        low, high = min(self.batch_rates), max(self.batch_rates)
        middle = statistics.median(self.batch_rates)
        return f"batches {low:,.0f}-{high:,.0f}/s (median {middle:,.0f})"

    def to_dict(self) -> dict[str, Any]:
        rates = self.batch_rates
        return {
            "values": self.values,
            "seconds": round(self.seconds, 3),
            "batches": len(rates),
            "batch_rate_min": round(min(rates), 1) if rates else None,
            "batch_rate_median": round(statistics.median(rates), 1) if rates else None,
            "batch_rate_max": round(max(rates), 1) if rates else None,
        }


@dataclass(frozen=True, slots=True)
class TargetCount:
    """``values`` to re-encrypt; ``unclassified``: unparseable or nested envelopes the census
    saw but could not count as either (never in the projection, always reported)."""

    target: str
    values: int
    unclassified: int = 0


@dataclass(frozen=True, slots=True)
class Projection:
    """``values`` at ``rate`` values/s; ``rate_source`` says how the rate was measured.

    ``unmeasured``: the targets whose database's own reads and writes the rate leaves out (a
    PostgreSQL target, measured on SQLite): the time is then a lower bound, and the verdict
    is at best :attr:`Verdict.UNCONFIRMED`. ``sample``: the measurement, batch by batch.
    """

    targets: tuple[TargetCount, ...]
    rate: float
    rate_source: str
    sla_seconds: float = SLA_SECONDS
    unmeasured: tuple[str, ...] = ()
    sample: MeasuredRate | None = None

    @property
    def values(self) -> int:
        return sum(t.values for t in self.targets)

    @property
    def seconds(self) -> float:
        if self.values == 0:
            return 0.0
        return self.values / self.rate if self.rate > 0 else float("inf")

    @property
    def lower_bound(self) -> bool:
        """The time leaves out work the job does (and the rate is an upper bound)."""
        return bool(self.unmeasured) and self.values > 0

    @property
    def verdict(self) -> Verdict:
        if self.seconds > self.sla_seconds:
            return Verdict.OVER
        return Verdict.UNCONFIRMED if self.lower_bound else Verdict.WITHIN

    @property
    def within_sla(self) -> bool:
        """Only a rate that holds every step of the job says so (a gate fails closed)."""
        return self.verdict is Verdict.WITHIN

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
            "rate_sample": None if self.sample is None else self.sample.to_dict(),
            "projected_seconds": round(self.seconds, 1) if finite else None,
            "lower_bound": self.lower_bound,
            "not_in_the_rate": list(self.unmeasured),
            "sla_seconds": self.sla_seconds,
            "verdict": self.verdict.value,
            "within_sla": self.within_sla,
        }

    def summary(self) -> str:
        """``projected 3h 20m for 12,000,000 values at 1,000/s: within the 24 h SLA``."""
        sla = f"{self.sla_seconds / 3600:g} h SLA"
        least, most = ("at least ", "a rate of at most ") if self.lower_bound else ("", "")
        verdicts = {
            Verdict.WITHIN: f"within the {sla}",
            Verdict.OVER: f"OVER the {sla}: add workers (see docs/performance.md)",
            Verdict.UNCONFIRMED: (
                f"NOT CONFIRMED against the {sla}: the rate leaves out the database reads and "
                f"writes of {', '.join(self.unmeasured)}; time a migration of a copy of the "
                "table to confirm it"
            ),
        }
        return (
            f"projected {least}{_duration(self.seconds)} for {self.values:,} values at "
            f"{most}{self.rate:,.0f}/s: {verdicts[self.verdict]}"
        )

    def lines(self) -> list[str]:
        return [
            *(f"  {t.target}: {t.values:,} values{_unclassified(t)}" for t in self.targets),
            f"  rate: {self.rate_source}",
            f"  {self.summary()}",
        ]


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
