"""The projection of a re-encryption against the 24-hour SLA (arithmetic and wording)."""

from __future__ import annotations

import pytest

from heimdall_kms.config import ProviderName
from heimdall_kms.drill.report import DrillReport
from heimdall_kms.jobs.estimate import (
    SLA_SECONDS,
    MeasuredRate,
    Projection,
    TargetCount,
    Verdict,
    values_per_request,
)
from heimdall_kms.providers.base import Batching


def projection(*counts: int, rate: float) -> Projection:
    targets = tuple(TargetCount(f"t{i}.ssn", n) for i, n in enumerate(counts))
    return Projection(targets, rate, "measured")


class TestProjection:
    def test_the_example_of_the_issue(self) -> None:
        found = projection(8_000_000, 4_000_000, rate=1000)
        assert found.values == 12_000_000
        assert found.summary() == (
            "projected 3h 20m for 12,000,000 values at 1,000/s: within the 24 h SLA"
        )
        assert found.to_dict()["targets"] == [
            {"target": "t0.ssn", "values": 8_000_000, "unclassified": 0},
            {"target": "t1.ssn", "values": 4_000_000, "unclassified": 0},
        ]

    @pytest.mark.parametrize(
        ("values", "rate", "within"),
        [(86_400_000, 1000, True), (86_400_001, 1000, False), (1, 0.0, False), (0, 0.0, True)],
    )
    def test_the_sla_boundary(self, values: int, rate: float, within: bool) -> None:
        found = projection(values, rate=rate)
        assert found.within_sla is within
        assert found.to_dict()["within_sla"] is within
        assert ("OVER the 24 h SLA: add workers" in found.summary()) is not within

    def test_no_measured_rate_is_never_within_the_sla(self) -> None:
        found = projection(5, rate=0.0)
        assert found.to_dict()["projected_seconds"] is None
        assert "forever" in found.summary()
        assert found.sla_seconds == SLA_SECONDS


class TestARateThatLeavesWorkOut:
    """A rate measured without a target database's own reads and writes is an upper bound:
    the time is at least what it says, and "within" is never claimed from it."""

    def unmeasured(self, values: int, rate: float) -> Projection:
        targets = (TargetCount("t.ssn", values),)
        return Projection(targets, rate, "measured", unmeasured=("t.ssn (PostgreSQL)",))

    def test_under_the_sla_it_is_unconfirmed_not_within(self) -> None:
        found = self.unmeasured(8_000_000, rate=1000)
        assert found.verdict is Verdict.UNCONFIRMED and found.within_sla is False
        assert found.summary() == (
            "projected at least 2h 13m for 8,000,000 values at a rate of at most 1,000/s: NOT "
            "CONFIRMED "
            "against the 24 h SLA: the rate leaves out the database reads and writes of t.ssn "
            "(PostgreSQL); time a migration of a copy of the table to confirm it"
        )
        assert found.to_dict()["lower_bound"] is True
        assert found.to_dict()["verdict"] == "unconfirmed"

    def test_over_the_sla_it_is_over_all_the_more(self) -> None:
        found = self.unmeasured(86_400_001, rate=1000)
        assert found.verdict is Verdict.OVER and found.within_sla is False
        assert "projected at least 24h 00m" in found.summary()
        assert "OVER the 24 h SLA" in found.summary()

    def test_nothing_to_do_is_within(self) -> None:
        assert self.unmeasured(0, rate=1000).verdict is Verdict.WITHIN


class TestMeasuredRate:
    def test_the_rate_and_the_spread_of_its_batches(self) -> None:
        found = MeasuredRate(4000, 2.0, (1500.0, 2500.0, 2000.0))
        assert found.rate == 2000
        assert found.spread() == "batches 1,500-2,500/s (median 2,000)"
        assert found.to_dict() == {
            "values": 4000,
            "seconds": 2.0,
            "batches": 3,
            "batch_rate_min": 1500.0,
            "batch_rate_median": 2000.0,
            "batch_rate_max": 2500.0,
        }

    def test_no_values_no_rate(self) -> None:
        assert MeasuredRate(0, 0.0).rate == 0.0 and MeasuredRate(0, 0.0).spread() == ""


class TestDrillReportProjection:
    @pytest.mark.parametrize(("values", "passed"), [(1000, True), (10**12, False)])
    def test_a_projection_over_the_sla_fails_the_drill(self, values: int, passed: bool) -> None:
        report = DrillReport("compromise", "local", "k")
        with report.step("declare"):
            pass
        report.projection = projection(values, rate=1000)
        assert report.passed is passed
        assert report.to_dict()["projection"]["within_sla"] is passed
        assert ("OVER the 24 h SLA" in report.markdown()) is not passed


class _Named:
    """Only what values_per_request reads: a provider's name and, for Vault, its batching."""

    def __init__(self, name: ProviderName, batching: Batching | None = None) -> None:
        self.name = name
        if batching is not None:
            self.batching = batching


class TestValuesPerRequest:
    @pytest.mark.parametrize("name", [ProviderName.AWS, ProviderName.GCP, ProviderName.AZURE])
    def test_providers_without_batch_calls_send_one_value_per_request(
        self, name: ProviderName
    ) -> None:
        assert values_per_request(_Named(name), 250) == 1  # type: ignore[arg-type]

    def test_vault_carries_a_batch_up_to_its_own_size(self) -> None:
        vault = _Named(ProviderName.VAULT, Batching(size=250, in_flight=4))
        assert values_per_request(vault, 100) == 100  # type: ignore[arg-type]
        assert values_per_request(vault, 1000) == 250  # type: ignore[arg-type]
