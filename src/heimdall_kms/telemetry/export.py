"""The metrics of a one-shot job (CronJob, systemd timer) for Prometheus: a textfile for the
node exporter's textfile collector, and/or a push to a Pushgateway.

The textfile is written atomically (a temporary file in the same directory, then a rename), so
the collector never reads half a file. Every sample of it carries ``heimdall_job=<name>``: the
collector merges all ``*.prom`` files of its directory and refuses two files that hold the same
series, which the SPEC §7 counters of two jobs (``migrate`` and ``reencrypt``) otherwise would.
A push replaces the group ``{job="heimdall-kms", heimdall_job=<name>}``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, push_to_gateway, write_to_textfile
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.metrics import ExposedMetrics

__all__ = ["PUSH_JOB", "MetricsExport"]

PUSH_JOB = "heimdall-kms"
_PUSH_TIMEOUT_SECONDS = 10.0


class _Labelled(Collector):
    def __init__(self, inner: Collector, name: str) -> None:
        self._inner = inner
        self._name = name

    def collect(self) -> Iterator[Metric]:
        for family in self._inner.collect():
            family.samples = [
                s._replace(labels={**s.labels, "heimdall_job": self._name}) for s in family.samples
            ]
            yield family


@dataclass(frozen=True, slots=True)
class MetricsExport:
    """Where a job's metrics go: ``textfile`` (a ``.prom`` file, or a directory to write
    ``<name>.prom`` into) and/or ``pushgateway`` (a URL); ``name`` tells jobs apart."""

    name: str
    textfile: Path | None = None
    pushgateway: str | None = None

    @property
    def enabled(self) -> bool:
        return self.textfile is not None or self.pushgateway is not None

    @property
    def path(self) -> Path | None:
        if self.textfile is not None and self.textfile.is_dir():
            return self.textfile / f"{self.name}.prom"
        return self.textfile

    def check(self) -> None:
        """Before the job runs: the textfile's directory exists and is writable.

        Raises:
            ConfigurationError: it is not, or the file name does not end in ``.prom``.
        """
        if self.pushgateway is not None and not self.pushgateway.startswith(
            ("http://", "https://")
        ):
            raise ConfigurationError("HMD_PUSHGATEWAY_URL: expected an http:// or https:// URL")
        path = self.path
        if path is not None:
            _check_textfile(path)

    def write(self, registry: CollectorRegistry) -> None:
        """Write the textfile and push, as configured.

        Raises:
            OSError: the textfile or the push failed.
        """
        exposed = ExposedMetrics(registry)
        path = self.path
        if path is not None:
            write_to_textfile(str(path), _Labelled(exposed, self.name))
        if self.pushgateway is not None:
            push_to_gateway(
                self.pushgateway,
                job=PUSH_JOB,
                registry=exposed,
                grouping_key={"heimdall_job": self.name},
                timeout=_PUSH_TIMEOUT_SECONDS,
            )


def _check_textfile(path: Path) -> None:
    """The textfile collector reads ``path``: it ends in ``.prom`` and its directory is
    writable.

    Raises:
        ConfigurationError: it does not, or it is not.
    """
    if path.suffix != ".prom":
        raise ConfigurationError(
            f"HMD_METRICS_TEXTFILE: {path} must end in .prom (the textfile collector "
            "reads only those), or name a directory"
        )
    if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise ConfigurationError(f"HMD_METRICS_TEXTFILE: cannot write into {path.parent}")
