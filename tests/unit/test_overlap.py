"""``in_order``: KMS calls a few at a time on worker threads, results handed back in order.

Every wait below has a timeout, so a regression shows up as a failed assertion, never as a
hung test run. Sleeps are a few milliseconds; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from heimdall_kms import overlap
from heimdall_kms.overlap import in_order

WAIT = 5.0  # seconds: only ever reached when something is broken


def constant(value: int) -> Callable[[], int]:
    return lambda: value


class Tracker:
    """Thread-safe record of which jobs started and finished, and where they ran."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.finished: list[int] = []
        self.threads: dict[int, int] = {}

    def job(
        self, index: int, body: Callable[[], Any] | None = None, result: Any = None
    ) -> Callable[[], Any]:
        def run() -> Any:
            with self.lock:
                self.started.append(index)
                self.threads[index] = threading.get_ident()
            try:
                if body is not None:
                    body()
            finally:
                with self.lock:
                    self.finished.append(index)
            return index if result is None else result

        return run


class CountingSource:
    """A job generator that records how many jobs it has handed out, and when."""

    def __init__(self, jobs: list[Callable[[], Any]]) -> None:
        self.jobs = jobs
        self.yielded = 0
        self.received = 0  # updated by the consumer loop
        self.ahead: list[int] = []  # yielded - received, at each job handed out

    def consume(self, results: Iterator[Any], into: list[Any]) -> None:
        """Take every result into ``into``, telling this source how many were received."""
        for result in results:
            into.append(result)
            self.received = len(into)

    def __iter__(self) -> Iterator[Callable[[], Any]]:
        for job in self.jobs:
            self.yielded += 1
            self.ahead.append(self.yielded - self.received)
            yield job


# -- order ---------------------------------------------------------------------------------------


def test_results_come_back_in_input_order_when_later_jobs_finish_first() -> None:
    # Job 2 finishes first, then job 1, then job 0: each waits for the one after it.
    done = [threading.Event() for _ in range(3)]
    finish_order: list[int] = []
    lock = threading.Lock()

    def job(index: int) -> Callable[[], str]:
        def run() -> str:
            if index < 2:
                assert done[index + 1].wait(WAIT), f"job {index + 1} never finished"
            with lock:
                finish_order.append(index)
            done[index].set()
            return f"result-{index}"

        return run

    results = list(in_order([job(0), job(1), job(2)], 3))

    assert finish_order == [2, 1, 0]
    assert results == ["result-0", "result-1", "result-2"]


@pytest.mark.parametrize("in_flight", [2, 3, 8])
def test_many_jobs_of_uneven_length_keep_their_order(in_flight: int) -> None:
    def job(index: int) -> Callable[[], int]:
        def run() -> int:
            time.sleep((7 - index % 7) / 1000)  # earlier jobs of each group take longer
            return index

        return run

    assert list(in_order((job(i) for i in range(25)), in_flight)) == list(range(25))


@pytest.mark.parametrize("in_flight", [0, 1, 2, 4])
def test_no_jobs_yield_nothing(in_flight: int) -> None:
    assert list(in_order([], in_flight)) == []


# -- threads -------------------------------------------------------------------------------------


@pytest.fixture
def no_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any use of a thread pool by ``in_order`` fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("in_order started a thread pool")

    monkeypatch.setattr(overlap, "ThreadPoolExecutor", refuse)


@pytest.mark.parametrize("in_flight", [0, 1])
@pytest.mark.usefixtures("no_pool")
def test_one_in_flight_runs_every_job_in_the_calling_thread(in_flight: int) -> None:
    tracker = Tracker()

    results = list(in_order([tracker.job(i) for i in range(5)], in_flight))

    assert results == [0, 1, 2, 3, 4]
    assert set(tracker.threads.values()) == {threading.get_ident()}


@pytest.mark.parametrize("in_flight", [2, 4])
@pytest.mark.usefixtures("no_pool")
def test_a_single_job_runs_in_the_calling_thread(in_flight: int) -> None:
    tracker = Tracker()

    assert list(in_order(iter([tracker.job(0, result="only")]), in_flight)) == ["only"]
    assert tracker.threads == {0: threading.get_ident()}


def test_several_jobs_with_several_in_flight_run_on_worker_threads() -> None:
    # The contrast to the two tests above: here the pool is used.
    tracker = Tracker()

    assert list(in_order([tracker.job(i) for i in range(4)], 2)) == [0, 1, 2, 3]
    assert threading.get_ident() not in tracker.threads.values()


@pytest.mark.parametrize("in_flight", [2, 3, 5])
def test_never_more_than_in_flight_jobs_run_at_once(in_flight: int) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    # The first in_flight jobs meet at a barrier: they can only pass it by all running at
    # once, which shows the limit is reached, not just respected.
    barrier = threading.Barrier(in_flight, timeout=WAIT)

    def job(index: int) -> Callable[[], int]:
        def run() -> int:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            try:
                if index < in_flight:
                    barrier.wait()
                else:
                    time.sleep(0.002)
            finally:
                with lock:
                    running -= 1
            return index

        return run

    count = 4 * in_flight + 1
    assert list(in_order([job(i) for i in range(count)], in_flight)) == list(range(count))
    assert peak == in_flight


# -- laziness --------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_jobs_are_taken_from_the_input_lazily(in_flight: int) -> None:
    source = CountingSource([constant(i) for i in range(12)])

    results = in_order(source, in_flight)
    assert source.yielded == 0  # nothing is taken before the first result is asked for

    received: list[int] = []
    for result in results:
        received.append(result)
        source.received = len(received)
        assert source.yielded <= len(received) + in_flight

    assert received == list(range(12))
    # Never more than in_flight + 1 jobs ahead of the consumer; and that far ahead at the
    # start (the calls in flight, plus the next batch queued while waiting).
    assert max(source.ahead) == in_flight + 1


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_stopping_after_the_first_result_takes_no_more_jobs(in_flight: int) -> None:
    source = CountingSource([constant(i) for i in range(12)])

    with contextlib.closing(in_order(source, in_flight)) as results:
        for _ in results:
            break

    assert source.yielded == in_flight + 1


# -- failures --------------------------------------------------------------------------------------


def test_a_failed_job_raises_when_reached_and_running_jobs_are_waited_for() -> None:
    tracker = Tracker()
    boom = ValueError("job 1 failed")
    job2_started = threading.Event()
    discarded: list[Any] = []

    def fail() -> None:
        # Job 2 is running when job 1's exception reaches the caller.
        assert job2_started.wait(WAIT), "job 2 never started"
        raise boom

    def slow() -> None:
        job2_started.set()
        threading.Event().wait(0.03)  # still running when the exception is raised

    jobs = [tracker.job(0), tracker.job(1, fail), tracker.job(2, slow, result="r2")]
    jobs += [tracker.job(i) for i in range(3, 10)]
    source = CountingSource(jobs)

    received: list[Any] = []
    with pytest.raises(ValueError) as caught:
        source.consume(in_order(source, 2, discard=discarded.append), received)

    assert caught.value is boom
    assert received == [0]  # job 0's result came first; job 1's exception stopped the loop
    # Nothing is still running once the exception has left the iterator ...
    with tracker.lock:
        started, finished = sorted(tracker.started), sorted(tracker.finished)
    assert started == finished
    assert 2 in finished
    # ... no job was taken after the failure was reached, and none starts later.
    assert source.yielded == 4  # jobs 0-3: the two in flight and the next one queued
    time.sleep(0.01)
    with tracker.lock:
        assert sorted(tracker.started) == started
    assert set(started) <= {0, 1, 2, 3}
    # Results computed but never handed out are discarded: job 2's (and job 3's, if it ran).
    assert "r2" in discarded
    assert set(discarded) <= {"r2", 3}
    assert discarded.count(3) == (1 if 3 in started else 0)


@pytest.mark.parametrize("in_flight", [0, 1])
@pytest.mark.usefixtures("no_pool")
def test_a_failed_job_in_the_calling_thread_stops_the_rest(in_flight: int) -> None:
    tracker = Tracker()

    def fail() -> None:
        raise ValueError("job 2 failed")

    jobs = [tracker.job(0), tracker.job(1), tracker.job(2, fail)]
    jobs += [tracker.job(i) for i in range(3, 8)]
    received: list[Any] = []
    with pytest.raises(ValueError, match="job 2 failed"):
        received.extend(in_order(jobs, in_flight))

    assert tracker.started == [0, 1, 2]


def test_close_from_a_paused_loop_waits_for_both_running_jobs_and_takes_no_more() -> None:
    # Job 0 has been handed out; jobs 1 and 2 occupy both workers, blocked. close() must wait
    # for them (not leave them running behind the caller), discard both results, and take no
    # further job from the input.
    tracker = Tracker()
    both_running = threading.Barrier(3, timeout=WAIT)  # jobs 1, 2 and the test
    release = threading.Event()

    def blocked() -> None:
        both_running.wait()
        assert release.wait(WAIT), "never released"

    jobs = [tracker.job(0), tracker.job(1, blocked), tracker.job(2, blocked)]
    jobs += [tracker.job(i) for i in range(3, 8)]
    source = CountingSource(jobs)
    discarded: list[Any] = []

    results = in_order(source, 2, discard=discarded.append)
    assert next(results) == 0
    both_running.wait()
    closer = threading.Thread(target=results.close)
    closer.start()
    closer.join(0.02)
    assert closer.is_alive()  # close() cannot return while jobs 1 and 2 still run
    release.set()
    closer.join(WAIT)
    assert not closer.is_alive()

    assert sorted(tracker.started) == [0, 1, 2]
    assert sorted(tracker.finished) == [0, 1, 2]
    assert sorted(discarded) == [1, 2]
    assert source.yielded == 3


# -- closing early -------------------------------------------------------------------------------


def test_closing_early_waits_for_running_jobs_and_discards_unreturned_results() -> None:
    tracker = Tracker()
    job3_running = threading.Event()

    def slow() -> None:
        job3_running.set()
        threading.Event().wait(0.03)  # still running when the caller stops

    jobs = [tracker.job(i, result=f"r{i}") for i in range(3)]
    jobs += [tracker.job(3, slow, result="r3")]
    jobs += [tracker.job(i, result=f"r{i}") for i in range(4, 10)]
    discarded: list[Any] = []
    received: list[Any] = []

    with contextlib.closing(in_order(jobs, 3, discard=discarded.append)) as results:
        for result in results:
            received.append(result)
            if result == "r1":
                assert job3_running.wait(WAIT), "job 3 never started"
                break

    assert received == ["r0", "r1"]
    with tracker.lock:
        started, finished = sorted(tracker.started), sorted(tracker.finished)
    assert started == finished  # job 3 was waited for
    assert 3 in finished
    time.sleep(0.01)
    with tracker.lock:
        assert sorted(tracker.started) == started  # nothing starts after close()
    # Every result computed but not handed out is discarded exactly once; none handed out is.
    expected = sorted(f"r{i}" for i in finished if i >= 2)
    assert sorted(discarded) == expected
    assert "r3" in discarded
    assert not set(discarded) & set(received)


def test_closing_early_without_discard_still_waits_for_running_jobs() -> None:
    tracker = Tracker()
    job2_running = threading.Event()

    def slow() -> None:
        job2_running.set()
        threading.Event().wait(0.03)

    jobs = [tracker.job(0), tracker.job(1), tracker.job(2, slow)]
    jobs += [tracker.job(i) for i in range(3, 8)]

    with contextlib.closing(in_order(jobs, 2)) as results:
        for _ in results:
            assert job2_running.wait(WAIT)
            break

    with tracker.lock:
        assert sorted(tracker.started) == sorted(tracker.finished)
        assert 2 in tracker.finished


def test_discard_is_not_called_when_every_result_is_handed_out() -> None:
    discarded: list[Any] = []

    assert list(in_order([constant(i) for i in range(6)], 3, discard=discarded.append)) == list(
        range(6)
    )
    assert discarded == []
