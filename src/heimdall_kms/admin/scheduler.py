"""Periodic ``rotate --if-due`` inside the admin service (``HMD_ROTATION_CHECK_SECONDS``).

This is not a second rotation logic: every check is one call of
:func:`heimdall_kms.jobs.rotation.rotate` with ``if_due=True``, exactly what
``heimdall-kms rotate --if-due`` runs from cron. Whether a rotation is due is judged from the
KMS's own clock and creation time of the latest version, decided again under the rotation
lock (:mod:`heimdall_kms.jobs.rotation_lock`, the one ``rotate --if-due`` takes), so a
restart of the service, or a cron job running as well, does not rotate twice in one period.
A rotation (and a failed one) is audited by ``rotate`` itself as ``key.rotate`` with the
actor ``scheduler``.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from heimdall_kms.audit import AuditSink
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.jobs.propagation import Propagation
from heimdall_kms.jobs.rotation import RotationResult, rotate
from heimdall_kms.jobs.rotation_lock import RotationLock
from heimdall_kms.providers import KeyManagementService

__all__ = ["SCHEDULER_ACTOR", "RotationScheduler"]

SCHEDULER_ACTOR = "scheduler"
_log = logging.getLogger(__name__)


class RotationScheduler:
    """A daemon thread that checks at start and then every ``interval_seconds``."""

    def __init__(
        self,
        kms: KeyManagementService,
        audit: AuditSink,
        *,
        cadence: timedelta,
        interval_seconds: float,
        propagation: Propagation | None = None,
        lock: RotationLock | None = None,
    ) -> None:
        self._propagation = propagation
        self._lock = lock
        self._kms = kms
        self._audit = audit
        self._cadence = cadence
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checks = 0
        self.last_result: RotationResult | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="hmd-rotation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def check_once(self) -> RotationResult | None:
        """One ``rotate --if-due``; a failure is logged (its audit event is ``rotate``'s)."""
        try:
            result = rotate(
                self._kms,
                self._audit,
                actor=SCHEDULER_ACTOR,
                if_due=True,
                cadence=self._cadence,
                propagation=self._propagation,
                lock=self._lock,
            )
        except HeimdallKMSError as exc:
            self.last_error = exc.error_type
            _log.warning("scheduled rotation check failed: %s", exc.error_type)
            return None
        finally:
            self.checks += 1
        self.last_result, self.last_error = result, None
        if result.rotated:
            _log.info(
                "scheduled rotation: %s v%d -> v%d",
                self._kms.key_identifier,
                result.old_version,
                result.new_version,
            )
        return result

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - the schedule must outlive one bad check.
                _log.error("scheduled rotation check: internal error (%s)", type(exc).__name__)
            if self._stop.wait(self._interval):
                return
