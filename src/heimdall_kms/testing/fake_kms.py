"""``FakeKMS``: an in-memory :class:`~heimdall_kms.providers.KeyManagementService` for tests.

It does real cryptography (AES-256-GCM from :mod:`heimdall_kms.primitives`) under master keys
that live only in this process, and keeps the rules a KMS keeps: key versions, rotation, a
minimum decryption version, per-item failures in place, a wrapped key bound to its version.
It counts its calls, so a test or a benchmark can see how often the KMS was asked. Nothing is
stored and nothing leaves the process, which is exactly why it is for tests and benchmarks only.

>>> from heimdall_kms.testing import FakeKMS
>>> kms = FakeKMS()
>>> kms.rotate().latest_version
2
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from heimdall_kms import primitives
from heimdall_kms.errors import (
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSUnavailableError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.base import (
    Batching,
    HashKey,
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    round_trip,
)
from heimdall_kms.providers.local import software_wrap
from heimdall_kms.wrapped_key import WrappedCodec

__all__ = ["FakeKMS", "KMSCalls"]

Clock = Callable[[], datetime]
# Any body the wrapped form allows: software_wrap.unwrap checks it after the version, so a
# damaged value under a retired or missing version is reported as retired or missing.
_ANY_BODY = re.compile(r"\S+")


@dataclass
class KMSCalls:
    """How many calls of each kind the fake answered (a batch is one call)."""

    wrap: int = 0
    unwrap: int = 0
    rewrap: int = 0
    hmac: int = 0


@dataclass
class _Version:
    key: bytearray = field(repr=False)
    created_at: datetime


class FakeKMS:
    """One master key with versions, in memory. Thread-safe; ``close()`` wipes the keys.

    ``name`` is what envelopes record as the provider (``local`` by default: a key on this
    host); ``batching`` is what it tells callers about feeding it.
    """

    def __init__(
        self,
        key_identifier: str = "heimdall-pii",
        *,
        name: ProviderName = ProviderName.LOCAL,
        batching: Batching = Batching(size=1000, in_flight=1),  # noqa: B008 - frozen value
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._key_identifier = key_identifier
        self._name = name
        self._wrapped = WrappedCodec(name, _ANY_BODY)
        self._batching = batching
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: dict[int, _Version] = {}
        self._hash_keys: dict[str, bytearray] = {}
        self._minimum = 1
        self._closed = False
        self.calls = KMSCalls()
        self._add_version()

    def __repr__(self) -> str:
        return f"FakeKMS({self._key_identifier!r}, versions={len(self._versions)})"

    @property
    def name(self) -> ProviderName:
        return self._name

    @property
    def key_identifier(self) -> str:
        return self._key_identifier

    @property
    def batching(self) -> Batching:
        return self._batching

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        with self._open():
            self.calls.wrap += 1
            latest = max(self._versions)
            return [self._wrap(latest, dek) for dek in deks]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        with self._open():
            self.calls.unwrap += 1
            return [self._unwrap(item) for item in wrapped]

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        with self._open():
            self.calls.rewrap += 1
            latest = max(self._versions)
            return software_wrap.rewrap_each(
                wrapped, self._unwrap, lambda dek: self._wrap(latest, dek)
            )

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        """HMAC-SHA256 under a hashing key of its own (made on first use, never the wrap key).

        Raises:
            KeyNotFoundError: a version other than 1 is asked for.
        """
        with self._open():
            self.calls.hmac += 1
            if key.version != 1:
                raise KeyNotFoundError(f"fake hashing key {key.name!r}: no version {key.version}")
            secret = self._hash_keys.setdefault(key.name, primitives.new_dek())
            return [
                self._wrapped.write(1, base64.b64encode(primitives.mac(secret, v)).decode())
                for v in values
            ]

    def rotate(self) -> KeyInfo:
        with self._open():
            self._add_version()
            return self._describe()

    def retire(self, below_version: int) -> KeyInfo:
        """Refuse decryption below ``below_version`` (never lowers the minimum).

        Raises:
            InvalidInputError: ``below_version`` is not between 1 and the latest version.
        """
        with self._open():
            check_retire_bound(below_version, max(self._versions))
            self._minimum = max(self._minimum, below_version)
            return self._describe()

    def describe(self) -> KeyInfo:
        with self._open():
            return self._describe()

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        """Wipe every master key; the fake cannot be used afterwards."""
        with self._lock:
            for version in self._versions.values():
                primitives.wipe(version.key)
            for secret in self._hash_keys.values():
                primitives.wipe(secret)
            self._closed = True

    @contextmanager
    def _open(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise KMSUnavailableError("the fake KMS is closed")
            yield

    def _add_version(self) -> None:
        number = max(self._versions, default=0) + 1
        self._versions[number] = _Version(primitives.new_dek(), self._clock())

    def _describe(self) -> KeyInfo:
        return KeyInfo(
            provider=self._name,
            key_identifier=self._key_identifier,
            latest_version=max(self._versions),
            min_decryption_version=self._minimum,
            versions=tuple(
                KeyVersion(number, version.created_at)
                for number, version in sorted(self._versions.items())
                if number >= self._minimum
            ),
        )

    def _aad(self, version: int) -> bytes:
        return f"heimdall-fake-dek|{self._key_identifier}|v{version}".encode()

    def _wrap(self, version: int, dek: bytearray) -> WrappedKey:
        key = self._versions[version].key
        return software_wrap.wrap(key, self._wrapped, version, dek, self._aad(version))

    def _unwrap(self, item: str) -> bytearray | HeimdallKMSError:
        form = self._wrapped.read(item)
        if form is None:
            return IntegrityError(f"wrapped data key is not in the {self._name} form")
        if form.version < self._minimum:
            return KeyVersionRetiredError(f"key version {form.version} is retired")
        version = self._versions.get(form.version)
        if version is None:
            return KeyNotFoundError(f"key version {form.version} does not exist")
        return software_wrap.unwrap(version.key, form.body, self._aad(form.version))
