"""``--metrics-file``, ``--pushgateway`` and ``--metrics-job`` of the one-shot jobs, and the
metrics a job run collects and exports when it ends (``heimdall_kms.telemetry.export``)."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from prometheus_client import CollectorRegistry

from heimdall_kms.audit import AuditSink
from heimdall_kms.audit.sink import FailureCountingSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.jobs.census import Census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.key_metrics import publish_key_info
from heimdall_kms.metrics import JobMetrics, Metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.resilient import breaker_of
from heimdall_kms.telemetry import tracing
from heimdall_kms.telemetry.export import MetricsExport

__all__ = ["JobTelemetry", "job_telemetry", "metrics_options"]

_F = TypeVar("_F", bound=Callable[..., Any])
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_log = logging.getLogger("heimdall_kms.jobs")


def metrics_options(command: str) -> Callable[[_F], _F]:
    """The three options, passed to the command as ``export``."""

    def decorate(function: _F) -> _F:
        @functools.wraps(function)
        def collect(
            *,
            metrics_file: Path | None,
            pushgateway: str | None,
            metrics_job: str | None,
            **rest: Any,
        ) -> Any:
            name = metrics_job or f"heimdall-kms-{command}"
            if not _NAME.fullmatch(name):
                raise click.BadParameter(
                    "1-64 letters, digits, '.', '_' or '-'", param_hint="--metrics-job"
                )
            export = MetricsExport(name, metrics_file, pushgateway)
            return function(export=export, **rest)

        decorators = [
            click.option(
                "--metrics-file",
                envvar="HMD_METRICS_TEXTFILE",
                type=click.Path(path_type=Path),
                help="Write the run's metrics to this .prom file (or NAME.prom in this "
                "directory) for the node exporter's textfile collector; atomic "
                "(default: HMD_METRICS_TEXTFILE).",
            ),
            click.option(
                "--pushgateway",
                envvar="HMD_PUSHGATEWAY_URL",
                metavar="URL",
                help="Push the run's metrics to this Prometheus Pushgateway "
                "(default: HMD_PUSHGATEWAY_URL).",
            ),
            click.option(
                "--metrics-job",
                envvar="HMD_METRICS_JOB",
                metavar="NAME",
                help=f"Tells runs apart in the textfile and Pushgateway "
                f"(default: heimdall-kms-{command}; HMD_METRICS_JOB).",
            ),
        ]
        for decorator in reversed(decorators):
            collect = decorator(collect)
        return collect  # type: ignore[return-value]

    return decorate


@dataclass
class JobTelemetry:
    command: str
    export: MetricsExport
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.registry)
        self.job = JobMetrics(self.registry)

    def audit(self, sink: AuditSink) -> AuditSink:
        return FailureCountingSink(sink, self.metrics.audit_write_failures.inc)

    def watch(self, kms: KeyManagementService, settings: Settings) -> None:
        """Zero error series for the provider, and its breaker's state at the end."""
        provider = kms.name.value
        self.metrics.preinitialise(provider, legacy_key_ids=settings.legacy_keys)
        breaker = breaker_of(kms)
        self.metrics.watch_circuit(provider, (lambda: breaker.state.value) if breaker else None)

    def publish_key(self, kms: KeyManagementService, cadence: timedelta) -> None:
        """Key age and due date, with one ``describe()`` only when the metrics are exported."""
        if not self.export.enabled:
            return
        try:
            info = kms.describe()
        except HeimdallKMSError as exc:
            # The command's own work is done (a rotation happened); only its metric is missing.
            _log.warning("key metrics: describe failed (%s)", exc.error_type)
            return
        publish_key_info(self.metrics, info, cadence)

    def census(self, census: Census) -> None:
        for kind in ValueKind:
            self.job.census.labels(census.target, kind.value).set(census.kinds[kind])


@contextmanager
def job_telemetry(command: str, export: MetricsExport) -> Iterator[JobTelemetry]:
    """Collect a run's metrics; export them when it ends, whether it succeeded or not.

    Raises:
        ConfigurationError: the textfile or Pushgateway setting is unusable (before the run).
    """
    export.check()
    telemetry = JobTelemetry(command, export)
    started = time.monotonic()
    succeeded = False
    try:
        with tracing.span(f"job.{command}", {"heimdall.job": command}):
            yield telemetry
        succeeded = True
    finally:
        seconds = time.monotonic() - started
        telemetry.job.finished(command, seconds=seconds, succeeded=succeeded)
        _log.info(
            "%s %s",
            command,
            "succeeded" if succeeded else "failed",
            extra={
                "event": "job.finished",
                "fields": {
                    "command": command,
                    "succeeded": succeeded,
                    "duration_seconds": round(seconds, 3),
                },
            },
        )
        _export(telemetry)


def _export(telemetry: JobTelemetry) -> None:
    if not telemetry.export.enabled:
        return
    try:
        telemetry.export.write(telemetry.registry)
    except (OSError, ValueError, HeimdallKMSError) as exc:  # http.client.InvalidURL: ValueError
        # The run itself is over and reported; a monitoring gap shows as a stale
        # heimdall_job_last_run_timestamp_seconds (see docs/operations.md).
        _log.warning("metrics export failed (%s)", type(exc).__name__)
