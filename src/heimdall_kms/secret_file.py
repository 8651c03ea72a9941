"""Secrets read from files (``HMD_VAULT_TOKEN_FILE`` and the other ``*_FILE`` settings).

A secret may be given in a variable (``HMD_VAULT_TOKEN``) or in a file named by the same
variable with ``_FILE`` appended (a Kubernetes or Docker secret mount, a Vault Agent sink),
never both. The file must belong to this deployment alone: one that the group or others may
read is refused, as an SSH client refuses a readable private key. One trailing newline (``\\n``
or ``\\r\\n``) is stripped, as ``echo`` and most editors leave one. Every error is one line
naming the variable and the path, never the content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from heimdall_kms.errors import ConfigurationError

__all__ = ["FileStamp", "read_secret_file", "secret_setting"]


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What tells a rewritten file from the one read before (a rename gives a new inode)."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, info: os.stat_result) -> FileStamp:
        return cls(info.st_ino, info.st_mtime_ns, info.st_size)


def secret_setting(environ: Mapping[str, str], name: str) -> str | None:
    """``name``, or the content of the file ``name_FILE`` names; None if neither is set.

    Raises:
        ConfigurationError: both are set, or the file is refused (:func:`read_secret_file`).
    """
    value = environ.get(name, "").strip() or None
    path = environ.get(f"{name}_FILE", "").strip() or None
    if path is None:
        return value
    if value is not None:
        raise ConfigurationError(f"{name}, {name}_FILE: set one of them, not both")
    return read_secret_file(f"{name}_FILE", Path(path))[0]


def read_secret_file(variable: str, path: Path) -> tuple[str, FileStamp]:
    """The secret in ``path`` (one trailing newline removed) and the file's stamp.

    Raises:
        ConfigurationError: missing, not a regular file, readable by group or others,
            unreadable, not UTF-8, or empty.
    """
    raw, info = _read_private(variable, path)
    return _secret_text(variable, path, raw), FileStamp.of(info)


def _read_private(variable: str, path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and status, read through the descriptor whose mode is checked."""
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            _check_private(variable, path, info)
            return handle.read(), info
    except FileNotFoundError:
        raise ConfigurationError(f"{variable}: no such file: {path}") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigurationError(f"{variable}: cannot read {path}: {reason}") from None


def _check_private(variable: str, path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"{variable}: {path} is not a regular file")
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{variable}: {path} is accessible to its group or others (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); make it readable by its owner only "
            "(chmod 600, or defaultMode 0400 on a Kubernetes secret volume)"
        )


def _secret_text(variable: str, path: Path, raw: bytes) -> str:
    """The file's text, one trailing newline removed.

    Raises:
        ConfigurationError: not UTF-8, or nothing but white space.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{variable}: {path} is not UTF-8 text") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise ConfigurationError(f"{variable}: {path} is empty")
    return text
