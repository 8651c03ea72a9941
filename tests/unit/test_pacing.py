"""Adaptive pacing (AIMD rate and calls in flight) and the background job's patience."""

from __future__ import annotations

import threading

import pytest

from heimdall_kms.errors import (
    AuthenticationError,
    KMSUnavailableError,
    RateLimitedError,
)
from heimdall_kms.jobs.patience import Patience
from heimdall_kms.jobs.rate import FLOOR, InFlightLimit, TokenBucket
from heimdall_kms.providers.vault.http import retry_after_seconds


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class TestTokenBucket:
    def test_unconfigured_starts_unpaced_then_half_the_measured_rate(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
        for _ in range(12):  # 12 calls over 4 s: 3 per second went through
            assert bucket.acquire() == 0.0
            bucket.speed_up()
            clock.now += 1 / 3
        assert bucket.rate == 0
        bucket.slow_down()
        assert bucket.rate == pytest.approx(1.5, rel=0.1)

    def test_the_measured_rate_counts_tokens_not_calls(self) -> None:
        # A per-value provider (AWS, GCP, Azure) spends one token per value: 4 calls of 20
        # values a second is 80 tokens a second, and the throttled rate is half of that,
        # not half of 4 (which would make each batch of 20 wait 10 s).
        clock = FakeClock()
        bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
        for _ in range(16):
            assert bucket.acquire(20) == 0.0
            bucket.speed_up(20)
            clock.now += 1 / 4
        bucket.slow_down()
        assert bucket.rate == pytest.approx(40, rel=0.1)

    @pytest.mark.parametrize("tokens", [1, 20])
    def test_throttled_before_any_call_went_through_starts_from_the_calls_own_cost(
        self, tokens: int
    ) -> None:
        # The quota was used up by live traffic when the job started: nothing was measured.
        # A batch of 20 values on a per-value provider then waits about 2 s, not 400 s.
        clock = FakeClock()
        bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
        bucket.slow_down(tokens=tokens)
        assert bucket.rate == pytest.approx(max(FLOOR, tokens / 2))
        bucket.acquire(tokens)
        assert bucket.acquire(tokens) <= 2.0 + 1e-9

    def test_recovers_additively_without_a_ceiling(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
        for _ in range(9):
            bucket.speed_up()
            clock.now += 1 / 3
        bucket.slow_down()
        low = bucket.rate
        for _ in range(10):
            bucket.speed_up()
        # Each call wins back 1/20 of the level where the KMS pushed back: 10 undo the halving.
        assert bucket.rate == pytest.approx(2 * low, rel=0.05)

    def test_paced_calls_never_exceed_rate_plus_burst(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(3, clock=clock, sleep=clock.sleep)
        starts = []
        for _ in range(60):
            bucket.acquire()
            starts.append(clock.now)
        for first in starts:
            in_window = [t for t in starts if first <= t < first + 5.0]
            assert len(in_window) <= 3 * 5 + bucket.burst

    def test_retry_after_holds_every_call(self) -> None:
        clock = FakeClock()
        bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
        bucket.slow_down(retry_after=7.0)
        assert bucket.acquire() == pytest.approx(7.0)

    def test_never_below_the_floor_nor_above_the_ceiling(self) -> None:
        bucket = TokenBucket(10)
        for _ in range(50):
            bucket.slow_down()
        assert bucket.rate == FLOOR
        for _ in range(1000):
            bucket.speed_up()
        assert bucket.rate == 10

    def test_threads_reserve_slots_and_sleep_outside_the_lock(self) -> None:
        clock = FakeClock()
        lock = threading.Lock()

        def sleep(seconds: float) -> None:
            with lock:
                clock.slept.append(seconds)

        bucket = TokenBucket(10, burst=1, clock=clock, sleep=sleep)
        threads = [threading.Thread(target=bucket.acquire) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Each call got its own slot 0.1 s after the one before (the clock never moved).
        assert sorted(clock.slept) == pytest.approx([0.1 * i for i in range(1, 20)])


class TestInFlightLimit:
    def test_halves_on_throttle_and_climbs_back(self) -> None:
        limit = InFlightLimit(4)
        limit.slow_down()
        assert limit.limit == 2
        limit.slow_down()
        limit.slow_down()
        assert limit.limit == 1
        for _ in range(1 + 2 + 3):
            limit.speed_up()
        assert limit.limit == 4
        limit.speed_up()
        assert limit.limit == 4

    def test_blocks_past_the_limit(self) -> None:
        limit = InFlightLimit(1)
        entered = threading.Event()
        with limit:
            thread = threading.Thread(target=lambda: (limit.__enter__(), entered.set()))
            thread.start()
            assert not entered.wait(0.2)
        assert entered.wait(2)
        limit.__exit__()
        thread.join()


class TestPatience:
    def test_waits_with_backoff_until_the_stall_time_then_raises_the_same_class(self) -> None:
        clock = FakeClock()
        patience = Patience(60, clock=clock, sleep=clock.sleep)
        error = RateLimitedError("Vault encrypt: rate limited (HTTP 429)")
        for _ in range(100):
            if clock.now - 100.0 >= 60:
                break
            patience.wait(error)
        with pytest.raises(RateLimitedError, match=r"no progress for 60s \(HMD_JOB_STALL_SECONDS"):
            patience.wait(error)
        assert sum(clock.slept) == pytest.approx(60)
        assert max(clock.slept) <= 10  # the cap
        assert patience.waits == len(clock.slept)

    def test_progress_resets_the_stall_clock(self) -> None:
        clock = FakeClock()
        patience = Patience(30, clock=clock, sleep=clock.sleep)
        for _ in range(10):
            clock.now += 25
            patience.progressed()
            patience.wait(KMSUnavailableError("sealed"))  # never stalls: progress each time

    def test_honours_retry_after(self) -> None:
        clock = FakeClock()
        patience = Patience(300, clock=clock, sleep=clock.sleep)
        patience.wait(RateLimitedError("quota", retry_after=42.0))
        assert clock.slept == [42.0]
        assert patience.waited_for_retry_after == 1

    def test_an_error_whose_class_takes_more_is_raised_as_is(self) -> None:
        clock = FakeClock()
        patience = Patience(0.0, clock=clock, sleep=clock.sleep)
        error = AuthenticationError("refused")
        with pytest.raises(AuthenticationError, match="no progress"):
            patience.wait(error)


class TestRetryAfterHeader:
    @pytest.mark.parametrize(
        ("header", "seconds"),
        [("3", 3.0), ("0", 0.0), ("1.5", 1.5), (None, None), ("soon", None), ("-4", 0.0)],
    )
    def test_parses_delta_seconds(self, header: str | None, seconds: float | None) -> None:
        assert retry_after_seconds(header) == seconds

    def test_parses_an_http_date(self) -> None:
        assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
