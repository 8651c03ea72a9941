"""``fan_out``: one call per item on a few worker threads, results in input order.

Every wait has a timeout, so a regression shows up as a failed assertion, never as a hung test
run. Sleeps are a few milliseconds; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from heimdall_kms import primitives
from heimdall_kms.overlap import fan_out

WAIT = 5.0  # seconds: only ever reached when something is broken


class InjectedError(Exception):
    """The failure a test injects."""


class Concurrency:
    """Counts the calls running at once and keeps the highest count seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []

    def call(self, item: int) -> int:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self.started.append(item)
        time.sleep(0.002)
        with self.lock:
            self.running -= 1
        return item * 10


class TestFanOut:
    @pytest.mark.parametrize("limit", [1, 2, 5, 32])
    def test_results_keep_the_input_order_when_later_items_finish_first(self, limit: int) -> None:
        def call(item: int) -> str:
            time.sleep((7 - item % 7) / 1000)  # earlier items of each group take longer
            return f"r{item}"

        assert fan_out(call, list(range(30)), limit) == [f"r{i}" for i in range(30)]

    @pytest.mark.parametrize("limit", [0, 1, 4])
    def test_no_items_give_no_results(self, limit: int) -> None:
        assert fan_out(Concurrency().call, [], limit) == []

    @pytest.mark.parametrize("limit", [2, 3, 8])
    def test_never_more_than_limit_calls_run_at_once(self, limit: int) -> None:
        counter = Concurrency()

        assert fan_out(counter.call, list(range(40)), limit) == [i * 10 for i in range(40)]
        assert counter.peak == limit  # reached, never exceeded

    @pytest.mark.parametrize(("limit", "items"), [(1, 5), (0, 5), (8, 1)])
    def test_one_at_a_time_runs_in_the_calling_thread(self, limit: int, items: int) -> None:
        threads: set[int] = set()

        def call(item: int) -> int:
            threads.add(threading.get_ident())
            return item

        assert fan_out(call, list(range(items)), limit) == list(range(items))
        assert threads == {threading.get_ident()}

    def test_the_first_failure_stops_items_not_started_and_is_raised_unchanged(self) -> None:
        error = InjectedError("item 3 failed")
        started: list[int] = []
        lock = threading.Lock()

        def call(item: int) -> int:
            with lock:
                started.append(item)
            if item == 3:
                raise error
            time.sleep(0.005)
            return item

        with pytest.raises(InjectedError) as raised:
            fan_out(call, list(range(200)), 4)

        assert raised.value is error
        # Only the calls already running when item 3 failed may have started after it.
        assert len(started) < 20
        assert sorted(started) == list(range(len(started)))

    @pytest.mark.parametrize("limit", [1, 4])
    def test_every_dek_produced_before_a_failure_is_wiped(self, limit: int) -> None:
        produced: list[bytearray] = []
        lock = threading.Lock()
        slow_done = threading.Event()

        def call(item: int) -> bytearray:
            if item == 6:
                # Fail only once some DEKs exist, while the one call still running has not
                # returned its DEK yet: that DEK must be wiped too.
                assert limit == 1 or slow_done.wait(WAIT)
                raise InjectedError("unwrap failed")
            dek = bytearray(b"\xa5" * 32)
            with lock:
                produced.append(dek)
            if item == 5 and limit > 1:
                slow_done.set()
                time.sleep(0.02)
            return dek

        with pytest.raises(InjectedError):
            fan_out(call, list(range(50)), limit, discard=primitives.wipe_if_dek)

        assert len(produced) >= 5
        assert all(dek == bytearray(32) for dek in produced)

    def test_results_are_not_wiped_when_every_call_succeeds(self) -> None:
        results = fan_out(
            lambda i: bytearray([i + 1] * 4), list(range(10)), 4, discard=primitives.wipe_if_dek
        )

        assert results == [bytearray([i + 1] * 4) for i in range(10)]

    @pytest.mark.parametrize("fail", [False, True])
    def test_no_thread_outlives_the_call(self, fail: bool) -> None:
        def call(item: int) -> int:
            if fail and item == 10:
                raise InjectedError("failed")
            time.sleep(0.001)
            return item

        before = threading.active_count()
        for _ in range(5):
            try:
                fan_out(call, list(range(30)), 6)
            except InjectedError:
                assert fail
        assert threading.active_count() == before

    def test_a_long_lived_executor_is_reused_and_left_running(self) -> None:
        counter = Concurrency()
        with ThreadPoolExecutor(3, thread_name_prefix="test-fanout") as pool:
            first = fan_out(counter.call, list(range(20)), 3, executor=pool)
            threads = threading.active_count()
            second = fan_out(counter.call, list(range(20)), 3, executor=pool)

            assert first == second == [i * 10 for i in range(20)]
            assert threading.active_count() == threads  # no new pool per call
            assert counter.peak == 3
            assert pool.submit(lambda: "still open").result(WAIT) == "still open"
