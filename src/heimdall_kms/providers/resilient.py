"""One retry policy and one circuit breaker for every provider.

``ResilientProvider`` wraps any :class:`KeyManagementService`:

* **Retry** (tenacity): exponential backoff with full jitter, bounded in attempts and in total
  time, only for errors whose class says ``retryable`` (unavailable, 5xx, sealed, throttled);
  never for authentication, permission, not-found or integrity errors. A ``retry_after`` on the
  error (from a Retry-After header) is honoured as the minimum wait. ``rotate`` is never
  retried: a timed-out rotation may have happened, and a second one would skip a version.
* **Circuit breaker**: after ``threshold`` consecutive calls fail as unavailable, calls fail
  fast with :class:`KMSUnavailableError` for ``cooldown`` seconds instead of piling onto a KMS
  that is down; then one probe call is let through, and its success closes the circuit.

Time and sleep are injected, so tests never wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

import tenacity

from heimdall_kms.errors import (
    CircuitOpenError,
    HeimdallKMSError,
    KMSError,
    KMSUnavailableError,
)
from heimdall_kms.providers.base import KeyManagementService
from heimdall_kms.providers.wrapper import KMSOperation, ProviderWrapper

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ResilientProvider",
    "RetryPolicy",
    "breaker_of",
]

_T = TypeVar("_T")
# A timed-out rotation may have happened (a second one would skip a version); the health check
# is the breaker's probe and answers fast. Each is tried once.
_ONE_ATTEMPT = frozenset({KMSOperation.ROTATE, KMSOperation.HEALTH})


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED
        self._probing = False

    @property
    def state(self) -> BreakerState:
        with self._lock:
            if (
                self._state is BreakerState.OPEN
                and self._clock() - self._opened_at >= self.cooldown
            ):
                return BreakerState.HALF_OPEN
            return self._state

    def before_call(self) -> None:
        """Raises KMSUnavailableError while the circuit is open (fail fast)."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return
            waited = self._clock() - self._opened_at
            self._cool_down(waited)
            if self._state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True  # this call is the probe
                return
            remaining = max(0.0, self.cooldown - waited)
            raise CircuitOpenError(
                f"KMS unavailable: circuit open after {self.threshold} consecutive failures; "
                f"next probe in {remaining:.0f}s"
            )

    def _cool_down(self, waited: float) -> None:
        # An open circuit is half open once its cooldown has passed: one probe may go through.
        if self._state is BreakerState.OPEN and waited >= self.cooldown:
            self._state = BreakerState.HALF_OPEN

    def record(self, error: HeimdallKMSError | None) -> None:
        with self._lock:
            self._probing = False
            if not isinstance(error, KMSUnavailableError):
                self._failures = 0
                self._state = BreakerState.CLOSED
                return
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()


class RetryPolicy:
    def __init__(
        self,
        attempts: int = 5,
        max_seconds: float = 30.0,
        base: float = 0.1,
        cap: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.attempts = attempts
        self.max_seconds = max_seconds
        self._jitter = tenacity.wait_random_exponential(multiplier=base, max=cap)
        self._sleep = sleep

    def _wait(self, state: tenacity.RetryCallState) -> float:
        wait = float(self._jitter(state))
        retry_after = _asked_wait(state)
        return max(wait, retry_after) if retry_after is not None else wait

    def call(self, fn: Callable[[], _T]) -> _T:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_any(
                tenacity.stop_after_attempt(self.attempts),
                tenacity.stop_after_delay(self.max_seconds),
                _AsksTooLong(self.max_seconds),
            ),
            wait=self._wait,
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, HeimdallKMSError) and exc.retryable
            ),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(fn)


def _asked_wait(state: tenacity.RetryCallState) -> float | None:
    """The ``retry_after`` the last attempt's KMS error asked for, if any."""
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    return error.retry_after if isinstance(error, KMSError) else None


class _AsksTooLong(tenacity.stop.stop_base):
    """The KMS asks for a longer wait than the budget has left: fail now, not later."""

    def __init__(self, budget: float) -> None:
        self._budget = budget

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        retry_after = _asked_wait(retry_state)
        elapsed = retry_state.seconds_since_start or 0.0
        return retry_after is not None and elapsed + retry_after > self._budget


class ResilientProvider(ProviderWrapper):
    """Retries and a circuit breaker around any provider (see the module docstring)."""

    def __init__(
        self,
        inner: KeyManagementService,
        *,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        super().__init__(inner)
        self.retry = retry or RetryPolicy()
        self.breaker = breaker or CircuitBreaker()

    def _around(self, operation: KMSOperation, call: Callable[[], _T], items: int | None) -> _T:
        del items
        self.breaker.before_call()
        try:
            result = self.retry.call(call) if operation not in _ONE_ATTEMPT else call()
        except HeimdallKMSError as exc:
            self.breaker.record(exc)
            raise
        self.breaker.record(None)
        return result


def breaker_of(kms: KeyManagementService) -> CircuitBreaker | None:
    """The circuit breaker under ``kms`` and its wrappers (metering, ...), if there is one.

    The local provider has none: a file on this host has no network to break.
    """
    current: object = kms
    while isinstance(current, ProviderWrapper):
        if isinstance(current, ResilientProvider):
            return current.breaker
        current = current.inner
    return None
