"""Reading settings from an environment mapping: typed accessors and a secret holder.

:mod:`heimdall_kms.config` and each provider's settings reader (``providers/<name>/settings.py``)
read through :class:`Env`, so every variable is parsed and reported the same way: one line that
starts with the variable's name and never repeats a secret's value. Nothing here reads
``os.environ`` itself; the caller passes the mapping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.secret_file import read_secret_file, secret_setting

__all__ = ["Env", "Secret", "existing_file", "is_loopback", "secret_path"]

# Covariant: a Secret is read-only, so a Secret[bytearray] is a Secret[bytes | bytearray].
_T_co = TypeVar("_T_co", covariant=True)
StrEnumT = TypeVar("StrEnumT", bound=StrEnum)


class Secret(Generic[_T_co]):
    """Holds a secret value whose repr and str never show it.

    It keeps the object it is given, not a copy: a ``bytearray`` key held here can be wiped
    in place by its owner (:func:`heimdall_kms.primitives.wipe`); a ``bytes`` or ``str``
    value cannot be wiped at all.
    """

    __slots__ = ("_value",)

    def __init__(self, value: _T_co) -> None:
        self._value = value

    def reveal(self) -> _T_co:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(Secret)


class Env:
    """Small typed accessors; an empty string counts as unset."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._secrets: dict[str, str | None] = {}

    def secret(self, name: str, *fallbacks: str) -> str | None:
        """``name`` or the file ``name_FILE`` names (never both), else the fallbacks.

        A file is read once (heimdall_kms.secret_file); its errors name ``name_FILE``.
        """
        if name not in self._secrets:
            value = secret_setting(self._environ, name)
            self._secrets[name] = value if value is not None else self.get(name, *fallbacks)
        return self._secrets[name]

    def hidden(self, name: str, *fallbacks: str) -> Secret[str] | None:
        """:meth:`secret`, held in a :class:`Secret` so that no repr shows it."""
        value = self.secret(name, *fallbacks)
        return Secret(value) if value else None

    def path(self, name: str, *fallbacks: str) -> Path | None:
        """A path, not checked (see :func:`existing_file` and :func:`secret_path`)."""
        value = self.get(name, *fallbacks)
        return Path(value) if value else None

    def given(self, name: str) -> bool:
        """Whether ``name`` or ``name_FILE`` is set (without reading the file)."""
        return self.get(name) is not None or self.get(f"{name}_FILE") is not None

    def get(self, name: str, *fallbacks: str) -> str | None:
        for key in (name, *fallbacks):
            value = self._environ.get(key, "").strip()
            if value:
                return value
        return None

    def enum(self, name: str, kind: type[StrEnumT], default: StrEnumT) -> StrEnumT:
        return self.optional_enum(name, kind) or default

    def optional_enum(self, name: str, kind: type[StrEnumT]) -> StrEnumT | None:
        raw = self.get(name)
        if raw is None:
            return None
        try:
            return kind(raw.lower())
        except ValueError:
            choices = " | ".join(member.value for member in kind)
            raise ConfigurationError(f"{name}: expected one of {choices}, got {raw!r}") from None

    def flag(self, name: str, *, default: bool, any_case: bool = True) -> bool:
        """``true`` or ``false`` (any case, unless ``any_case`` is False: a switch that lowers
        security is turned on by exactly ``true``, as documented, and nothing like it).

        Raises:
            ConfigurationError: anything else.
        """
        raw = self.get(name)
        if raw is None:
            return default
        word = raw.lower() if any_case else raw
        if word not in ("true", "false"):
            raise ConfigurationError(f"{name}: expected true | false")
        return word == "true"

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name}: expected an integer, got {raw!r}") from None
        if value < minimum:
            raise ConfigurationError(f"{name}: must be at least {minimum}, got {value}")
        return value

    def number(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigurationError(f"{name}: expected a number, got {raw!r}") from None
        if not value > 0:
            raise ConfigurationError(f"{name}: must be greater than 0")
        return value


def secret_path(name: str, value: str | None) -> Path | None:
    """A file holding a credential (a JWT, a private key): checked like every ``*_FILE``.

    Raises:
        ConfigurationError: the file is refused (:func:`read_secret_file`).
    """
    if value is None:
        return None
    path = Path(value)
    read_secret_file(name, path)
    return path


def existing_file(name: str, value: str | None) -> Path | None:
    """A path that must name a file (a CA bundle, a certificate).

    Raises:
        ConfigurationError: it does not.
    """
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        raise ConfigurationError(f"{name}: no such file: {value}")
    return path


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback IP address (traffic that never leaves the host)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
