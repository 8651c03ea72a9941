"""A provider wrapper that counts a background job's KMS calls and paces them.

Background jobs (migration, re-encryption) run through it. Every call waits for its requests'
tokens in a shared :class:`TokenBucket` and for a slot among the calls in flight
(:class:`InFlightLimit`); both adapt to the KMS: a throttled call (429, ThrottlingException,
RESOURCE_EXHAUSTED) halves the rate and the calls in flight and holds every call for the
KMS's Retry-After, an overloaded KMS (503, unavailable) halves the calls in flight, and each
call that goes through wins a step back. The error is then raised: the job's batch loop
waits and tries the batch again (see :mod:`heimdall_kms.jobs.patience`), so no retry here
sends a request the bucket has not paced.

A batch provider (Vault) costs one token per request of ``batching.size`` values; a provider
without batch calls sends one request per value and costs one token per value.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from heimdall_kms.config import ProviderName
from heimdall_kms.errors import CircuitOpenError, KMSUnavailableError, RateLimitedError
from heimdall_kms.jobs.rate import InFlightLimit, TokenBucket
from heimdall_kms.providers.base import DEFAULT_BATCHING, KeyManagementService, batching_of
from heimdall_kms.providers.wrapper import KMSOperation, ProviderWrapper

__all__ = ["MeteredProvider", "Pacing"]

LOCAL = ProviderName.LOCAL


@dataclass(frozen=True, slots=True)
class Pacing:
    """How a job is paced right now, for its progress output and metrics."""

    throttled: int  # answers "slow down" (rate limit, quota) so far
    rate: float  # KMS requests per second it is paced at; 0: not paced
    in_flight: int  # calls it may have in flight at once


_T = TypeVar("_T")


class MeteredProvider(ProviderWrapper):
    def __init__(self, inner: KeyManagementService, bucket: TokenBucket | None = None) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.throttled = 0
        self._bucket = bucket or TokenBucket(0)
        self._in_flight = InFlightLimit(batching_of(inner).in_flight)
        # Vault says how many values one request carries; AWS, GCP and Azure send one
        # request per value; the local provider sends none (one token per call).
        self._per_value = batching_of(inner) is DEFAULT_BATCHING and inner.name is not LOCAL
        self._lock = threading.Lock()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def pacing(self) -> Pacing:
        return Pacing(self.throttled, self._bucket.rate, self._in_flight.limit)

    def _cost(self, items: int) -> int:
        if self._per_value:
            return max(1, items)
        size = max(1, batching_of(self.inner).size)
        return max(1, -(-items // size))

    def _around(self, operation: KMSOperation, call: Callable[[], _T], items: int | None) -> _T:
        # Calls may overlap on worker threads (see Batching.in_flight): the bucket, the limit
        # and the counters are shared; each waits for its turn outside any lock.
        cost = self._cost(items or 1)
        with self._in_flight:
            self._bucket.acquire(cost)
            with self._lock:
                self.calls[operation.value] += 1
            try:
                result = call()
            except RateLimitedError as exc:
                with self._lock:
                    self.throttled += 1
                self._bucket.slow_down(exc.retry_after, cost)
                self._in_flight.slow_down()
                raise
            except CircuitOpenError:
                raise  # no request was sent
            except KMSUnavailableError:
                self._in_flight.slow_down()
                raise
        self._bucket.speed_up(cost)
        self._in_flight.speed_up()
        return result
