"""``ProviderWrapper``: a provider around another one (retries, pacing, tracing).

Every wrapper passes the contract straight through to the provider it wraps, and differs only
in what it does *around* each call. So the delegation is written once, here, and a wrapper
overrides one hook, :meth:`ProviderWrapper._around`, which is told which operation runs and how
many values it carries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TypeVar

from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.base import (
    Batching,
    HashKey,
    KeyContext,
    KeyedHashing,
    KeyInfo,
    KeyManagementService,
    KeyWrapper,
    WrappedKey,
    batching_of,
)

__all__ = ["KMSOperation", "ProviderWrapper", "innermost"]

_T = TypeVar("_T")


class KMSOperation(StrEnum):
    """The calls of the provider contract, as wrappers name them (counters, span names)."""

    WRAP = "wrap"
    UNWRAP = "unwrap"
    REWRAP = "rewrap"
    HMAC = "hmac"
    ROTATE = "rotate"
    RETIRE = "retire"
    DESCRIBE = "describe"
    HEALTH = "health"


class ProviderWrapper:
    """A provider that wraps another: name, key, batching and keyed hashing are the wrapped
    provider's; every call goes through :meth:`_around`. A batch of no values makes no call.
    """

    def __init__(self, inner: KeyManagementService) -> None:
        self.inner = inner

    @property
    def name(self) -> ProviderName:
        return self.inner.name

    @property
    def key_identifier(self) -> str:
        return self.inner.key_identifier

    @property
    def batching(self) -> Batching:
        return batching_of(self.inner)

    def _around(self, operation: KMSOperation, call: Callable[[], _T], items: int | None) -> _T:
        """Run ``call`` (the wrapped provider's ``operation`` on ``items`` values; None for a
        call that carries no values). The default passes it straight through."""
        del operation, items
        return call()

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        if not deks:
            return []
        return self._around(
            KMSOperation.WRAP, lambda: self.inner.wrap_many(deks, contexts), len(deks)
        )

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        if not wrapped:
            return []
        return self._around(
            KMSOperation.UNWRAP, lambda: self.inner.unwrap_many(wrapped, contexts), len(wrapped)
        )

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        if not wrapped:
            return []
        return self._around(
            KMSOperation.REWRAP, lambda: self.inner.rewrap_many(wrapped, contexts), len(wrapped)
        )

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        """Raises ConfigurationError when the wrapped provider has no keyed hashing."""
        hasher = self.inner
        if not isinstance(hasher, KeyedHashing):
            raise ConfigurationError(
                f"HMD_KMS_PROVIDER={self.name.value} has no keyed hashing (hmac) in this release"
            )
        return self._around(KMSOperation.HMAC, lambda: hasher.hmac_many(values, key), len(values))

    def rotate(self) -> KeyInfo:
        return self._around(KMSOperation.ROTATE, self.inner.rotate, None)

    def retire(self, below_version: int) -> KeyInfo:
        return self._around(KMSOperation.RETIRE, lambda: self.inner.retire(below_version), None)

    def describe(self) -> KeyInfo:
        return self._around(KMSOperation.DESCRIBE, self.inner.describe, None)

    def health(self) -> None:
        self._around(KMSOperation.HEALTH, self.inner.health, None)

    def close(self) -> None:
        self.inner.close()


def innermost(kms: KeyWrapper) -> KeyWrapper:
    """The provider under every wrapper of ``kms``."""
    current: KeyWrapper = kms
    while isinstance(current, ProviderWrapper):
        current = current.inner
    return current
