"""``GCPKMSProvider``: Google Cloud KMS through the official ``google-cloud-kms`` client.

``HMD_KMS_KEY_ID`` is a CryptoKey resource name
(``projects/P/locations/L/keyRings/R/cryptoKeys/K``, purpose ENCRYPT_DECRYPT). A DEK is
wrapped with ``encrypt`` on the CryptoKey, which uses its primary version, and stored as
``gcp:v{n}:{base64 ciphertext}`` with ``n`` taken from the version named in the response.

The per-item context is bound at the KMS as ``additional_authenticated_data`` (canonical JSON
under a purpose label), on top of the value's own AES-GCM AAD: an unwrap under another
context fails in Cloud KMS itself. Every request and response is checked with CRC32C as
Google's data-integrity guidelines describe; a response that fails the check is retried a few
times and then refused.

Cloud KMS has no batch call and no server-side re-encrypt: items go out one request each over
a bounded thread pool, in order, with per-item failures in place; ``rewrap_many`` decrypts and
re-encrypts in this process, so each DEK passes through memory briefly and is wiped.

Raw responses are unpacked here and never leave this module. google-api-core's exception
messages quote the request URL and the server's text, so errors are rebuilt from the status
code alone and raised ``from None``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyVersionRetiredError,
    KMSError,
    KMSUnavailableError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.overlap import fan_out
from heimdall_kms.providers.base import (
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    round_trip,
)
from heimdall_kms.providers.deadline import deadline, watch
from heimdall_kms.providers.gcp.client import build_client, check_key_name
from heimdall_kms.providers.gcp.errors import translated
from heimdall_kms.wrapped_key import WrappedCodec

if TYPE_CHECKING:
    from heimdall_kms.config import Settings

__all__ = ["GCPKMSProvider"]


# ``gcp:v<n>:`` and the base64 of Cloud KMS's ciphertext (heimdall_kms.wrapped_key).
_WRAPPED = WrappedCodec("gcp", re.compile(r"[A-Za-z0-9+/]+={0,2}"))
_AAD_PURPOSE = "heimdall-kms/dek"
# Cloud KMS HSM keys accept at most 8 KiB of plaintext and additional_authenticated_data
# together (software keys 64 KiB each); contexts within heimdall's own limits can exceed it.
_HSM_INPUT_BYTES = 8192
_CRC_ATTEMPTS = 3  # Google's guidance: retry a checksum failure a limited number of times.
_STATE = kms_v1.CryptoKeyVersion.CryptoKeyVersionState
_T = TypeVar("_T")
_I = TypeVar("_I")


class GCPKMSProvider:
    """One Cloud KMS CryptoKey. Construct with a ready client, or :meth:`from_settings`.

    ``timeout`` bounds one KMS call including its retries (UNAVAILABLE, DEADLINE_EXCEEDED
    and refused connections are retried with backoff within it), as a total deadline: over
    REST an answer that trickles in is cut there (:mod:`heimdall_kms.providers.deadline`),
    over gRPC it is the call's own deadline. RESOURCE_EXHAUSTED is not retried here: it is
    raised at once with the RetryInfo delay Cloud KMS gives, for the caller to honour (an
    online call fails fast, a background job waits). ``retry=False`` turns retrying off.
    ``max_concurrency`` bounds the requests in flight.
    """

    def __init__(
        self,
        client: kms_v1.KeyManagementServiceClient,
        key_name: str,
        *,
        max_concurrency: int = 10,
        timeout: float = 30.0,
        retry: bool = True,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidInputError("max_concurrency must be at least 1")
        self._client = client
        self._key = check_key_name(key_name)
        self._versions = self._key + "/cryptoKeyVersions/"
        self._timeout = timeout
        self._retry = _retry_policy(timeout) if retry else None
        self._max_concurrency = max_concurrency
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        session = getattr(client.transport, "_session", None)  # the REST transport's
        if isinstance(session, requests.Session):
            watch(session)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.gcp is None or settings.kms_key_id is None:
            raise ConfigurationError("HMD_KMS_KEY_ID: required for HMD_KMS_PROVIDER=gcp")
        key_name = check_key_name(settings.kms_key_id)
        return cls(
            build_client(settings.gcp),
            key_name,
            max_concurrency=settings.gcp.max_concurrency,
            timeout=settings.gcp.timeout_seconds,
        )

    @property
    def name(self) -> ProviderName:
        return ProviderName.GCP

    @property
    def key_identifier(self) -> str:
        return self._key

    # -- data keys ----------------------------------------------------------------------------

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        _same_length(deks, contexts)
        return self._map(self._wrap_one, list(zip(deks, contexts, strict=True)))

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        _same_length(wrapped, contexts)
        return self._map(self._unwrap_one, list(zip(wrapped, contexts, strict=True)))

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        # Cloud KMS has no re-encrypt call: the DEK is decrypted and encrypted again here,
        # under the same AAD, and wiped at once (docs/providers/gcp.md).
        _same_length(wrapped, contexts)

        def rewrap_one(item: tuple[str, KeyContext]) -> WrappedKey | HeimdallKMSError:
            dek = self._unwrap_one(item)
            if isinstance(dek, HeimdallKMSError):
                return dek
            try:
                return self._wrap_one((dek, item[1]))
            finally:
                primitives.wipe(dek)

        return self._map(rewrap_one, list(zip(wrapped, contexts, strict=True)))

    @property
    def pins_versions(self) -> bool:
        return True

    def wrap_at_version(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext], version: int
    ) -> list[WrappedKey]:
        """Wrap with one named enabled version instead of the primary (Cloud KMS encrypts
        with a CryptoKeyVersion named in the request): the canaries of a retirement."""
        _same_length(deks, contexts)
        name = self._versions + str(version)
        return [self._wrap_one(item, name) for item in zip(deks, contexts, strict=True)]

    def _wrap_one(self, item: tuple[bytearray, KeyContext], name: str | None = None) -> WrappedKey:
        dek, context = item
        aad = _kms_aad(context)
        _check_hsm_input(aad)
        plaintext = bytes(dek)
        request = {
            "name": name or self._key,
            "plaintext": plaintext,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": _crc(plaintext),
            "additional_authenticated_data_crc32c": _crc(aad),
        }
        for _attempt in range(_CRC_ATTEMPTS):
            response = self._call("encrypt", self._client.encrypt, request)
            _check_request_verified(response)
            if response.ciphertext_crc32c == _crc(response.ciphertext):
                version = self._version_number(response.name)
                text = base64.b64encode(response.ciphertext).decode("ascii")
                return WrappedKey(_WRAPPED.write(version, text), version)
        raise KMSError(_CORRUPTED.format(operation="encrypt", attempts=_CRC_ATTEMPTS))

    def _unwrap_one(self, item: tuple[str, KeyContext]) -> bytearray | HeimdallKMSError:
        text, context = item
        ciphertext = _ciphertext(text)
        if isinstance(ciphertext, IntegrityError):
            return ciphertext
        aad = _kms_aad(context)
        request = {
            "name": self._key,
            "ciphertext": ciphertext,
            "additional_authenticated_data": aad,
            "ciphertext_crc32c": _crc(ciphertext),
            "additional_authenticated_data_crc32c": _crc(aad),
        }
        for _attempt in range(_CRC_ATTEMPTS):
            try:
                response = self._call("decrypt", self._client.decrypt, request)
            except (IntegrityError, KeyVersionRetiredError) as error:
                return error  # this item only: damaged, other context, or version disabled
            dek = bytearray(response.plaintext)
            if response.plaintext_crc32c == _crc(bytes(dek)):
                return _checked_length(dek)
            primitives.wipe(dek)
        return KMSError(_CORRUPTED.format(operation="decrypt", attempts=_CRC_ATTEMPTS))

    # -- key lifecycle ------------------------------------------------------------------------

    def rotate(self) -> KeyInfo:
        version = self._call(
            "rotate",
            self._client.create_crypto_key_version,
            {"parent": self._key, "crypto_key_version": {}},
            # Not retried: a create that timed out may have happened, and a second one would
            # skip a version.
            idempotent=False,
        )
        self._wait_until_enabled(version)
        self._call(
            "rotate",
            self._client.update_crypto_key_primary_version,
            {"name": self._key, "crypto_key_version_id": str(self._version_number(version.name))},
        )
        return self.describe()

    def retire(self, below_version: int) -> KeyInfo:
        info = self.describe()
        check_retire_bound(below_version, info.latest_version)
        for version in self._list_versions():
            number = self._version_number(version.name)
            if number < below_version and version.state == _STATE.ENABLED:
                self._call(
                    "retire",
                    self._client.update_crypto_key_version,
                    {
                        "crypto_key_version": {"name": version.name, "state": _STATE.DISABLED},
                        "update_mask": {"paths": ["state"]},
                    },
                )
        return self.describe()

    def describe(self) -> KeyInfo:
        key = self._call("describe", self._client.get_crypto_key, {"name": self._key})
        if not key.primary.name:
            raise KMSError("GCP KMS describe: the CryptoKey has no primary version")
        primary = self._version_number(key.primary.name)
        enabled = self._enabled_versions()
        return KeyInfo(
            provider=self.name,
            key_identifier=self._key,
            latest_version=primary,
            min_decryption_version=enabled[0][0] if enabled else primary,
            versions=tuple(KeyVersion(number, created) for number, created in enabled),
        )

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._client.transport.close()  # type: ignore[no-untyped-call]

    # -- plumbing -----------------------------------------------------------------------------

    def _enabled_versions(self) -> list[tuple[int, datetime | None]]:
        """The ENABLED versions' numbers and creation times, oldest first."""
        return sorted(
            (self._version_number(v.name), _created(v.create_time))
            for v in self._list_versions()
            if v.state == _STATE.ENABLED
        )

    def _list_versions(self) -> list[kms_v1.CryptoKeyVersion]:
        with deadline(self._timeout, "GCP KMS describe"), translated("describe"):
            return list(
                self._client.list_crypto_key_versions(
                    request={"parent": self._key}, retry=self._retry, timeout=self._timeout
                )
            )

    def _wait_until_enabled(self, version: kms_v1.CryptoKeyVersion) -> None:
        # Software versions are ENABLED at once; HSM versions are PENDING_GENERATION for a
        # moment, and only an ENABLED version can be made primary.
        deadline = time.monotonic() + self._timeout
        delay = 0.1
        while version.state == _STATE.PENDING_GENERATION:
            if time.monotonic() > deadline:
                raise KMSUnavailableError("GCP KMS rotate: the new key version was not generated")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            version = self._call(
                "rotate", self._client.get_crypto_key_version, {"name": version.name}
            )
        if version.state != _STATE.ENABLED:
            raise KMSError("GCP KMS rotate: the new key version is not enabled")

    def _version_number(self, name: str) -> int:
        number = name.removeprefix(self._versions)
        if not (name.startswith(self._versions) and number.isdigit()):
            raise KMSError("GCP KMS answered with a key version of another CryptoKey")
        return int(number)

    def _call(
        self,
        operation: str,
        method: Callable[..., _T],
        request: dict[str, Any],
        *,
        idempotent: bool = True,
    ) -> _T:
        retry = self._retry if idempotent else None
        with deadline(self._timeout, f"GCP KMS {operation}"), translated(operation):
            return method(request=request, retry=retry, timeout=self._timeout)

    def _map(self, call: Callable[[_I], _T], items: list[_I]) -> list[_T]:
        # The one fan-out, on this provider's long-lived pool (no thread start per call):
        # input order, the first whole-call failure stops the rest and is raised, DEKs
        # already unwrapped by then are wiped.
        return fan_out(
            call,
            items,
            self._max_concurrency,
            discard=primitives.wipe_if_dek,
            executor=self._executor(),
        )

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self._max_concurrency, thread_name_prefix="heimdall-gcp-kms"
                )
            return self._pool


_CORRUPTED = (
    "GCP KMS {operation}: the response failed its CRC32C integrity check {attempts} times "
    "(corrupted in transit)"
)


def _retry_policy(timeout: float) -> api_retry.Retry:
    return api_retry.Retry(
        predicate=api_retry.if_exception_type(
            api_exceptions.ServiceUnavailable,
            api_exceptions.DeadlineExceeded,
            requests.exceptions.ConnectionError,
        ),
        initial=0.1,
        maximum=5.0,
        multiplier=2.0,
        timeout=timeout,
    )


def _same_length(items: Sequence[object], contexts: Sequence[KeyContext]) -> None:
    if len(items) != len(contexts):
        raise InvalidInputError("contexts must have one entry per data key")


def _ciphertext(text: str) -> bytes | IntegrityError:
    form = _WRAPPED.read(text)
    if form is None:
        return IntegrityError("wrapped data key is not a GCP KMS ciphertext")
    try:
        return base64.b64decode(form.body, validate=True)
    except binascii.Error:
        return IntegrityError("wrapped data key is not valid base64")


def _checked_length(dek: bytearray) -> bytearray | IntegrityError:
    if len(dek) != primitives.DEK_BYTES:
        primitives.wipe(dek)
        return IntegrityError("unwrapped data key has the wrong length")
    return dek


def _check_hsm_input(aad: bytes) -> None:
    if primitives.DEK_BYTES + len(aad) > _HSM_INPUT_BYTES:
        # Refused here, for software keys too: the same key may get HSM versions later.
        raise InvalidInputError(
            f"context too large for Cloud KMS: {len(aad)} bytes of additional "
            f"authenticated data with the data key exceed the {_HSM_INPUT_BYTES} bytes "
            "of plaintext and AAD that HSM keys accept; shorten the context"
        )


def _check_request_verified(response: kms_v1.EncryptResponse) -> None:
    if not (
        response.verified_plaintext_crc32c
        and response.verified_additional_authenticated_data_crc32c
    ):
        raise KMSError("GCP KMS encrypt: the KMS did not confirm the request's CRC32C checksums")


def _kms_aad(context: KeyContext) -> bytes:
    # Canonical (sorted, compact) and labelled with its purpose, so these bytes can never be
    # mistaken for the value's own AAD or for another application's.
    document = {"ctx": dict(context), "purpose": _AAD_PURPOSE}
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def _created(moment: datetime | None) -> datetime | None:
    # proto-plus gives an aware UTC datetime subclass, or the epoch when the field is unset.
    if moment is None or moment.timestamp() == 0:
        return None
    return datetime.fromtimestamp(moment.timestamp(), UTC)
