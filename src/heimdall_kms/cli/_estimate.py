"""``migrate --estimate`` and the drill's projection: census counts, a measured rate, the SLA."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import click

from heimdall_kms.cli._targets import TargetSpec, checked_stores, resolve
from heimdall_kms.composition import job_provider
from heimdall_kms.config import Settings
from heimdall_kms.drill.sample import measure_migration
from heimdall_kms.jobs.census import Census, take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.estimate import MeasuredRate, Projection, TargetCount, values_per_request
from heimdall_kms.jobs.migrate import check_settings

__all__ = ["Counted", "count_targets", "estimate_migration"]


@dataclass(frozen=True, slots=True)
class Counted:
    """The targets' counts; ``unmeasured``: those in a database whose own reads and writes a
    rate measured on SQLite leaves out (every target of a PostgreSQL database)."""

    targets: tuple[TargetCount, ...] = ()
    unmeasured: tuple[str, ...] = ()


def count_targets(
    spec: TargetSpec, count: Callable[[Census], int], *, required: bool = True
) -> Counted:
    """``count`` of each target's census (read-only: no write, no KMS call)."""
    if not required and not spec.names_targets:
        return Counted()
    url, _ = resolve(spec)
    with checked_stores(spec, writable=False, required=required) as stores:
        counts = tuple(_count(census, count) for census in map(take_census, stores))
    sqlite = url.startswith("sqlite:///")
    return Counted(counts, () if sqlite else tuple(f"{c.target} (PostgreSQL)" for c in counts))


def _count(census: Census, count: Callable[[Census], int]) -> TargetCount:
    unclassified = census.kinds[ValueKind.UNPARSEABLE] + census.nested
    return TargetCount(census.target, count(census), unclassified)


def estimate_migration(spec: TargetSpec, batch_size: int, rate_limit: float, as_json: bool) -> None:
    """Project the migration of the legacy values of every target; change nothing."""
    settings = Settings.from_env(os.environ)
    check_settings(settings)
    counted = count_targets(spec, lambda census: census.legacy)
    # Closed here on every path (the measurement closes it too when it runs: closing twice
    # is harmless for every provider), also when what follows the opening raises.
    with closing(job_provider(settings)) as kms:
        provider, per_request = kms.name.value, values_per_request(kms.inner, batch_size)
        with tempfile.TemporaryDirectory(prefix="heimdall-estimate-") as where:
            sample = measure_migration(settings, Path(where), kms, batch_size=batch_size)
    rate, source = sample.rate, _source(sample, provider, batch_size)
    if rate_limit and rate_limit * per_request < rate:
        rate = rate_limit * per_request
        source += (
            f"; capped by --rate-limit at {rate_limit:g} requests/s x {per_request} values "
            "per request"
        )
    projection = Projection(
        counted.targets, rate, source, unmeasured=counted.unmeasured, sample=sample
    )
    if as_json:
        click.echo(json.dumps({"job": "migrate", "estimate": True, **projection.to_dict()}))
    else:
        click.echo("migrate estimate (nothing was changed): legacy values to migrate")
        for line in projection.lines():
            click.echo(line)


def _source(sample: MeasuredRate, provider: str, batch_size: int) -> str:
    spread = sample.spread()
    return (
        f"a real migration of {sample.values:,} seeded legacy values in batches of "
        f"{batch_size} through {provider} ({sample.values / batch_size:.0f} batches, "
        f"{sample.seconds:.2f}s{', ' + spread if spread else ''}): read, decrypt with a "
        "throwaway env key, seal, compare-and-swap, journal, audit, commit, in a throwaway "
        "SQLite database, one process"
    )
