"""Key age and rotation due date as metrics, from the KMS's own ``describe()``.

A scrape never calls the KMS: ``serve`` refreshes the key's metrics in a background thread
every ``HMD_KEY_METRICS_SECONDS`` (default 300 s) and right after a rotation through the API;
``rotate`` and ``keys`` publish what they learnt in their textfile. Between two lookups the age
is computed from the stored creation time, so it keeps growing; the due date only moves when
the key rotates.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.jobs.rotation import next_due
from heimdall_kms.metrics import Metrics
from heimdall_kms.providers import KeyAdmin, KeyInfo
from heimdall_kms.telemetry.settings import DEFAULT_REFRESH_SECONDS

__all__ = ["DEFAULT_REFRESH_SECONDS", "KeyMetricsRefresher", "publish_key_info"]

_log = logging.getLogger(__name__)


def publish_key_info(metrics: Metrics, info: KeyInfo, cadence: timedelta) -> None:
    metrics.observe_key(
        info.provider.value,
        info.key_identifier,
        versions=[v.version for v in info.versions],
        latest=info.latest_version,
        created_at=info.latest.created_at,
        due_at=next_due(info, cadence),
    )


class KeyMetricsRefresher:
    """One ``describe()`` at start and then every ``interval_seconds``, in a daemon thread."""

    def __init__(
        self,
        kms: KeyAdmin,
        metrics: Metrics,
        *,
        cadence: timedelta,
        interval_seconds: float = DEFAULT_REFRESH_SECONDS,
    ) -> None:
        self._kms = kms
        self._metrics = metrics
        self._cadence = cadence
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Look the key up once; a failure is logged and leaves the last values in place."""
        try:
            info = self._kms.describe()
        except HeimdallKMSError as exc:
            _log.warning("key metrics: describe failed (%s)", exc.error_type)
            return False
        publish_key_info(self._metrics, info, self._cadence)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hmd-key-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the refresh must outlive one bad lookup.
                _log.error("key metrics: internal error (%s)", type(exc).__name__)
            if self._stop.wait(self._interval):
                return
