"""``LocalDevProvider``: a software keyring file. NOT FOR PRODUCTION.

It exists so that the embedded default (``heimdall-kms demo``) and the tests run without a
KMS. Its master keys sit in a JSON file on disk, in the clear, which is exactly what a KMS is
there to avoid. It behaves like a KMS otherwise: key versions, rotation, a minimum decryption
version, per-item batch results. It refuses to start unless its file is named on purpose
(``HMD_LOCAL_KEYRING``), creates it with mode 0600, refuses a file that group or others can
read, and says NOT FOR PRODUCTION on every start.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from heimdall_kms import primitives
from heimdall_kms.config import ProviderName, Settings
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
)
from heimdall_kms.providers.base import (
    HashKey,
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    round_trip,
)
from heimdall_kms.wrapped_key import format_wrapped, parse_wrapped

__all__ = ["LocalDevProvider", "LocalKeyring"]

_LOG = logging.getLogger(__name__)
_FORMAT = "heimdall-local-keyring/1"
_WARNING = "NOT FOR PRODUCTION: master keys in this file are stored in the clear."
_BODY = re.compile(r"[A-Za-z0-9+/=]+")  # after ``local:v<n>:`` (heimdall_kms.wrapped_key)

Clock = Callable[[], datetime]


class LocalKeyring:
    """The keyring file. Every operation re-reads it under a lock, so processes share it."""

    def __init__(self, path: Path, *, clock: Clock = lambda: datetime.now(UTC)) -> None:
        self.path = path
        self._clock = clock

    def ensure_key(self, name: str) -> bool:
        """Create the file and the key's version 1 if absent; True when something was created.

        The one way a keyring comes into being: every other operation needs the file to exist.
        """
        with self._locked(create=True) as document:
            keys = document["keys"]
            if name in keys:
                return False
            keys[name] = {"min_decryption_version": 1, "versions": {}}
            self._add_version(keys[name])
            self._write(document)
            return True

    def read_key(self, name: str) -> dict[str, Any]:
        with self._locked() as document:
            key = document["keys"].get(name)
        if key is None:
            raise KeyNotFoundError(f"local keyring {self.path} has no key named {name!r}")
        return dict(key)

    def update_key(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked() as document:
            key = document["keys"].get(name)
            if key is None:
                raise KeyNotFoundError(f"local keyring {self.path} has no key named {name!r}")
            change(key)
            self._write(document)

    def add_version(self, key: dict[str, Any]) -> None:
        self._add_version(key)

    def _add_version(self, key: dict[str, Any]) -> None:
        number = max((int(v) for v in key["versions"]), default=0) + 1
        key["versions"][str(number)] = {
            "key": os.urandom(primitives.DEK_BYTES).hex(),
            "created_at": self._clock().astimezone(UTC).isoformat(),
        }

    def require(self) -> None:
        """Check that the file exists and is a keyring only its owner can read.

        Raises:
            ConfigurationError: it does not exist (it is never created implicitly), or is
                not a keyring, or group or others can read it.
        """
        with self._locked():
            pass

    def _exists(self) -> None:
        if not self.path.exists():
            raise ConfigurationError(
                f"HMD_LOCAL_KEYRING: {self.path} does not exist; a keyring is only created on "
                "purpose (heimdall-kms local init). NOT FOR PRODUCTION."
            )

    @contextmanager
    def _locked(self, *, create: bool = False) -> Iterator[dict[str, Any]]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._exists()
        try:
            # O_NOFOLLOW: a symlink planted at the lock's name must not make us create or
            # open (and lock) a file elsewhere.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise ConfigurationError(
                f"HMD_LOCAL_KEYRING: cannot open the lock file {lock_path}: {reason}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self._read()
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        name = "HMD_LOCAL_KEYRING"
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {"format": _FORMAT, "warning": _WARNING, "keys": {}}
        except OSError as exc:
            raise ConfigurationError(f"{name}: cannot read {self.path}: {exc.strerror}") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(
                f"{name}: {self.path} is readable by group or others; run chmod 600 on it"
            )
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigurationError(f"{name}: {self.path} is not a heimdall keyring") from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ConfigurationError(f"{name}: {self.path} is not a heimdall keyring")
        return document

    def _write(self, document: dict[str, Any]) -> None:
        # Write a sibling temp file (created 0600 by mkstemp) and rename it over the old one,
        # so a crash never leaves a half-written keyring.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(document, handle, indent=2)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise


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
        key = self._keyring.read_key(self._key_name)
        version = max(int(v) for v in key["versions"])
        master = bytes.fromhex(key["versions"][str(version)]["key"])
        return [self._wrap(master, version, dek) for dek in deks]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        key = self._keyring.read_key(self._key_name)
        return [self._unwrap(key, item) for item in wrapped]

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        # A real KMS re-wraps server-side; this in-process stand-in has to see the DEK.
        key = self._keyring.read_key(self._key_name)
        version = max(int(v) for v in key["versions"])
        master = bytes.fromhex(key["versions"][str(version)]["key"])
        results: list[WrappedKey | HeimdallKMSError] = []
        for item in wrapped:
            dek = self._unwrap(key, item)
            if isinstance(dek, HeimdallKMSError):
                results.append(dek)
                continue
            try:
                results.append(self._wrap(master, version, dek))
            finally:
                primitives.wipe(dek)
        return results

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
            format_wrapped(
                "local", version, base64.b64encode(primitives.mac(subkey, value)).decode()
            )
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
        ciphertext, nonce = primitives.seal(master, bytes(dek), self._aad(version))
        blob = base64.b64encode(nonce + ciphertext).decode("ascii")
        return WrappedKey(format_wrapped("local", version, blob), version)

    def _unwrap(self, key: dict[str, Any], item: str) -> bytearray | HeimdallKMSError:
        form = parse_wrapped(item)
        if form is None or form.provider != "local" or not _BODY.fullmatch(form.body):
            return IntegrityError("wrapped data key is not in the local provider's form")
        # The version picks the key and is in the wrap's AAD: another version's DEK fails.
        version = form.version
        if version < int(key["min_decryption_version"]):
            return KeyVersionRetiredError(f"key version {version} is retired (below the minimum)")
        entry = key["versions"].get(str(version))
        if entry is None:
            return KeyNotFoundError(f"key version {version} does not exist")
        try:
            blob = base64.b64decode(form.body, validate=True)
        except binascii.Error:
            return IntegrityError("wrapped data key is not valid base64")
        nonce, ciphertext = blob[: primitives.NONCE_BYTES], blob[primitives.NONCE_BYTES :]
        try:
            plain = primitives.open_(
                bytes.fromhex(entry["key"]), nonce, ciphertext, self._aad(version)
            )
        except IntegrityError as exc:
            return exc
        if len(plain) != primitives.DEK_BYTES:
            return IntegrityError("unwrapped data key has the wrong length")
        return bytearray(plain)
