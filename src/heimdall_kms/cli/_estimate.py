"""``migrate --estimate`` and the drill's projection: census counts, a measured rate, the SLA."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import click

from heimdall_kms.cli._targets import TargetSpec, checked_stores
from heimdall_kms.composition import Caller, load_provider, memory_crypto
from heimdall_kms.config import Settings
from heimdall_kms.jobs.census import Census, take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.estimate import (
    Projection,
    TargetCount,
    measure_encrypt_rate,
    values_per_request,
)
from heimdall_kms.jobs.migrate import check_settings

__all__ = ["SAMPLE_VALUES", "count_targets", "estimate_migration"]

SAMPLE_VALUES = 1000


def count_targets(
    spec: TargetSpec, count: Callable[[Census], int], *, required: bool = True
) -> list[TargetCount]:
    """``count`` of each target's census (read-only: no write, no KMS call)."""
    with checked_stores(spec, writable=False, required=required) as stores:
        return [_count(census, count) for census in map(take_census, stores)]


def _count(census: Census, count: Callable[[Census], int]) -> TargetCount:
    unclassified = census.kinds[ValueKind.UNPARSEABLE] + census.nested
    return TargetCount(census.target, count(census), unclassified)


def estimate_migration(spec: TargetSpec, batch_size: int, rate_limit: float, as_json: bool) -> None:
    """Project the migration of the legacy values of every target; change nothing."""
    settings = Settings.from_env(os.environ)
    check_settings(settings)
    counts = count_targets(spec, lambda census: census.legacy)
    kms = load_provider(settings, caller=Caller.BACKGROUND)
    try:
        rate = measure_encrypt_rate(
            memory_crypto(settings, kms), sample=SAMPLE_VALUES, batch_size=batch_size
        )
        source = (
            f"{SAMPLE_VALUES:,} synthetic values sealed through {kms.name.value} in batches of "
            f"{batch_size}, one process (database reads and writes not included)"
        )
        per_request = values_per_request(kms, batch_size)
    finally:
        kms.close()
    if rate_limit and rate_limit * per_request < rate:
        rate = rate_limit * per_request
        source += (
            f"; capped by --rate-limit at {rate_limit:g} requests/s x {per_request} values "
            "per request"
        )
    projection = Projection(tuple(counts), rate, source)
    if as_json:
        click.echo(json.dumps({"job": "migrate", "estimate": True, **projection.to_dict()}))
    else:
        click.echo("migrate estimate (nothing was changed): legacy values to migrate")
        for line in projection.lines():
            click.echo(line)
