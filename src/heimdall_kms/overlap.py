"""The one fan-out of KMS calls onto worker threads, carrying the DEK-lifetime rule once.

A KMS call spends most of its time waiting for the server, with the GIL released, so several
in flight overlap. Two shapes, one rule (results in input order, at most ``limit`` running, the
first failure stops what has not started and is raised unchanged, every result already produced
and never handed out goes to ``discard`` to wipe the DEKs it holds, no thread outlives the call):

- :func:`fan_out` runs one call per item and returns the list: the providers' per-item and
  per-batch requests (Vault batches, AWS/GCP/Azure items).
- :func:`in_order` streams results while later jobs run, so the caller seals or opens one batch
  while the KMS works on the next, and whatever a job holds lives for a bounded window.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar

__all__ = ["fan_out", "in_order"]

_R = TypeVar("_R")
_T = TypeVar("_T")


def fan_out(
    call: Callable[[_T], _R],
    items: Sequence[_T],
    limit: int,
    *,
    discard: Callable[[_R], None] | None = None,
    executor: Executor | None = None,
    thread_name_prefix: str = "heimdall-kms-fanout",
) -> list[_R]:
    """``call`` on every item, at most ``limit`` at once, results in input order.

    With ``limit`` 1 or a single item, every call runs in the caller's thread. Otherwise
    ``min(limit, len(items))`` workers each take the next item not yet started, so a slow item
    never holds the others back. The first exception stops every worker before its next item
    and is raised unchanged once the running calls have returned; each result produced by then
    is passed to ``discard``. ``executor`` is a long-lived pool to run the workers on (its owner
    shuts it down); without one, a pool is made for this call and shut down before returning.
    """
    if limit <= 1 or len(items) <= 1:
        return _sequential(call, items, discard)
    run = _Run(call, items)
    workers = min(limit, len(items))
    pool = executor or ThreadPoolExecutor(workers, thread_name_prefix=thread_name_prefix)
    futures: list[Future[None]] = []
    try:
        for _ in range(workers):
            futures.append(pool.submit(run.work))
        wait(futures)
    except BaseException:
        run.stop()  # interrupted while waiting, or the pool refused work
        raise
    finally:
        _wind_down(run, futures, None if executor is not None else pool, discard)
    return run.collected()


def _wind_down(
    run: _Run[_T, _R],
    futures: list[Future[None]],
    owned_pool: Executor | None,
    discard: Callable[[_R], None] | None,
) -> None:
    """Cancel the workers not started, wait for the running ones, shut down a pool made for
    this call, and after a failure hand every result produced to ``discard``."""
    for future in futures:
        future.cancel()
    wait(futures)
    if owned_pool is not None:
        owned_pool.shutdown(wait=True)
    if run.failed():
        run.discard_produced(discard)


def _sequential(
    call: Callable[[_T], _R], items: Sequence[_T], discard: Callable[[_R], None] | None
) -> list[_R]:
    results: list[_R] = []
    try:
        for item in items:
            results.append(call(item))
    except BaseException:
        if discard is not None:
            for result in results:
                discard(result)
        raise
    return results


class _Run(Generic[_T, _R]):
    """The state one :func:`fan_out` shares between its workers."""

    def __init__(self, call: Callable[[_T], _R], items: Sequence[_T]) -> None:
        self._call = call
        self._items = items
        self._results: list[tuple[_R] | None] = [None] * len(items)
        self._lock = threading.Lock()
        self._next = 0
        self._stopped = False
        self._error: BaseException | None = None

    def work(self) -> None:
        while (index := self._take()) is not None:
            try:
                result = self._call(self._items[index])
            except BaseException as error:  # noqa: BLE001 (raised in the caller's thread)
                with self._lock:
                    self._stopped = True
                    if self._error is None:
                        self._error = error
                return
            self._results[index] = (result,)

    def _take(self) -> int | None:
        with self._lock:
            if self._stopped or self._next >= len(self._items):
                return None
            self._next += 1
            return self._next - 1

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def failed(self) -> bool:
        with self._lock:
            return self._stopped

    def discard_produced(self, discard: Callable[[_R], None] | None) -> None:
        if discard is None:
            return
        for slot in self._results:
            if slot is not None:
                discard(slot[0])

    def collected(self) -> list[_R]:
        if self._error is not None:
            raise self._error
        return [slot[0] for slot in self._results if slot is not None]


def in_order(
    jobs: Iterable[Callable[[], _R]],
    in_flight: int,
    *,
    discard: Callable[[_R], None] | None = None,
) -> Generator[_R, None, None]:
    """Yield each job's result in input order, running up to ``in_flight`` jobs at once.

    Jobs are taken from ``jobs`` only as slots free up, so whatever a job holds (its DEKs)
    exists for at most ``in_flight + 1`` batches at a time. With ``in_flight`` 1, or a single
    job, each job runs in the caller's thread. A job's exception is raised when its result is
    reached. When the caller stops early (an exception, or closing the iterator), jobs not yet
    started are cancelled and running ones are waited for, so none outlives this iterator;
    ``discard`` is then called on each result that was computed but never handed out (to wipe
    the DEKs it holds).
    """
    source = iter(jobs)
    first = next(source, None)
    if first is None:
        return
    second = next(source, None)
    if second is None:
        yield from _serially((first,))
    elif in_flight <= 1:
        yield from _serially(itertools.chain((first, second), source))
    else:
        yield from _pooled(itertools.chain((first, second), source), in_flight, discard)


def _serially(jobs: Iterable[Callable[[], _R]]) -> Generator[_R, None, None]:
    for job in jobs:
        yield job()


def _pooled(
    jobs: Iterable[Callable[[], _R]], in_flight: int, discard: Callable[[_R], None] | None
) -> Generator[_R, None, None]:
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="heimdall-kms-batch")
    pending: deque[Future[_R]] = deque()
    try:
        for job in jobs:
            if len(pending) < in_flight:
                pending.append(pool.submit(job))
                continue
            # Queue the next job before waiting, so the pool stays busy while the caller
            # works on this result.
            oldest = pending.popleft()
            pending.append(pool.submit(job))
            yield oldest.result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if discard is not None:
            _discard_produced(pending, discard)


def _discard_produced(pending: Iterable[Future[_R]], discard: Callable[[_R], None]) -> None:
    """Hand each result that was computed but never yielded to ``discard``."""
    for future in pending:
        if not future.cancelled() and future.exception() is None:
            discard(future.result())
