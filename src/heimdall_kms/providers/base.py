"""The provider contracts and the value types they speak in.

Two contracts, apart: :class:`KeyWrapper`, the data plane (wrap, unwrap, rewrap, optional
batching and keyed hashing), all that sealing, opening and ``Crypto`` see; and
:class:`KeyAdmin` (describe, rotate, retire, health), used by the lifecycle jobs, the CLI key
commands and the admin API. :class:`KeyManagementService` is both, what a provider class
implements and ``load_provider`` returns.

A provider wraps and unwraps data keys with a master key that never leaves the KMS. Batch
calls are part of the contract because speed comes from batching, never from caching DEKs
(SPEC §1). Per-item failures of a batch come back in place as error objects so that a
migration can report the one bad row and carry on; failures of the whole call (network,
authentication, rate limits) are raised.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from heimdall_kms import primitives
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
)
from heimdall_kms.frozen_slots import new_instance, slot_setters
from heimdall_kms.kinds import ProviderName

__all__ = [
    "Batching",
    "BatchingHint",
    "HashKey",
    "KeyAdmin",
    "KeyContext",
    "KeyInfo",
    "KeyManagementService",
    "KeyVersion",
    "KeyWrapper",
    "KeyedHashing",
    "WrappedKey",
    "batching_of",
    "check_retire_bound",
    "http_date",
    "key_admin",
    "response_date",
    "round_trip",
]

KeyContext = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A DEK wrapped by the master key, in the provider's own form (e.g. ``vault:v3:...``)."""

    ciphertext: str
    key_version: int

    def __repr__(self) -> str:
        return (
            f"WrappedKey(key_version={self.key_version}, ciphertext=<{len(self.ciphertext)} chars>)"
        )

    @classmethod
    def made(cls, ciphertext: str, key_version: int) -> WrappedKey:
        """What ``WrappedKey(ciphertext, key_version)`` makes, for a provider's batch answers
        (one per value): the frozen ``__init__`` costs one ``object.__setattr__`` per field."""
        key = new_instance(cls)
        _set_ciphertext(key, ciphertext)
        _set_key_version(key, key_version)
        return key


# For WrappedKey.made: the object without the frozen __init__ (frozen_slots).
_set_ciphertext, _set_key_version = slot_setters(WrappedKey, "ciphertext", "key_version")


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the KMS says about the master key.

    ``versions`` lists the versions that can still decrypt (at or above
    ``min_decryption_version``), oldest first. ``server_time`` is the KMS's own current time
    when it answered (its HTTP ``Date``), or None where the provider cannot tell it.
    """

    provider: ProviderName
    key_identifier: str
    latest_version: int
    min_decryption_version: int
    versions: tuple[KeyVersion, ...]
    server_time: datetime | None = None
    # The key's type as the KMS names it (Vault Transit's ``aes256-gcm96``), where it says:
    # the length of the wrapped DEKs it gives follows from it (heimdall_kms.jobs.fit).
    key_type: str | None = None

    @property
    def latest(self) -> KeyVersion:
        for version in self.versions:
            if version.version == self.latest_version:
                return version
        return KeyVersion(self.latest_version, None)


class KeyWrapper(Protocol):
    """The data plane of one master key: all that sealing, opening and ``Crypto`` see.

    A thin adapter over a ready SDK client (tink's ``awskms``/``hcvault`` AEADs are the shape):
    it wraps, unwraps and re-wraps data keys and says how it is best fed
    (:class:`BatchingHint`, optional); keyed hashing (:class:`KeyedHashing`) is optional too.
    Key administration is the other contract, :class:`KeyAdmin`.
    """

    @property
    def name(self) -> ProviderName:
        """The provider's name as written into envelopes."""

    @property
    def key_identifier(self) -> str:
        """The master key's id as configured (``HMD_KMS_KEY_ID``)."""

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        """Wrap each DEK with the latest key version, in as few KMS calls as the KMS allows.

        ``contexts[i]`` is the non-secret context of ``deks[i]``; providers whose rewrap still
        works with it bind it at the KMS as well (see ``docs/configuration.md``).

        Raises:
            KMSError: any failure; wrapping has no per-item failures.
        """

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        """Unwrap each DEK. The caller wipes every returned ``bytearray`` after use.

        Returns:
            In input order, the DEK or the error for that item (``IntegrityError`` for a
            damaged wrapped key, ``KeyVersionRetiredError`` below the minimum version, ...).

        Raises:
            KMSError: a failure of the whole call (unavailable, authentication, rate limit).
        """

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        """Re-wrap each DEK under the latest key version, server-side where the KMS can.

        Raises:
            KMSError: a failure of the whole call.
        """

    def close(self) -> None:
        """Release network resources."""


@runtime_checkable
class KeyAdmin(Protocol):
    """The administration of one master key: what the lifecycle jobs (rotation, retirement,
    propagation checks), the CLI key commands and the admin API use. Never on the data path."""

    @property
    def name(self) -> ProviderName:
        """The provider's name as written into envelopes."""

    @property
    def key_identifier(self) -> str:
        """The master key's id as configured (``HMD_KMS_KEY_ID``)."""

    def describe(self) -> KeyInfo:
        """Versions with creation times, the latest version and the minimum decryption version.

        Raises:
            KMSError: the KMS refused or failed.
        """

    def rotate(self) -> KeyInfo:
        """Create a new key version and make it the one that wraps new DEKs.

        Raises:
            KMSError: the KMS refused or failed.
        """

    def retire(self, below_version: int) -> KeyInfo:
        """Make every version below ``below_version`` unusable for decryption.

        Raises:
            InvalidInputError: ``below_version`` is not between 1 and the latest version
                (:func:`check_retire_bound`).
            KMSError: the KMS refused or failed.
        """

    def health(self) -> None:
        """Prove the key is usable with a real wrap/unwrap round trip of a random DEK.

        Raises:
            KMSError: the round trip failed.
        """

    def close(self) -> None:
        """Release network resources."""


class KeyManagementService(KeyWrapper, KeyAdmin, Protocol):
    """Both sides of one master key, as :func:`heimdall_kms.providers.load_provider` returns
    it: every provider class implements both. Code that needs only one side takes
    :class:`KeyWrapper` or :class:`KeyAdmin`; this name is for the few that need both (the
    lifecycle jobs' canaries wrap and unwrap; the composition that builds ``Crypto``)."""


def key_admin(kms: KeyWrapper) -> KeyAdmin:
    """The admin side of a data-plane key that a lifecycle job was handed through ``Crypto``.

    Raises:
        ConfigurationError: the object has no admin side (a bare data-plane wrapper).
    """
    if not isinstance(kms, KeyAdmin):
        raise ConfigurationError(
            f"{kms.name.value} key {kms.key_identifier!r}: this job needs the key's admin side "
            "(describe, rotate, retire), which this provider object does not have"
        )
    return kms


def check_retire_bound(below_version: int, latest: int) -> None:
    """The one range check of :meth:`KeyAdmin.retire`, shared by every provider.

    Raises:
        InvalidInputError: ``below_version`` is not between 1 and ``latest``.
    """
    if not 1 <= below_version <= latest:
        raise InvalidInputError(
            f"cannot retire below version {below_version}: it must be between 1 and the "
            f"latest version {latest}"
        )


@dataclass(frozen=True, slots=True)
class Batching:
    """How callers should feed a provider's ``*_many`` methods.

    ``size`` values per call (for Vault, one Transit ``batch_input`` request), and up to
    ``in_flight`` such calls at once. A batch provider gains from several calls in flight: the
    KMS works on one batch while this process seals the previous one. Providers that send one
    request per value already run their own bounded concurrency inside each call; they say
    ``in_flight=1`` so that callers do not multiply it past the rate budget.
    """

    size: int
    in_flight: int = 1


DEFAULT_BATCHING = Batching(size=1000, in_flight=1)


@runtime_checkable
class BatchingHint(Protocol):
    """A provider that says how it is best fed (optional: see :func:`batching_of`)."""

    @property
    def batching(self) -> Batching: ...


def http_date(value: object) -> datetime | None:
    """An HTTP ``Date`` header (a KMS's clock) as an aware UTC time; None if absent or bad."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    return when.astimezone(UTC) if when.tzinfo is not None else None


def response_date(response: Mapping[str, object]) -> datetime | None:
    """The ``Date`` a botocore response was sent with (``ResponseMetadata.HTTPHeaders``)."""
    metadata = response.get("ResponseMetadata")
    headers = metadata.get("HTTPHeaders") if isinstance(metadata, Mapping) else None
    return http_date(headers.get("date")) if isinstance(headers, Mapping) else None


def batching_of(kms: KeyWrapper) -> Batching:
    """The provider's :class:`Batching`, or one call of up to 1,000 values at a time."""
    return kms.batching if isinstance(kms, BatchingHint) else DEFAULT_BATCHING


@dataclass(frozen=True, slots=True)
class HashKey:
    """The KMS key (and its pinned version) that keyed hashes are made with.

    A keyed hash is a search index: it must not change when the encryption key rotates, so it
    has its own key, and a pinned version of it, changed only by a deliberate re-index.
    """

    name: str
    version: int


@runtime_checkable
class KeyedHashing(Protocol):
    """Keyed hashing (HMAC) whose key stays in the KMS: searchable, not enumerable.

    A plain SHA-256 of an SSN or a phone number is reversed by hashing every candidate; an
    HMAC is not, as long as its key stays in the KMS. Not every provider has it.
    """

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        """HMAC-SHA256 of each value under ``key``, in the provider's versioned form
        (``vault:v1:...``).

        Raises:
            ConfigurationError: the provider has no keyed hashing. KeyNotFoundError: no such
                key or version. KMSError: the call failed.
        """


def round_trip(kms: KeyWrapper) -> None:
    """The health check every provider shares: wrap a fresh random DEK and unwrap it again.

    Raises:
        HeimdallKMSError: either call failed, or the DEK did not come back intact.
    """
    dek = primitives.new_dek()
    try:
        (wrapped,) = kms.wrap_many([dek], [{}])
        (result,) = kms.unwrap_many([wrapped.ciphertext], [{}])
        if isinstance(result, HeimdallKMSError):
            raise result
        same = result == dek
        primitives.wipe(result)
        if not same:
            raise IntegrityError("the KMS returned a different data key on the health check")
    finally:
        primitives.wipe(dek)
