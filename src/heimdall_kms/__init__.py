"""heimdall-kms: envelope encryption of PII field values through a real KMS.

>>> import heimdall_kms
>>> crypto = heimdall_kms.from_env()            # doctest: +SKIP
>>> env = crypto.encrypt("123-45-6789", context={"field": "ssn", "record": "r1"})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heimdall_kms import errors
    from heimdall_kms.async_crypto import AsyncCrypto
    from heimdall_kms.audit import AuditSink
    from heimdall_kms.config import Settings
    from heimdall_kms.envelope import Envelope, KmsV1Envelope, LegacyEnvelope
    from heimdall_kms.scoping import Scope, scope
    from heimdall_kms.service import Crypto

__all__ = [
    "AsyncCrypto",
    "Crypto",
    "Envelope",
    "KmsV1Envelope",
    "LegacyEnvelope",
    "Scope",
    "Settings",
    "errors",
    "from_env",
    "from_env_async",
    "from_settings",
    "scope",
]
__version__ = "0.1.0"

# The facade's classes are imported on first use (PEP 562), and so are the modules the two
# functions below need: `import heimdall_kms` (which every `heimdall-kms --help` does) loads
# neither the KMS clients nor prometheus_client nor rich.
_LAZY = {
    "AsyncCrypto": "heimdall_kms.async_crypto",
    "Crypto": "heimdall_kms.service",
    "Envelope": "heimdall_kms.envelope",
    "KmsV1Envelope": "heimdall_kms.envelope",
    "LegacyEnvelope": "heimdall_kms.envelope",
    "Scope": "heimdall_kms.scoping",
    "Settings": "heimdall_kms.config",
    "scope": "heimdall_kms.scoping",
}


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("heimdall_kms.errors")
    if name not in _LAZY:
        raise AttributeError(f"module 'heimdall_kms' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def from_settings(
    settings: Settings, *, audit: AuditSink | None = None, default_actor: str = "application"
) -> Crypto:
    """Build the facade from explicit settings (the provider is contacted lazily or at login).

    Raises:
        ConfigurationError: the provider cannot be built from the settings.
        KMSError: logging in to the KMS failed.
        AuditWriteError: the audit log cannot be opened.
    """
    from heimdall_kms.composition import facade  # noqa: PLC0415 - see _LAZY

    return facade(settings, audit=audit, default_actor=default_actor)


def from_env(
    environ: Mapping[str, str] | None = None,
    *,
    audit: AuditSink | None = None,
    default_actor: str = "application",
) -> Crypto:
    """Read the ``HMD_*`` settings (SPEC §2) from ``environ`` (default ``os.environ``).

    Raises:
        ConfigurationError: a setting is missing or malformed; the message names the variable.
        KMSError: logging in to the KMS failed.
        AuditWriteError: the audit log cannot be opened.
    """
    from heimdall_kms.config import Settings  # noqa: PLC0415 - see _LAZY

    settings = Settings.from_env(os.environ if environ is None else environ)
    return from_settings(settings, audit=audit, default_actor=default_actor)


def from_env_async(
    environ: Mapping[str, str] | None = None,
    *,
    audit: AuditSink | None = None,
    default_actor: str = "application",
    window_seconds: float = 0.002,
    max_batch: int = 250,
    in_flight: int = 4,
) -> AsyncCrypto:
    """:func:`from_env` for asyncio code (SPEC §11): concurrent single-value calls share
    batched KMS calls (see :class:`AsyncCrypto` for the three knobs). The provider is built
    here, before any event loop work: call it at start-up. ``await from_env_async()`` works
    too and gives the same object. Close it with ``await crypto.aclose()``.

    Raises:
        As :func:`from_env`; ConfigurationError for a knob out of range.
    """
    from heimdall_kms.async_crypto import AsyncCrypto  # noqa: PLC0415 - see _LAZY

    crypto = from_env(environ, audit=audit, default_actor=default_actor)
    try:
        return AsyncCrypto(
            crypto,
            default_actor=default_actor,
            window_seconds=window_seconds,
            max_batch=max_batch,
            in_flight=in_flight,
        )
    except BaseException:
        crypto.close()
        raise
