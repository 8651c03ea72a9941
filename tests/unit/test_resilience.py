"""The retry policy and the circuit breaker on their own, with injected time."""

from __future__ import annotations

import pytest

from heimdall_kms.errors import (
    AuthenticationError,
    IntegrityError,
    KMSUnavailableError,
    RateLimitedError,
)
from heimdall_kms.providers.resilient import BreakerState, CircuitBreaker, RetryPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(errors: list[Exception], result: str = "ok") -> tuple[list[int], object]:
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if errors:
            raise errors.pop(0)
        return result

    return calls, call


def test_transient_errors_are_retried_then_succeed() -> None:
    clock = Clock()
    policy = RetryPolicy(attempts=5, sleep=clock.sleep)
    calls, call = failing([KMSUnavailableError("down"), RateLimitedError("429")])
    assert policy.call(call) == "ok"  # type: ignore[arg-type]
    assert calls[0] == 3
    assert len(clock.sleeps) == 2
    assert all(0 <= s <= 5.0 for s in clock.sleeps)


@pytest.mark.parametrize("error", [AuthenticationError("no"), IntegrityError("bad")])
def test_permanent_errors_are_not_retried(error: Exception) -> None:
    clock = Clock()
    calls, call = failing([error])
    with pytest.raises(type(error)):
        RetryPolicy(sleep=clock.sleep).call(call)  # type: ignore[arg-type]
    assert calls[0] == 1
    assert clock.sleeps == []


def test_attempts_are_bounded() -> None:
    clock = Clock()
    calls, call = failing([KMSUnavailableError("down")] * 10)
    with pytest.raises(KMSUnavailableError):
        RetryPolicy(attempts=4, sleep=clock.sleep).call(call)  # type: ignore[arg-type]
    assert calls[0] == 4


def test_retry_after_is_honoured() -> None:
    clock = Clock()
    throttled = RateLimitedError("429")
    throttled.retry_after = 7.0  # type: ignore[attr-defined]
    _calls, call = failing([throttled])
    RetryPolicy(sleep=clock.sleep).call(call)  # type: ignore[arg-type]
    assert clock.sleeps == [7.0]


def test_breaker_opens_fails_fast_and_closes_after_a_good_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=3, cooldown=30, clock=clock)
    for _ in range(3):
        breaker.before_call()
        breaker.record(KMSUnavailableError("down"))
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(KMSUnavailableError, match="circuit open"):
        breaker.before_call()
    clock.now += 30
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.before_call()  # the probe
    with pytest.raises(KMSUnavailableError):
        breaker.before_call()  # only one probe at a time
    breaker.record(None)
    assert breaker.state is BreakerState.CLOSED
    breaker.before_call()


def test_a_failed_probe_reopens_and_other_errors_do_not_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker(threshold=2, cooldown=10, clock=clock)
    breaker.record(KMSUnavailableError("down"))
    breaker.record(IntegrityError("one bad value is not an outage"))
    breaker.record(KMSUnavailableError("down"))
    assert breaker.state is BreakerState.CLOSED
    breaker.record(KMSUnavailableError("down"))
    assert breaker.state is BreakerState.OPEN
    clock.now += 10
    breaker.before_call()
    breaker.record(KMSUnavailableError("still down"))
    assert breaker.state is BreakerState.OPEN
