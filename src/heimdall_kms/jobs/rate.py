"""Pacing for background jobs: a request rate and a number of calls in flight, both adaptive.

Both follow AIMD (additive increase, multiplicative decrease), the rule TCP uses to share a
link: each time the KMS answers "slow down" the job halves its rate and its calls in flight;
each call that goes through wins a little back. The job so finds, with no configuration, the
rate the KMS's quota leaves it, and gives capacity back to live traffic as soon as the KMS
pushes back. A configured rate (``--rate-limit``) is a ceiling the rate never passes.

Time is injected (``clock``, ``sleep``) so tests never wait.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["InFlightLimit", "TokenBucket"]

# The lowest rate a throttled job falls to: one request every 20 s. Lower would hold a batch's
# rows (and its PostgreSQL locks) longer than a KMS request may take.
FLOOR = 0.05
_WINDOW = 5.0  # seconds of successful calls the measured rate is taken over


class TokenBucket:
    """Paces calls at ``rate`` per second, with at most ``burst`` at once after a pause.

    ``ceiling`` (0: none) is the configured rate. Unconfigured, the bucket lets every call
    through until the KMS first throttles one; it then starts from half the rate it measured
    (successful calls over the last few seconds) and adapts from there.
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
        self.ceiling = rate
        self.rate = rate  # 0: not paced (yet)
        self._burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()  # when the next call may start at the current rate
        self._blocked_until = 0.0  # a Retry-After holds every call back until then
        # (when, tokens) of the calls that went through: the measured rate is in tokens, the
        # unit acquire() spends (a request of a batch provider, a value of a per-value one).
        self._done: deque[tuple[float, float]] = deque(maxlen=1000)
        self._step = rate / 20

    @property
    def burst(self) -> float:
        return self._burst if self._burst is not None else max(self.rate, 1.0)

    def slow_down(self, retry_after: float | None = None, tokens: float = 1.0) -> None:
        """The KMS throttled a call of ``tokens``: halve the rate; hold every call for
        ``retry_after`` s.

        Throttled before any call went through (live traffic had used the quota up when the
        job started), there is no measured rate to halve: the job then starts from one such
        call a second, halved — not from the floor, at which a batch of 20 values on a
        per-value provider would wait 400 s — and adapts from there.
        """
        with self._lock:
            now = self._clock()
            base = self.rate or self._measured(now) or max(2 * FLOOR, tokens)
            self.rate = max(FLOOR, base / 2)
            if not self.ceiling:
                # Win back 1/20 of the level where the KMS pushed back, per call that passes.
                self._step = max(FLOOR, base / 20)
            if retry_after:
                self._blocked_until = max(self._blocked_until, now + retry_after)

    def speed_up(self, tokens: float = 1.0) -> None:
        """A call of ``tokens`` went through: win back a step, up to the ceiling (if one is
        configured)."""
        with self._lock:
            self._done.append((self._clock(), tokens))
            if self.rate:
                raised = self.rate + self._step
                self.rate = min(self.ceiling, raised) if self.ceiling else raised

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, sleeping until they are due; returns the seconds slept.

        A request larger than the burst runs the balance into debt, paid by the next callers'
        waits, so the long-run rate still holds. Safe from several threads at once: each
        reserves its slot under the lock and sleeps outside it.
        """
        with self._lock:
            now = self._clock()
            start = max(now, self._blocked_until)
            if self.rate:
                # GCRA: calls are spaced 1/rate apart, `burst` of them may come at once.
                tolerance = max(0.0, self.burst - 1) / self.rate
                start = max(start, self._next - tolerance)
                self._next = max(self._next, start) + tokens / self.rate
        wait = start - now
        if wait <= 0:
            return 0.0
        self._sleep(wait)
        return wait

    def _measured(self, now: float) -> float:
        recent = [(t, tokens) for t, tokens in self._done if now - t <= _WINDOW]
        if not recent:
            return 0.0  # nothing went through lately: no rate to go by
        return sum(tokens for _, tokens in recent) / max(1.0, now - recent[0][0])


class InFlightLimit:
    """At most ``limit`` calls at once; halved when the KMS throttles, +1 per ``limit`` calls
    that go through, never above ``maximum`` (what the provider says it can overlap)."""

    def __init__(self, maximum: int) -> None:
        self.maximum = max(1, maximum)
        self.limit = self.maximum
        self._active = 0
        self._passed = 0
        self._free = threading.Condition()

    def __enter__(self) -> None:
        with self._free:
            self._free.wait_for(lambda: self._active < self.limit)
            self._active += 1

    def __exit__(self, *exc: object) -> None:
        with self._free:
            self._active -= 1
            self._free.notify_all()

    def slow_down(self) -> None:
        with self._free:
            self.limit = max(1, self.limit // 2)
            self._passed = 0

    def speed_up(self) -> None:
        with self._free:
            self._passed += 1
            if self._passed >= self.limit and self.limit < self.maximum:
                self.limit += 1
                self._passed = 0
                self._free.notify_all()
