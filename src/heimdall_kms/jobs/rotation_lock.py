"""The lock that serialises rotation decisions, so N schedulers rotate at most once.

``rotate`` takes it once a key looks due, then reads the key again and decides again inside
it (docs/rotation.md). Which lock:

* ``HMD_DATABASE_URL`` is PostgreSQL: a session advisory lock,
  ``pg_advisory_lock(hashtext('heimdall-kms rotate ' || key))``, held for the decision and the
  rotation. Every host that uses that database is serialised.
* otherwise: an ``flock`` on ``HMD_ROTATION_LOCK_FILE``, by default
  ``heimdall-kms-rotate-<key>.lock`` next to the audit log file (the temporary directory
  (``/tmp``) when the audit log is not a file). This serialises the schedulers of one host only.
  The path is found when the lock is taken, not before: a run that finds nothing due needs no
  lock file, and a host without a usable temporary directory is a ``ConfigurationError``
  naming ``HMD_ROTATION_LOCK_FILE``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError, StoreError
from heimdall_kms.providers.base import KeyAdmin

__all__ = ["RotationLock", "lock_file_path", "rotation_lock"]

RotationLock = Callable[[], AbstractContextManager[None]]


def rotation_lock(settings: Settings, kms: KeyAdmin) -> RotationLock:
    """The lock for this provider's key, chosen from the settings (module docstring)."""
    key = f"{kms.name.value}:{kms.key_identifier}"
    url = settings.database_url
    if url is not None and url.startswith(("postgresql://", "postgres://")):
        return lambda: _advisory(url, key)
    return lambda: _flocked(lock_file_path(settings, key))


def lock_file_path(settings: Settings, key: str) -> Path:
    configured = os.environ.get("HMD_ROTATION_LOCK_FILE")
    if configured:
        return Path(configured)
    audit = settings.audit_log
    is_file = audit != "stderr" and "://" not in audit
    directory = Path(audit).parent if is_file else _temporary_directory()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return directory / f"heimdall-kms-rotate-{digest}.lock"


def _temporary_directory() -> Path:
    try:
        return Path(tempfile.gettempdir())
    except FileNotFoundError:  # no candidate directory is writable (a read-only root)
        raise ConfigurationError(
            "HMD_ROTATION_LOCK_FILE: not set, the audit log is not a file and there is no "
            "writable temporary directory for the rotation lock; set it to a writable path "
            "(or HMD_DATABASE_URL to PostgreSQL)"
        ) from None


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigurationError(
            f"HMD_ROTATION_LOCK_FILE: cannot open the rotation lock {path}: {exc.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _advisory(url: str, key: str) -> Iterator[None]:
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra, for a PostgreSQL HMD_DATABASE_URL
    except ImportError:
        raise ConfigurationError(
            "the rotation lock on PostgreSQL needs: pip install 'heimdall-kms[postgres]'"
        ) from None

    try:
        connection = psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(
            f"HMD_DATABASE_URL: cannot reach PostgreSQL for the rotation lock "
            f"({type(exc).__name__})"
        ) from None
    with connection:
        # Session-level: released when the connection closes, also if this process dies.
        connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"heimdall-kms rotate {key}",))
        yield
