"""Run KMS calls a few at a time on worker threads while the caller works on earlier results.

A batch KMS call spends most of its time waiting for the server, with the GIL released. With
several calls in flight, the KMS works on the next batches while this process seals or opens
the current one, so the two costs overlap instead of adding up.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["in_order"]

_R = TypeVar("_R")


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
    if in_flight <= 1 or second is None:
        yield first()
        if second is not None:
            yield second()
            for job in source:
                yield job()
        return
    pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="heimdall-kms-batch")
    pending: deque[Future[_R]] = deque()
    try:
        for job in itertools.chain((first, second), source):
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
        for future in pending:
            if discard is not None and not future.cancelled() and future.exception() is None:
                discard(future.result())
