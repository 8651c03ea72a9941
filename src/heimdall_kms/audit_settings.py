"""The signed-checkpoint and anchor settings (SPEC §8), read by :mod:`heimdall_kms.config`.

``HMD_AUDIT_SIGNING_KEY`` (the signing key, on the configured provider),
``HMD_AUDIT_CHECKPOINT_SECONDS`` (default 60), ``HMD_AUDIT_CHECKPOINT_LINES`` (default 1000),
``HMD_AUDIT_ANCHOR`` (a ``postgresql://`` URL), ``HMD_AUDIT_ANCHOR_TABLE`` (default
``heimdall_audit_anchor``) and ``HMD_AUDIT_LOG_ID`` (the log's name in the anchor, default
``<host>:<absolute path>``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.secret_file import secret_setting

__all__ = ["DEFAULT_ANCHOR_TABLE", "AuditAnchoring", "check_table", "read_anchoring"]

DEFAULT_ANCHOR_TABLE = "heimdall_audit_anchor"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True)
class AuditAnchoring:
    signing_key: str
    # Left out of repr: a postgresql:// URL may carry the password.
    anchor_url: str | None = field(default=None, repr=False)
    anchor_table: str = DEFAULT_ANCHOR_TABLE
    checkpoint_seconds: float = 60.0
    checkpoint_lines: int = 1000
    log_id: str | None = None


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


def read_anchoring(environ: Mapping[str, str]) -> AuditAnchoring | None:
    """The settings, or None when ``HMD_AUDIT_SIGNING_KEY`` is unset.

    Raises:
        ConfigurationError: a value is malformed, or an anchor is set without a signing key.
    """
    url = secret_setting(environ, "HMD_AUDIT_ANCHOR")  # the URL may carry a password
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError("HMD_AUDIT_ANCHOR: expected a postgresql:// URL")
    key = _get(environ, "HMD_AUDIT_SIGNING_KEY")
    if key is None:
        if url is not None:
            raise ConfigurationError(
                "HMD_AUDIT_ANCHOR: anchors signed checkpoints; set HMD_AUDIT_SIGNING_KEY too"
            )
        return None
    return AuditAnchoring(
        signing_key=key,
        anchor_url=url,
        anchor_table=check_table(_get(environ, "HMD_AUDIT_ANCHOR_TABLE") or DEFAULT_ANCHOR_TABLE),
        checkpoint_seconds=_number(environ, "HMD_AUDIT_CHECKPOINT_SECONDS", 60.0, 0.1),
        checkpoint_lines=int(_number(environ, "HMD_AUDIT_CHECKPOINT_LINES", 1000, 1)),
        log_id=_get(environ, "HMD_AUDIT_LOG_ID"),
    )
