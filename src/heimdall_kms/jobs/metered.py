"""A provider wrapper that counts KMS calls and paces them with a shared token bucket.

Background jobs (migration, re-encryption) run through it so that they report how many KMS
calls they made and never take more than ``--rate-limit`` calls per second, leaving the rest
of the KMS's quota to live traffic.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.jobs.rate import TokenBucket
from heimdall_kms.providers.base import (
    HashKey,
    KeyContext,
    KeyInfo,
    KeyManagementService,
    ProviderWrapper,
    WrappedKey,
)

__all__ = ["MeteredProvider"]

_T = TypeVar("_T")


class MeteredProvider(ProviderWrapper):
    def __init__(self, inner: KeyManagementService, bucket: TokenBucket | None = None) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self._bucket = bucket or TokenBucket(0)
        self._lock = threading.Lock()
        # Throttling seen by the retry layer below slows this job's budget down.
        register = getattr(inner, "on_throttle", None)
        if callable(register):
            register(self._bucket.slow_down)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def _call(self, operation: str, call: Callable[[], _T]) -> _T:
        # Calls may overlap on worker threads (see Batching.in_flight): the bucket and the
        # counter are shared, the KMS call itself runs outside the lock.
        with self._lock:
            self._bucket.acquire()
            self.calls[operation] += 1
        result = call()
        with self._lock:
            self._bucket.speed_up()
        return result

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        if not deks:
            return []
        return self._call("wrap", lambda: self.inner.wrap_many(deks, contexts))

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        if not wrapped:
            return []
        return self._call("unwrap", lambda: self.inner.unwrap_many(wrapped, contexts))

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        if not wrapped:
            return []
        return self._call("rewrap", lambda: self.inner.rewrap_many(wrapped, contexts))

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        hasher = self._keyed_hashing()
        return self._call("hmac", lambda: hasher.hmac_many(values, key))

    def rotate(self) -> KeyInfo:
        return self._call("rotate", self.inner.rotate)

    def retire(self, below_version: int) -> KeyInfo:
        return self._call("retire", lambda: self.inner.retire(below_version))

    def describe(self) -> KeyInfo:
        return self._call("describe", self.inner.describe)

    def health(self) -> None:
        self._call("health", self.inner.health)

    def close(self) -> None:
        self.inner.close()
