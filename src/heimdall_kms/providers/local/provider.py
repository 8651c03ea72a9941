"""``LocalDevProvider``: a software keyring file. NOT FOR PRODUCTION.

It exists so that the embedded default (``heimdall-kms demo``) and the tests run without a
KMS. Its master keys sit in a JSON file on disk (:mod:`.keyring`), in the clear, which is
exactly what a KMS is there to avoid. It behaves like a KMS otherwise: key versions, rotation,
a minimum decryption version, per-item batch results. It refuses to start unless its file is
named on purpose (``HMD_LOCAL_KEYRING``), and says NOT FOR PRODUCTION on every start.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

from heimdall_kms import primitives
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.base import (
    HashKey,
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    round_trip,
)
from heimdall_kms.providers.local import software_wrap
from heimdall_kms.providers.local.keyring import LocalKeyring
from heimdall_kms.wrapped_key import WrappedCodec

if TYPE_CHECKING:
    from heimdall_kms.config import Settings

__all__ = ["LocalDevProvider"]

_LOG = logging.getLogger(__name__)
_WRAPPED = WrappedCodec(ProviderName.LOCAL, software_wrap.BODY)


class LocalDevProvider:
    """A KMS stand-in backed by :class:`LocalKeyring`. NOT FOR PRODUCTION."""

    def __init__(self, keyring: LocalKeyring, key_name: str) -> None:
        self._keyring = keyring
        self._key_name = key_name

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.local_keyring is None or settings.kms_key_id is None:
            raise ConfigurationError("HMD_LOCAL_KEYRING: required for HMD_KMS_PROVIDER=local")
        _LOG.warning(
            "local KMS provider in use, keyring %s: NOT FOR PRODUCTION", settings.local_keyring
        )
        keyring = LocalKeyring(settings.local_keyring)
        keyring.require()
        return cls(keyring, settings.kms_key_id)

    @property
    def name(self) -> ProviderName:
        return ProviderName.LOCAL

    @property
    def key_identifier(self) -> str:
        return self._key_name

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        version, master = _latest(self._keyring.read_key(self._key_name))
        return [self._wrap(master, version, dek) for dek in deks]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        key = self._keyring.read_key(self._key_name)
        return [self._unwrap(key, item) for item in wrapped]

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        key = self._keyring.read_key(self._key_name)
        version, master = _latest(key)
        return software_wrap.rewrap_each(
            wrapped,
            lambda item: self._unwrap(key, item),
            lambda dek: self._wrap(master, version, dek),
        )

    def hmac_many(self, values: Sequence[bytes], key: HashKey) -> list[str]:
        """HMAC-SHA256 under a subkey derived from the pinned version of the hashing key
        (its own key in the keyring, created on first use; never the wrap key)."""
        self._keyring.ensure_key(key.name)
        versions = self._keyring.read_key(key.name)["versions"]
        version = key.version
        if str(version) not in versions:
            raise KeyNotFoundError(f"local key {key.name!r} has no version {version}")
        master = bytes.fromhex(versions[str(version)]["key"])
        subkey = primitives.derive_key(master, b"heimdall-local-hmac|" + key.name.encode())
        return [
            _WRAPPED.write(version, base64.b64encode(primitives.mac(subkey, value)).decode())
            for value in values
        ]

    def rotate(self) -> KeyInfo:
        self._keyring.update_key(self._key_name, self._keyring.add_version)
        return self.describe()

    def retire(self, below_version: int) -> KeyInfo:
        def change(key: dict[str, Any]) -> None:
            check_retire_bound(below_version, max(int(v) for v in key["versions"]))
            key["min_decryption_version"] = max(below_version, key["min_decryption_version"])

        self._keyring.update_key(self._key_name, change)
        return self.describe()

    def describe(self) -> KeyInfo:
        key = self._keyring.read_key(self._key_name)
        minimum = int(key["min_decryption_version"])
        versions = tuple(
            KeyVersion(int(number), datetime.fromisoformat(entry["created_at"]))
            for number, entry in sorted(key["versions"].items(), key=lambda kv: int(kv[0]))
            if int(number) >= minimum
        )
        return KeyInfo(
            provider=self.name,
            key_identifier=self._key_name,
            latest_version=max(int(v) for v in key["versions"]),
            min_decryption_version=minimum,
            versions=versions,
        )

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        return None

    def _aad(self, version: int) -> bytes:
        return f"heimdall-local-dek|{self._key_name}|v{version}".encode()

    def _wrap(self, master: bytes, version: int, dek: bytearray) -> WrappedKey:
        return software_wrap.wrap(master, _WRAPPED, version, dek, self._aad(version))

    def _unwrap(self, key: dict[str, Any], item: str) -> bytearray | HeimdallKMSError:
        form = _WRAPPED.read(item)
        if form is None:
            return IntegrityError("wrapped data key is not in the local provider's form")
        # The version picks the key and is in the wrap's AAD: another version's DEK fails.
        master = _master(key, form.version)
        if isinstance(master, HeimdallKMSError):
            return master
        return software_wrap.unwrap(master, form.body, self._aad(form.version))


def _latest(key: dict[str, Any]) -> tuple[int, bytes]:
    """The newest version of ``key``, and its master key."""
    version = max(int(v) for v in key["versions"])
    return version, bytes.fromhex(key["versions"][str(version)]["key"])


def _master(key: dict[str, Any], version: int) -> bytes | HeimdallKMSError:
    """The master key of ``version``, or why that version cannot unwrap."""
    if version < int(key["min_decryption_version"]):
        return KeyVersionRetiredError(f"key version {version} is retired (below the minimum)")
    entry = key["versions"].get(str(version))
    if entry is None:
        return KeyNotFoundError(f"key version {version} does not exist")
    return bytes.fromhex(entry["key"])
