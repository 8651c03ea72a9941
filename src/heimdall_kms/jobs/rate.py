"""A token bucket that paces background jobs so live traffic keeps its share of the KMS."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TokenBucket"]


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (default: one second's worth).

    Time is injected (``clock``, ``sleep``) so tests never wait. A rate of 0 means unlimited.

    The rate adapts to the KMS (additive increase, multiplicative decrease): each throttled
    call halves it, down to ``floor``; each call that goes through wins back a twentieth of
    the configured rate, up to that rate. A background job thus slows down as soon as the KMS
    pushes back, and leaves the capacity to live traffic.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self.configured = rate
        self.floor = min(rate, 1.0)
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()

    def slow_down(self) -> None:
        """The KMS throttled a call: halve the rate (never below the floor)."""
        if self.configured:
            self.rate = max(self.floor, self.rate / 2)

    def speed_up(self) -> None:
        """A call went through: win back a step of the configured rate."""
        if self.configured:
            self.rate = min(self.configured, self.rate + self.configured / 20)

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, sleeping until they are available; returns the seconds slept."""
        if self.rate == 0:
            return 0.0
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= tokens
        if self._tokens >= 0:
            return 0.0
        # A request larger than the bucket is allowed to run the balance negative; the debt
        # is paid by waiting, so the long-run rate still holds.
        wait = -self._tokens / self.rate
        self._sleep(wait)
        self._last = self._clock()
        self._tokens = 0.0
        return wait
