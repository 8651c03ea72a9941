"""The signed-checkpoint and anchor settings (SPEC §8), read by :mod:`heimdall_kms.config`.

``HMD_AUDIT_SIGNING_KEY`` (the signing key, on the configured provider),
``HMD_AUDIT_PREVIOUS_SIGNING_KEYS`` (AWS: the ARNs of signing keys used before a rotation, whose
checkpoints still verify),
``HMD_AUDIT_CHECKPOINT_SECONDS`` (default 60), ``HMD_AUDIT_CHECKPOINT_LINES`` (default 1000),
``HMD_AUDIT_ANCHOR`` (a ``postgresql://`` URL), ``HMD_AUDIT_ANCHOR_TABLE`` (default
``heimdall_audit_anchor``), ``HMD_AUDIT_LOG_ID`` (the log's name in the anchor, default
``<host>:<absolute path>``), and ``HMD_AUDIT_SYSLOG`` (``udp://HOST[:PORT]`` or
``unix:///PATH``, with ``HMD_AUDIT_SYSLOG_FACILITY``, default ``auth``): a copy of every signed
checkpoint sent to syslog.
"""

from __future__ import annotations

import logging.handlers
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import SplitResult, urlsplit

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.secret_file import secret_setting

__all__ = [
    "DEFAULT_ANCHOR_TABLE",
    "AuditAnchoring",
    "SyslogScheme",
    "SyslogTarget",
    "check_table",
    "parse_syslog_url",
    "read_anchoring",
]

DEFAULT_ANCHOR_TABLE = "heimdall_audit_anchor"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


_SYSLOG_PORT = 514


class SyslogScheme(StrEnum):
    UDP = "udp"
    UNIX = "unix"


@dataclass(frozen=True, slots=True)
class SyslogTarget:
    """Where ``HMD_AUDIT_SYSLOG`` sends each signed checkpoint."""

    scheme: SyslogScheme
    host: str  # the socket's path for unix
    port: int = _SYSLOG_PORT
    facility: int = logging.handlers.SysLogHandler.LOG_AUTH

    @property
    def address(self) -> str | tuple[str, int]:
        return self.host if self.scheme is SyslogScheme.UNIX else (self.host, self.port)


_SYSLOG_FORM = "HMD_AUDIT_SYSLOG: expected udp://HOST[:PORT] or unix:///PATH"


def _facility_code(facility: str | None) -> int:
    """The code of a syslog facility name (default ``auth``).

    Raises:
        ConfigurationError: an unknown name.
    """
    names = logging.handlers.SysLogHandler.facility_names
    code = names.get((facility or "auth").lower())
    if code is None:
        raise ConfigurationError(
            f"HMD_AUDIT_SYSLOG_FACILITY: expected one of {', '.join(sorted(names))}"
        )
    return code


def _syslog_target(parts: SplitResult, port: int | None, code: int) -> SyslogTarget | None:
    """The target a plain ``udp://HOST[:PORT]`` or ``unix:///PATH`` names, or None."""
    target_of = _SCHEMES.get(parts.scheme)
    if target_of is None or parts.query or parts.fragment:
        return None
    return target_of(parts, port, code)


def _udp_target(parts: SplitResult, port: int | None, code: int) -> SyslogTarget | None:
    if parts.hostname and parts.path in ("", "/"):
        return SyslogTarget(SyslogScheme.UDP, parts.hostname, port or _SYSLOG_PORT, code)
    return None


def _unix_target(parts: SplitResult, port: int | None, code: int) -> SyslogTarget | None:
    if not parts.netloc and parts.path.startswith("/"):
        return SyslogTarget(SyslogScheme.UNIX, parts.path, facility=code)
    return None


_SCHEMES: dict[str, Callable[[SplitResult, int | None, int], SyslogTarget | None]] = {
    "udp": _udp_target,
    "unix": _unix_target,
}


def parse_syslog_url(text: str, facility: str | None = None) -> SyslogTarget:
    """``udp://HOST[:PORT]`` (default port 514) or ``unix:///PATH``, and a facility name
    (default ``auth``).

    Raises:
        ConfigurationError: another form, or an unknown facility.
    """
    code = _facility_code(facility)
    parts = urlsplit(text.strip())
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(_SYSLOG_FORM) from None
    target = _syslog_target(parts, port, code)
    if target is None:
        raise ConfigurationError(_SYSLOG_FORM)
    return target


@dataclass(frozen=True, slots=True)
class AuditAnchoring:
    signing_key: str
    # AWS keys whose older checkpoints verify too (a rotation made a new key); never signs.
    previous_signing_keys: tuple[str, ...] = ()
    # Left out of repr: a postgresql:// URL may carry the password.
    anchor_url: str | None = field(default=None, repr=False)
    anchor_table: str = DEFAULT_ANCHOR_TABLE
    checkpoint_seconds: float = 60.0
    checkpoint_lines: int = 1000
    log_id: str | None = None
    syslog: SyslogTarget | None = None  # a second, write-only copy for the SIEM


def check_table(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ConfigurationError(
            f"HMD_AUDIT_ANCHOR_TABLE: {name[:64]!r} is not a plain lower-case SQL name"
        )
    return name


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _number(environ: Mapping[str, str], name: str, default: float, minimum: float) -> float:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name}: expected a number, got {raw[:32]!r}") from None
    if not value >= minimum:
        raise ConfigurationError(f"{name}: at least {minimum:g}")
    return value


def _names(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list, in order, without repeats."""
    raw = _get(environ, name)
    names = [part.strip() for part in raw.split(",")] if raw else []
    if "" in names:
        raise ConfigurationError(f"{name}: expected a comma-separated list, with no empty entry")
    return tuple(dict.fromkeys(names))


def read_anchoring(environ: Mapping[str, str]) -> AuditAnchoring | None:
    """The settings, or None when ``HMD_AUDIT_SIGNING_KEY`` is unset.

    Raises:
        ConfigurationError: a value is malformed, or an anchor is set without a signing key.
    """
    url = _anchor_url(environ)
    key = _get(environ, "HMD_AUDIT_SIGNING_KEY")
    syslog = _get(environ, "HMD_AUDIT_SYSLOG")
    previous = _names(environ, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS")
    if key is None:
        _refuse_unsigned(
            ("HMD_AUDIT_ANCHOR", url),
            ("HMD_AUDIT_SYSLOG", syslog),
            ("HMD_AUDIT_PREVIOUS_SIGNING_KEYS", previous),
        )
        return None
    return AuditAnchoring(
        signing_key=key,
        previous_signing_keys=previous,
        anchor_url=url,
        anchor_table=check_table(_get(environ, "HMD_AUDIT_ANCHOR_TABLE") or DEFAULT_ANCHOR_TABLE),
        checkpoint_seconds=_number(environ, "HMD_AUDIT_CHECKPOINT_SECONDS", 60.0, 0.1),
        checkpoint_lines=int(_number(environ, "HMD_AUDIT_CHECKPOINT_LINES", 1000, 1)),
        log_id=_get(environ, "HMD_AUDIT_LOG_ID"),
        syslog=_syslog(environ, syslog),
    )


def _anchor_url(environ: Mapping[str, str]) -> str | None:
    url = secret_setting(environ, "HMD_AUDIT_ANCHOR")  # the URL may carry a password
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("HMD_AUDIT_ANCHOR: expected a postgresql:// URL")
    return url


def _refuse_unsigned(*settings: tuple[str, object]) -> None:
    """Refuse the first of the settings that is set: each is about signed checkpoints."""
    for name, value in settings:
        if value:
            raise ConfigurationError(
                f"{name}: is about signed checkpoints; set HMD_AUDIT_SIGNING_KEY too"
            )


def _syslog(environ: Mapping[str, str], url: str | None) -> SyslogTarget | None:
    if url is None:
        return None
    return parse_syslog_url(url, _get(environ, "HMD_AUDIT_SYSLOG_FACILITY"))
