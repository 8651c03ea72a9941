"""``AzureKeyVaultProvider``: Azure Key Vault and Managed HSM keys through azure-keyvault-keys.

``HMD_KMS_KEY_ID`` is the key's URL without a version, ``https://VAULT/keys/NAME``. Key Vault
versions are opaque ids, so a version's *number* here is its ordinal by creation time (1 for
the oldest); versions are never deleted by this tool, so the numbers are stable. The wrapped
DEK names the exact Azure version, ``azure:v{n}:{version-id}:{alg}:{base64url}``, and is always
unwrapped by that version, server-side: the private key never leaves Key Vault.

RSA keys wrap with RSA-OAEP-256 *in this process*, with the public key read from Key Vault
(the SDK's local provider, as the Key Vault SDKs do themselves); AES keys of a Managed HSM
(``oct-HSM``) wrap with A256KW in the HSM. Symmetric keys are never handed to the SDK's
``CryptographyClient``: for a key whose material it cannot see, it makes up a random local key
and "wraps" with that, which would lose every DEK. Key Vault has no batch call and no
associated data on wrap: calls run on a bounded thread pool, results in input order, and the
field/record context is bound in the value's AES-GCM AAD only. There is no server-side rewrap
either: a rewrap unwraps at the old version and wraps at the latest, in this process, and wipes
the DEK afterwards (best effort, see ``primitives.wipe``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, Protocol, Self, TypeVar

import requests
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.identity import DefaultAzureCredential
from azure.keyvault.keys import KeyClient, KeyProperties, KeyVaultKey
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm
from requests.adapters import HTTPAdapter

from heimdall_kms import primitives
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    PermissionDeniedError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.overlap import fan_out
from heimdall_kms.providers.azure.errors import attempt
from heimdall_kms.providers.azure.keys import (
    A256KW,
    RSA_OAEP_256,
    check_usable,
    parse_key_url,
    wrap_algorithm,
)
from heimdall_kms.providers.base import (
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    round_trip,
)
from heimdall_kms.providers.deadline import deadline, watch
from heimdall_kms.wrapped_key import WrappedCodec

if TYPE_CHECKING:
    from heimdall_kms.config import Settings
    from heimdall_kms.providers.azure.settings import AzureSettings

__all__ = ["AzureKeyVaultProvider", "build_key_client"]

_T = TypeVar("_T")
_R = TypeVar("_R")
# ``azure:v<n>:`` (heimdall_kms.wrapped_key) and a body of version id, algorithm, base64url.
_WRAPPED = WrappedCodec(
    "azure", re.compile(r"[0-9A-Za-z]{1,64}:(?:RSA-OAEP-256|A256KW):[A-Za-z0-9_-]{16,2048}")
)
_RSA, _AES = RSA_OAEP_256, A256KW
# Ordinals follow creation seconds; a new version is never made within a second of the last.
_TIE_GAP = timedelta(seconds=1.1)
# Per-item outcomes of unwrap/rewrap; any other error fails the whole call.
_PER_ITEM = (IntegrityError, KeyVersionRetiredError, KeyNotFoundError)


class _Closeable(Protocol):
    def close(self) -> None: ...


def build_key_client(key_url: str, azure: AzureSettings) -> tuple[KeyClient, _Closeable]:
    """A ``KeyClient`` for the key's vault on ``DefaultAzureCredential``, and that credential
    (close both when done).

    Raises:
        ConfigurationError: ``key_url`` is not a key URL, or the credential refused its settings.
    """
    vault_url, _key_name = parse_key_url(key_url)
    try:
        if azure.disable_instance_discovery:
            credential = DefaultAzureCredential(disable_instance_discovery=True)
        else:
            credential = DefaultAzureCredential()
    except ValueError:
        # azure-identity checks its own variables when the chain is built.
        raise ConfigurationError(
            "AZURE_*: DefaultAzureCredential refused its settings (check AZURE_TENANT_ID, "
            "AZURE_AUTHORITY_HOST, AZURE_TOKEN_CREDENTIALS)"
        ) from None
    verify: bool | str = str(azure.ca_bundle) if azure.ca_bundle else True
    # One connection pool as large as the thread pool, so no connection is thrown away.
    session = requests.Session()
    session.mount("https://", HTTPAdapter(pool_maxsize=max(10, azure.max_concurrency)))
    watch(session)  # HMD_AZURE_TIMEOUT is also the total deadline of each call
    client = KeyClient(
        vault_url,
        credential,
        verify_challenge_resource=azure.verify_challenge_resource,
        transport=RequestsTransport(
            session=session,
            connection_verify=verify,
            connection_timeout=azure.timeout_seconds,
            read_timeout=azure.timeout_seconds,
        ),
    )
    return client, credential


@dataclass(frozen=True, slots=True)
class _Target:
    """The latest version, ready to wrap with."""

    version: str
    ordinal: int
    alg: str
    local: CryptographyClient | None  # RSA public key: wraps in this process


class AzureKeyVaultProvider:
    """One Key Vault key. Construct with a ready ``KeyClient``, or :meth:`from_settings`."""

    def __init__(
        self,
        key_client: KeyClient,
        key_name: str,
        *,
        max_concurrency: int = 8,
        timeout: float = 10.0,
        credential: _Closeable | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._keys = key_client
        self._name = key_name
        self._workers = max(1, max_concurrency)
        self._timeout = timeout
        self._credential = credential
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._ordinals: dict[str, int] = {}
        self._may_list = True  # False once Key Vault refused this identity a version listing
        self._wrappers: dict[str, CryptographyClient] = {}
        self._unwrappers: dict[str, CryptographyClient] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """A provider on ``DefaultAzureCredential`` (environment, workload identity, managed
        identity, Azure CLI, ...).

        Raises:
            ConfigurationError: ``HMD_KMS_KEY_ID`` is not a key URL.
        """
        azure = settings.azure
        if azure is None or settings.kms_key_id is None:
            raise ConfigurationError("HMD_KMS_KEY_ID: required for HMD_KMS_PROVIDER=azure")
        client, credential = build_key_client(settings.kms_key_id, azure)
        _vault_url, key_name = parse_key_url(settings.kms_key_id)
        return cls(
            client,
            key_name,
            max_concurrency=azure.max_concurrency,
            timeout=azure.timeout_seconds,
            credential=credential,
        )

    @property
    def name(self) -> ProviderName:
        return ProviderName.AZURE

    @property
    def key_identifier(self) -> str:
        return f"{self._keys.vault_url}/keys/{self._name}"

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        target = self._latest("wrap")
        results = self._map("wrap", list(deks), lambda dek: self._wrap(target, dek), ())
        # With no per-item outcomes, any error was raised: every result is a WrappedKey.
        return [r for r in results if isinstance(r, WrappedKey)]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        return self._map("unwrap", list(wrapped), self._unwrap, _PER_ITEM)

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        # Key Vault cannot re-wrap server-side: the DEK passes through this process.
        target = self._latest("rewrap")

        def rewrap(item: str) -> WrappedKey | HeimdallKMSError:
            dek = self._unwrap(item)
            if isinstance(dek, HeimdallKMSError):
                return dek
            try:
                return self._wrap(target, dek)
            finally:
                primitives.wipe(dek)

        return self._map("rewrap", list(wrapped), rewrap, _PER_ITEM)

    def rotate(self) -> KeyInfo:
        versions = self._snapshot("rotate")
        newest = versions[-1][1].created_on if versions else None
        if newest is not None:
            wait = (newest + _TIE_GAP - self._clock()).total_seconds()
            if 0 < wait <= _TIE_GAP.total_seconds():
                self._sleep(wait)
        self._call("rotate", lambda: self._keys.rotate_key(self._name))
        return self.describe()

    def retire(self, below_version: int) -> KeyInfo:
        versions = self._snapshot("retire")
        check_retire_bound(below_version, len(versions))
        for ordinal, props in versions:
            if ordinal < below_version and props.enabled:
                disable = functools.partial(
                    self._keys.update_key_properties, self._name, str(props.version), enabled=False
                )
                self._call("retire", disable)
        return self.describe()

    def describe(self) -> KeyInfo:
        versions = self._snapshot("describe")
        enabled = [(n, p) for n, p in versions if p.enabled]
        minimum = enabled[0][0] if enabled else len(versions) + 1
        return KeyInfo(
            provider=self.name,
            key_identifier=self.key_identifier,
            latest_version=len(versions),
            min_decryption_version=minimum,
            versions=tuple(KeyVersion(n, p.created_on) for n, p in enabled),
        )

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        self._keys.close()
        if self._credential is not None:
            self._credential.close()

    # -- internals --------------------------------------------------------------------------------

    def _snapshot(self, operation: str) -> list[tuple[int, KeyProperties]]:
        """Every version with its ordinal, oldest first; refreshes the ordinal cache."""
        listed = self._call(
            operation, lambda: list(self._keys.list_properties_of_key_versions(self._name))
        )
        if not listed:
            raise KeyNotFoundError(f"Azure Key Vault {operation}: the key has no versions")
        oldest = datetime.min.replace(tzinfo=UTC)
        listed.sort(key=lambda p: (p.created_on or oldest, str(p.version)))
        numbered = list(enumerate(listed, start=1))
        with self._lock:
            self._ordinals = {str(p.version): n for n, p in numbered}
        return numbered

    @property
    def pins_versions(self) -> bool:
        return True

    def wrap_at_version(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext], version: int
    ) -> list[WrappedKey]:
        """Wrap with the version of ordinal ``version`` instead of the latest: the canaries of
        a retirement (heimdall_kms.jobs.propagation).

        Raises:
            KeyNotFoundError: no such version. KeyVersionRetiredError: it is disabled.
        """
        if len(deks) != len(contexts):
            raise InvalidInputError("contexts must have one entry per data key")
        listed = dict(self._snapshot("wrap"))
        if version not in listed:
            raise KeyNotFoundError(f"Azure Key Vault wrap: the key has no version {version}")
        key_version = str(listed[version].version)
        key: KeyVaultKey = self._call(
            "wrap", lambda: self._keys.get_key(self._name, version=key_version)
        )
        target = self._target(key, "wrap")
        return [self._wrap(target, dek) for dek in deks]

    def _latest(self, operation: str) -> _Target:
        key: KeyVaultKey = self._call(operation, lambda: self._keys.get_key(self._name))
        return self._target(key, operation)

    def _target(self, key: KeyVaultKey, operation: str) -> _Target:
        version = str(key.properties.version)
        check_usable(key, self._clock(), operation)
        alg = wrap_algorithm(key)
        ordinal = self._listed_ordinal(version, operation)
        if ordinal is None:
            raise KMSError(f"Azure Key Vault {operation}: the latest version is not listed")
        local = self._local_wrapper(key, version) if alg == _RSA else None
        return _Target(version, ordinal, alg, local)

    def _local_wrapper(self, key: KeyVaultKey, version: str) -> CryptographyClient:
        # The RSA public key, read once per version: it wraps in this process.
        with self._lock:
            local = self._wrappers.get(version)
            if local is None:
                local = self._wrappers[version] = CryptographyClient.from_jwk(key.key)
            return local

    def _wrap(self, target: _Target, dek: bytearray) -> WrappedKey:
        if target.local is not None:
            wrapped = target.local.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, bytes(dek)).encrypted_key
        else:
            wrapped = self._hsm(target.version, "wrapkey", bytes(dek))
        blob = base64.urlsafe_b64encode(wrapped).rstrip(b"=").decode("ascii")
        text = _WRAPPED.write(target.ordinal, f"{target.version}:{target.alg}:{blob}")
        return WrappedKey(text, target.ordinal)

    def _unwrap(self, item: str) -> bytearray | HeimdallKMSError:
        parsed = _parse(item)
        if parsed is None:
            return IntegrityError("wrapped data key is not in the Azure provider's form")
        known = self._ordinal_of(parsed.version)
        if known is not None and known != parsed.ordinal:
            # The version id decides what unwraps; the ordinal in front is what envelopes,
            # the census and the retire guard read, so the two must agree (SPEC §4.2).
            return IntegrityError("wrapped data key's version number is not its Azure version's")
        return self._unwrap_blob(parsed)

    def _unwrap_blob(self, parsed: _Parsed) -> bytearray | IntegrityError:
        """The DEK in ``parsed``'s blob, unwrapped by its version (in the vault or HSM)."""
        try:
            wrapped = _b64decode(parsed.blob)
        except (binascii.Error, ValueError):
            return IntegrityError("wrapped data key is not valid base64url")
        if parsed.alg == _AES:
            plain = self._hsm(parsed.version, "unwrapkey", wrapped)
        else:
            client = self._unwrapper(parsed.version)
            plain = client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped).key
        if len(plain) != primitives.DEK_BYTES:
            return IntegrityError("unwrapped data key has the wrong length")
        return bytearray(plain)

    def _ordinal_of(self, version: str) -> int | None:
        """The ordinal Key Vault's own listing gives a version id (listed again once if new).

        None when this identity may not list versions (an unwrap-only worker role): the
        ordinal is then not checked here (docs/envelope-format.md says so).
        """
        if not self._may_list:
            return self._cached_ordinal(version)
        try:
            return self._listed_ordinal(version, "unwrap")
        except PermissionDeniedError:
            self._may_list = False
            return self._cached_ordinal(version)

    def _listed_ordinal(self, version: str, operation: str) -> int | None:
        """The ordinal of ``version``, the versions listed again once if it is new."""
        ordinal = self._cached_ordinal(version)
        if ordinal is None:
            self._snapshot(operation)
            ordinal = self._cached_ordinal(version)
        return ordinal

    def _cached_ordinal(self, version: str) -> int | None:
        with self._lock:
            return self._ordinals.get(version)

    def _unwrapper(self, version: str) -> CryptographyClient:
        # Shares the KeyClient's pipeline; it holds the public key only, so it unwraps remotely.
        with self._lock:
            client = self._unwrappers.get(version)
            if client is None:
                client = self._keys.get_cryptography_client(self._name, key_version=version)
                self._unwrappers[version] = client
            return client

    def _hsm(self, version: str, operation: str, value: bytes) -> bytes:
        """A256KW wrap/unwrap by the Managed HSM itself, through the KeyClient's pipeline."""
        payload = {"alg": _AES, "value": base64.urlsafe_b64encode(value).rstrip(b"=").decode()}
        request = HttpRequest("POST", f"/keys/{self._name}/{version}/{operation}", json=payload)
        response = self._keys.send_request(request)
        response.raise_for_status()
        answer = response.json()
        value_text = answer.get("value") if isinstance(answer, dict) else None
        if not isinstance(value_text, str):
            raise KMSError(f"Azure Key Vault {operation}: answer without a value")
        return _b64decode(value_text)

    def _attempt(self, operation: str, call: Callable[[], _T]) -> _T | HeimdallKMSError:
        """``call`` under the total deadline (``timeout``); an SDK error comes back translated.

        Raises:
            KMSUnavailableError: the deadline passed (azure-core's retries included).
        """
        with deadline(self._timeout, f"Azure Key Vault {operation}") as exchange:
            result = attempt(operation, call)
            if exchange.expired and isinstance(result, HeimdallKMSError):
                raise result  # the cut exchange's error: the deadline reports it as such
            return result

    def _call(self, operation: str, call: Callable[[], _T]) -> _T:
        result = self._attempt(operation, call)
        if isinstance(result, HeimdallKMSError):
            raise result
        return result

    def _map(
        self,
        operation: str,
        items: list[_T],
        call: Callable[[_T], _R | HeimdallKMSError],
        per_item: tuple[type[HeimdallKMSError], ...],
    ) -> list[_R | HeimdallKMSError]:
        """``call`` on every item, at most ``max_concurrency`` at once, results in input order.

        An error that is not a per-item outcome stops the remaining items and is raised; DEKs
        already unwrapped by then are wiped (the one fan-out, ``overlap.fan_out``).
        """

        def task(item: _T) -> _R | HeimdallKMSError:
            result = self._attempt(operation, lambda: call(item))
            if isinstance(result, HeimdallKMSError) and not isinstance(result, per_item):
                raise result
            return result

        return fan_out(
            task,
            items,
            self._workers,
            discard=primitives.wipe_if_dek,
            thread_name_prefix="heimdall-azure",
        )


class _Parsed(NamedTuple):
    """A wrapped DEK of this provider, split (nothing checked against Key Vault yet)."""

    ordinal: int
    version: str
    alg: str
    blob: str  # base64url, unpadded


def _parse(item: str) -> _Parsed | None:
    """``azure:v{n}:{version-id}:{alg}:{base64url}`` split; None for any other text."""
    form = _WRAPPED.read(item)
    if form is None:
        return None
    # The shape holds exactly two colons, between its three parts.
    version, alg, blob = form.body.split(":")
    return _Parsed(form.version, version, alg, blob)


def _b64decode(text: str) -> bytes:
    # Key Vault's base64url comes without padding.
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
