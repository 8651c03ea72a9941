"""How long a background job keeps trying while the KMS says "slow down" or is away.

An online call fails fast (the retry policy of :mod:`heimdall_kms.providers.resilient`). A
background job has days of work and no caller waiting, so it keeps going through throttling,
a Vault restart or a seal, and stops only when it has made no progress for the stall time
(``HMD_JOB_STALL_SECONDS``, default 300), or at once on an error that is not transient. Each
wait backs off exponentially (with jitter), and is never shorter than the KMS's Retry-After.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from heimdall_kms.errors import HeimdallKMSError, KMSError

__all__ = ["DEFAULT_STALL_SECONDS", "Patience"]

DEFAULT_STALL_SECONDS = 300.0


class Patience:
    """The stall clock of one job: ``progressed`` on every committed batch, ``wait`` on every
    transient failure (it raises once the job has made no progress for ``stall_seconds``)."""

    def __init__(
        self,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        *,
        base: float = 0.5,
        cap: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.stall_seconds = stall_seconds
        self._base = base
        self._cap = cap
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._failures = 0
        self.waits = 0  # how many times the job waited (for the report and the tests)
        self.waited_for_retry_after = 0  # of which the KMS's Retry-After set the length

    def progressed(self) -> None:
        self._last = self._clock()
        self._failures = 0

    def wait(self, error: HeimdallKMSError) -> None:
        """Sleep before the job tries again.

        Raises:
            HeimdallKMSError: ``error`` (same class, so the same exit code), saying how long
                there was no progress, once the stall time has passed.
        """
        stalled = self._clock() - self._last
        if stalled >= self.stall_seconds:
            raise _stalled(error, stalled, self.stall_seconds) from None
        backoff = min(self._cap, self._base * 2**self._failures)
        delay = random.uniform(backoff / 2, backoff)  # noqa: S311 - jitter, not a secret
        retry_after = error.retry_after if isinstance(error, KMSError) else None
        if retry_after is not None and retry_after >= delay:
            delay = retry_after
            self.waited_for_retry_after += 1
        self._failures += 1
        self.waits += 1
        # Wake up in time to try once more before the stall time runs out.
        self._sleep(max(0.0, min(delay, self.stall_seconds - stalled)))


def _stalled(error: HeimdallKMSError, stalled: float, limit: float) -> HeimdallKMSError:
    message = (
        f"{error}; no progress for {stalled:.0f}s (HMD_JOB_STALL_SECONDS={limit:g}): stopped, "
        "the finished batches are kept and a rerun continues"
    )
    try:
        stopped = type(error)(message)
    except TypeError:  # an error class whose constructor takes more than a message
        return error
    return stopped
