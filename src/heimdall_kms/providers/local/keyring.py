"""``LocalKeyring``: the local provider's key file. NOT FOR PRODUCTION.

Its master keys sit in a JSON file on disk, in the clear, which is exactly what a KMS is there
to avoid. The file is created only on purpose (:meth:`LocalKeyring.ensure_key`, ``heimdall-kms
local init``) with mode 0600; a file that group or others can read is refused. Every operation
re-reads it under an ``flock``, so processes share it; writes replace it atomically. A key's
versions are numbered 1, 2, ... in the file, with a minimum decryption version.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heimdall_kms import primitives
from heimdall_kms.errors import ConfigurationError, KeyNotFoundError

__all__ = ["Clock", "LocalKeyring"]

_FORMAT = "heimdall-local-keyring/1"
_WARNING = "NOT FOR PRODUCTION: master keys in this file are stored in the clear."

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
            self.add_version(keys[name])
            self._write(document)
            return True

    def read_key(self, name: str) -> dict[str, Any]:
        with self._locked() as document:
            return dict(self._key(document, name))

    def update_key(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked() as document:
            change(self._key(document, name))
            self._write(document)

    def add_version(self, key: dict[str, Any]) -> None:
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

    def _key(self, document: dict[str, Any], name: str) -> dict[str, Any]:
        key: dict[str, Any] | None = document["keys"].get(name)
        if key is None:
            raise KeyNotFoundError(f"local keyring {self.path} has no key named {name!r}")
        return key

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
        info = self._stat()
        if info is None:
            return {"format": _FORMAT, "warning": _WARNING, "keys": {}}
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigurationError(
                f"HMD_LOCAL_KEYRING: {self.path} is readable by group or others; run chmod 600 "
                "on it"
            )
        return self._document()

    def _stat(self) -> os.stat_result | None:
        """The keyring file's status; None while there is no file yet."""
        try:
            return self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigurationError(
                f"HMD_LOCAL_KEYRING: cannot read {self.path}: {exc.strerror}"
            ) from None

    def _document(self) -> dict[str, Any]:
        """The keyring file's JSON document.

        Raises:
            ConfigurationError: it cannot be read, or is not a keyring.
        """
        not_keyring = f"HMD_LOCAL_KEYRING: {self.path} is not a heimdall keyring"
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise ConfigurationError(not_keyring) from None
        if not isinstance(document, dict) or document.get("format") != _FORMAT:
            raise ConfigurationError(not_keyring)
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
