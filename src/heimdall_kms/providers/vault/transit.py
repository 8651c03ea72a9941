"""``VaultTransitProvider``: HashiCorp Vault (or OpenBao) Transit through hvac.

DEKs are wrapped with Transit ``encrypt`` in ``batch_input`` calls, so N values cost
ceil(N / batch_size) HTTP requests, never N. DEKs are wrapped *without* Transit
``associated_data``: Vault's ``rewrap`` refuses such values (hashicorp/vault#29532), and the
field/record context is already bound where it matters, in the AES-GCM AAD of the value.

Raw hvac responses are unpacked here and never leave this module; errors are rebuilt from safe
parts in :mod:`.errors` (hvac's own messages can quote a body that holds plaintext DEKs).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self, TypeVar

import hvac
import hvac.exceptions

from heimdall_kms import primitives
from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KMSError,
    PermissionDeniedError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.overlap import fan_out
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
from heimdall_kms.providers.deadline import watch
from heimdall_kms.providers.vault.auth import Login, TokenKeeper, login_function, new_client
from heimdall_kms.providers.vault.errors import TooComplexError, Translated, item_error
from heimdall_kms.providers.vault.http import on_vault_adapter, post_body, post_json
from heimdall_kms.wrapped_key import wrapped_by

if TYPE_CHECKING:
    from heimdall_kms.config import Settings
    from heimdall_kms.providers.vault.settings import VaultSettings

__all__ = [
    "VaultTransitProvider",
    "build_client",
    "create_throwaway_key",
    "delete_throwaway_key",
]

# What Transit answers: ``vault:v<n>:`` (heimdall_kms.wrapped_key) and base64.
_CIPHERTEXT = wrapped_by("vault", r"[A-Za-z0-9+/=]+")
_T = TypeVar("_T")
_b64, _unb64 = binascii.b2a_base64, binascii.a2b_base64
_CONCURRENT_BATCHES = 4


def build_client(vault: VaultSettings) -> hvac.Client:
    """An authenticated hvac client for the settings (token or token file, AppRole,
    Kubernetes, JWT or certificate login).

    Raises:
        ConfigurationError: the Kubernetes service-account token file cannot be read.
        KMSError: the login was refused or Vault is unreachable.
    """
    client = new_client(vault)
    login = login_function(vault)
    with Translated("login", login=True, address=vault.addr):
        if login is not None:
            login(client)
        elif vault.token is not None:
            client.token = vault.token.reveal()
    return client


def create_throwaway_key(client: hvac.Client, name: str, *, mount: str = "transit") -> None:
    """A Transit key that may later be deleted (drills); never use it for real data.

    Raises:
        KMSError: Vault refused (the token needs create on transit/keys/NAME).
    """
    with Translated("create key", address=client.url, key=name, mount=mount):
        client.secrets.transit.create_key(name, key_type="aes256-gcm96", mount_point=mount)
        client.secrets.transit.update_key_configuration(
            name, deletion_allowed=True, mount_point=mount
        )


def delete_throwaway_key(client: hvac.Client, name: str, *, mount: str = "transit") -> None:
    """Delete a key made by :func:`create_throwaway_key`.

    Raises:
        KMSError: Vault refused.
    """
    with Translated("delete key", address=client.url, key=name, mount=mount):
        client.secrets.transit.delete_key(name, mount_point=mount)


class VaultTransitProvider:
    """One Transit key. Construct with a ready hvac client, or :meth:`from_settings`."""

    def __init__(
        self,
        client: hvac.Client,
        key_name: str,
        *,
        mount: str = "transit",
        batch_size: int = 250,
        login: Login | None = None,
    ) -> None:
        # Every call, hvac's and the batches, on the one HTTP path (http.VaultAdapter).
        self._client = client = on_vault_adapter(client)
        # HMD_VAULT_TIMEOUT bounds each request in total, not only each read (deadline.py).
        watch(client.adapter.session)
        self._token = TokenKeeper(client, login)
        self._key = key_name
        self._mount = mount
        self._batch_size = batch_size
        self._key_checked = False

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.vault is None or settings.kms_key_id is None:
            raise ConfigurationError("HMD_VAULT_ADDR: required for HMD_KMS_PROVIDER=vault")
        return cls(
            build_client(settings.vault),
            settings.kms_key_id,
            mount=settings.vault.transit_mount,
            batch_size=settings.vault.batch_size,
            login=login_function(settings.vault),
        )

    @property
    def name(self) -> ProviderName:
        return ProviderName.VAULT

    @property
    def key_identifier(self) -> str:
        return self._key

    @property
    def batching(self) -> Batching:
        # One batch_input request per call, several in flight: Vault works on one batch while
        # the caller seals or opens the one before. The size shrinks if Vault refuses a body.
        return Batching(self._batch_size, _CONCURRENT_BATCHES)

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        self._check_key_exists()
        results = self._batched(
            "encrypt", "plaintext", [_b64(dek, newline=False).decode("ascii") for dek in deks]
        )
        wrapped: list[WrappedKey] = []
        made = WrappedKey.made  # one per value
        for result in results:
            if isinstance(result, HeimdallKMSError):
                raise result
            wrapped.append(made(result["ciphertext"], int(result["key_version"])))
        return wrapped

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        def decode(result: dict[str, Any]) -> bytearray | HeimdallKMSError:
            try:
                # Strict: only the base64 alphabet, padding only at the end (validate=True's rule,
                # checked in C rather than by a regular expression per key).
                dek = bytearray(_unb64(result["plaintext"], strict_mode=True))
            except (KeyError, binascii.Error):
                return IntegrityError("Vault returned a data key that is not base64")
            if len(dek) != primitives.DEK_BYTES:
                primitives.wipe(dek)
                return IntegrityError("unwrapped data key has the wrong length")
            return dek

        return self._per_item("decrypt", wrapped, decode)

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        # Transit rewrap decrypts and re-encrypts the DEK inside Vault: no plaintext here.
        made = WrappedKey.made  # one per value

        def decode(result: dict[str, Any]) -> WrappedKey | HeimdallKMSError:
            return made(result["ciphertext"], int(result["key_version"]))

        return self._per_item("rewrap", wrapped, decode)

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        """Transit HMAC (SHA-256) in batches under the pinned version of the hashing key; the
        HMAC key never leaves Vault."""
        results: list[str] = []
        for start in range(0, len(values), self._batch_size):
            chunk = values[start : start + self._batch_size]
            body: dict[str, Any] = {
                "batch_input": [{"input": base64.b64encode(v).decode()} for v in chunk],
                "key_version": key.version,
            }
            answer = self._vault("hmac", functools.partial(self._hmac_call, key.name, body))
            items = _batch_results(answer)
            if items is None or len(items) != len(chunk) or any(i.get("error") for i in items):
                raise KMSError("Vault answered hmac without one result per item")
            results.extend(str(item["hmac"]) for item in items)
        return results

    def _hmac_call(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return post_json(self._client, self._mount, "hmac", name, "sha2-256", body=body)

    def rotate(self) -> KeyInfo:
        transit = self._client.secrets.transit
        self._vault("rotate", lambda: transit.rotate_key(self._key, mount_point=self._mount))
        return self.describe()

    def retire(self, below_version: int) -> KeyInfo:
        check_retire_bound(below_version, self.describe().latest_version)
        transit = self._client.secrets.transit
        self._vault(
            "retire",
            lambda: transit.update_key_configuration(
                self._key, min_decryption_version=below_version, mount_point=self._mount
            ),
        )
        return self.describe()

    def describe(self) -> KeyInfo:
        transit = self._client.secrets.transit
        data = self._vault(
            "describe", lambda: transit.read_key(self._key, mount_point=self._mount)["data"]
        )
        versions = tuple(
            KeyVersion(int(number), _creation_time(created))
            for number, created in sorted(data["keys"].items(), key=lambda kv: int(kv[0]))
        )
        return KeyInfo(
            provider=self.name,
            key_identifier=self._key,
            latest_version=int(data["latest_version"]),
            min_decryption_version=int(data["min_decryption_version"]),
            versions=versions,
            # Vault's clock, from the same answer: due-ness never depends on the client's.
            server_time=self._client.adapter.server_time(),
            key_type=str(data["type"]) if "type" in data else None,
        )

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        self._client.adapter.close()

    def _check_key_exists(self) -> None:
        # Transit's encrypt endpoint silently creates a missing key when the token may, so a
        # typo in HMD_KMS_KEY_ID would start a second, unmanaged master key. Check once. A
        # token that may not read key metadata (HTTP 403) cannot create keys either.
        if self._key_checked:
            return
        with contextlib.suppress(PermissionDeniedError):
            self.describe()
        self._key_checked = True

    def _per_item(
        self,
        operation: str,
        wrapped: Sequence[str],
        decode: Callable[[dict[str, Any]], _T | HeimdallKMSError],
    ) -> list[_T | HeimdallKMSError]:
        # Items that are not Vault ciphertext at all are answered here and never sent.
        results: list[_T | HeimdallKMSError] = [
            IntegrityError("wrapped data key is not a Vault ciphertext")
        ] * len(wrapped)
        # Transit reads the version from the prefix and decrypts with that version's key, so a
        # prefix naming another version fails authentication in Vault: verified on unwrap.
        transit_ciphertext = _CIPHERTEXT.fullmatch
        positions = [i for i, item in enumerate(wrapped) if transit_ciphertext(item)]
        items = [wrapped[i] for i in positions]
        answers = self._batched(operation, "ciphertext", items)
        for position, result in zip(positions, answers, strict=True):
            results[position] = result if isinstance(result, HeimdallKMSError) else decode(result)
        return results

    def _batched(
        self, operation: str, member: str, items: list[str]
    ) -> list[dict[str, Any] | HeimdallKMSError]:
        """One ``batch_input`` request per batch of ``items``, each item ``{member: item}``."""
        chunks = list(_chunks(items, self._batch_size))

        def one(chunk: list[str]) -> list[dict[str, Any] | HeimdallKMSError]:
            return self._authorized(lambda: self._call_batch(operation, member, chunk))

        # Several batch requests in flight overlap Vault's work with the network and with each
        # other; results come back in input order. A whole-call error is raised as before.
        parts = fan_out(one, chunks, _CONCURRENT_BATCHES, thread_name_prefix="heimdall-vault")
        return [result for part in parts for result in part]

    def _vault(self, operation: str, fn: Callable[[], _T]) -> _T:
        """One Vault call: errors translated, the token kept fresh, one re-login if refused."""

        def attempt() -> _T:
            with self._translated(operation):
                return fn()

        return self._authorized(attempt)

    def _translated(self, operation: str) -> Translated:
        return Translated(operation, address=self._client.url, key=self._key, mount=self._mount)

    def _authorized(self, fn: Callable[[], _T]) -> _T:
        # A renewal that fails is left to the call that follows; one that hangs past the
        # deadline fails this call as unavailable (http.VaultAdapter._send).
        self._token.keep_fresh()
        try:
            return fn()
        except AuthenticationError:
            # An expired or revoked token: log in again once (AppRole, Kubernetes, JWT, cert;
            # a token file is read again) and repeat the same call, so the batch is not lost.
            # A static token's refusal is final.
            if self._token.login is None:
                raise
            with Translated("login", login=True, address=self._client.url):
                self._token.login(self._client)
            return fn()

    def _call_batch(
        self, operation: str, member: str, chunk: list[str]
    ) -> list[dict[str, Any] | HeimdallKMSError]:
        try:
            with self._translated(operation):
                try:
                    response = post_body(
                        self._client,
                        self._mount,
                        operation,
                        self._key,
                        body=_batch_json(member, chunk),
                    )
                except hvac.exceptions.InvalidRequest as exc:
                    body = _batch_results(exc.json)
                    if body is not None:
                        # One bad item fails the whole batch with HTTP 400; the per-item
                        # results are still in the body.
                        return [_item_result(operation, item) for item in body]
                    raise
        except TooComplexError:
            if len(chunk) == 1:
                raise KMSError(f"Vault refused a single-item {operation} batch") from None
            half = len(chunk) // 2
            self._batch_size = max(1, min(self._batch_size, half))
            return [
                *self._call_batch(operation, member, chunk[:half]),
                *self._call_batch(operation, member, chunk[half:]),
            ]
        body = _batch_results(response)
        if body is None or len(body) != len(chunk):
            raise KMSError(f"Vault answered {operation} without one result per item")
        # _item_result's rule, written out: this runs once per value.
        return [
            item if not item.get("error") else item_error(operation, str(item["error"]))
            for item in body
        ]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# Base64 and Transit ciphertexts (vault:v<n>:base64): text JSON writes as it is, unescaped.
_JSON_AS_IS = re.compile(r"[A-Za-z0-9+/=:]*")


def _batch_json(member: str, items: list[str]) -> bytes:
    """``{"batch_input": [{member: item}, ...]}`` as JSON.

    The items are base64 (fresh DEKs) or Transit ciphertexts checked before they are sent,
    which JSON writes as they are: the text is put together directly (about 4 µs for 250
    items, where the general encoder took about 300 µs here). Anything else goes through it.
    """
    if not items or not _JSON_AS_IS.fullmatch(member + "".join(items)):
        return json.dumps({"batch_input": [{member: item} for item in items]}).encode()
    joined = f'"}},{{"{member}":"'.join(items)
    return f'{{"batch_input":[{{"{member}":"{joined}"}}]}}'.encode("ascii")


def _batch_results(document: object) -> list[dict[str, Any]] | None:
    if not isinstance(document, dict):
        return None
    data = document.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("batch_results"), list):
        return None
    results: list[dict[str, Any]] = data["batch_results"]
    return results


def _item_result(operation: str, item: dict[str, Any]) -> dict[str, Any] | HeimdallKMSError:
    error = item.get("error")
    if not error:
        return item
    return item_error(operation, str(error))


def _creation_time(value: object) -> datetime | None:
    # Symmetric keys report a Unix time; asymmetric ones a mapping with an RFC 3339 time.
    if isinstance(value, int):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, dict):
        value = value.get("creation_time")
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None
