"""How long a KMS asks to be left alone: its ``Retry-After`` (and Azure's millisecond forms).

Every provider puts what it reads here on the :class:`~heimdall_kms.errors.KMSError` it
raises (``retry_after``), and the callers honour it: the retry policy of
:mod:`heimdall_kms.providers.resilient`, a background job's pacing and patience, and the admin
API's own ``Retry-After``. A value that cannot be read is ignored (the caller's own backoff
applies); an absurd one is capped at an hour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

from heimdall_kms.providers.base import http_date

__all__ = ["MAX_SECONDS", "bounded", "from_headers", "retry_after_seconds"]

MAX_SECONDS = 3600.0


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header as seconds: delta-seconds or an HTTP date; None if absent/bad."""
    text = (value or "").strip()
    try:
        seconds = float(text)
    except ValueError:
        when = http_date(text)
        if when is None:
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    return bounded(seconds)


def from_headers(get: Callable[[str], str | None]) -> float | None:
    """The wait an answer's headers ask for, ``get`` reading a header case-insensitively.

    ``retry-after-ms`` and ``x-ms-retry-after-ms`` (milliseconds, sent by Azure services and
    read first, as azure-core reads them) win over ``Retry-After``.
    """
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        seconds = _milliseconds(get(name))
        if seconds is not None:
            return seconds
    return retry_after_seconds(get("retry-after"))


def _milliseconds(value: str | None) -> float | None:
    """A ``retry-after-ms`` header as seconds; None if absent or bad."""
    if value is None:
        return None
    try:
        return bounded(float(value.strip()) / 1000.0)
    except ValueError:
        return None


def bounded(seconds: float) -> float | None:
    """``seconds`` as a wait: never negative, at most an hour; None for NaN."""
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_SECONDS)
