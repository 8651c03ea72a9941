"""What ``HMD_KMS_KEY_ID`` names on Azure: a key URL without a version,
``https://VAULT/keys/NAME``, and the audit signing key beside it; and what a key must be for
the provider to wrap with it. No SDK here (its types only, for the type checker)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import SplitResult, urlsplit

from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    KeyVersionRetiredError,
    KMSError,
    PermissionDeniedError,
)

if TYPE_CHECKING:
    from azure.keyvault.keys import KeyProperties, KeyVaultKey

__all__ = [
    "A256KW",
    "RSA_OAEP_256",
    "WRAP_ALGORITHMS",
    "allows",
    "check_usable",
    "parse_key_url",
    "signing_key_name",
    "wire_value",
    "wrap_algorithm",
]

RSA_OAEP_256, A256KW = "RSA-OAEP-256", "A256KW"
# The key types the provider wraps with, and the algorithm of each.
WRAP_ALGORITHMS = {"RSA": RSA_OAEP_256, "RSA-HSM": RSA_OAEP_256, "oct-HSM": A256KW}

_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")


def parse_key_url(value: str) -> tuple[str, str]:
    """``https://VAULT/keys/NAME`` -> (vault URL, key name).

    Raises:
        ConfigurationError: not such a URL, or it names a version.
    """
    parts = urlsplit(value.strip())
    segments = [s for s in parts.path.split("/") if s]
    if _versioned(parts, segments):
        raise ConfigurationError(
            "HMD_KMS_KEY_ID: give the key URL without a version (https://VAULT/keys/NAME); "
            "the latest version wraps, and each value records the version that unwraps it"
        )
    if not _key_url(parts, segments):
        raise ConfigurationError("HMD_KMS_KEY_ID: expected https://VAULT.vault.azure.net/keys/NAME")
    return f"https://{parts.netloc}", segments[1]


def _plain_https(parts: SplitResult) -> bool:
    return parts.scheme == "https" and bool(parts.hostname) and not (parts.query or parts.fragment)


def _versioned(parts: SplitResult, segments: list[str]) -> bool:
    return _plain_https(parts) and len(segments) == 3 and segments[0] == "keys"


def _key_url(parts: SplitResult, segments: list[str]) -> bool:
    return (
        _plain_https(parts)
        and len(segments) == 2
        and segments[0] == "keys"
        and bool(_NAME.fullmatch(segments[1]))
    )


def signing_key_name(configured: str | None, key_url: str) -> str:
    """The audit checkpoints' signing key, in the master key's vault: ``HMD_AUDIT_SIGNING_KEY``
    (a key name, or a key URL of that vault), by default ``<name>-audit``.

    Raises:
        ConfigurationError: a malformed name or URL, or a URL of another vault.
    """
    vault_url, name = parse_key_url(key_url)
    signing = f"{name}-audit" if configured is None else _in_vault(configured, vault_url)
    if signing.lower() == name.lower():  # Key Vault names are case-insensitive
        raise ConfigurationError(
            "HMD_AUDIT_SIGNING_KEY: must name a key of its own, not the encryption key"
        )
    return signing


def _in_vault(configured: str, vault_url: str) -> str:
    """The key name ``HMD_AUDIT_SIGNING_KEY`` gives, as a name or a URL of ``vault_url``.

    Raises:
        ConfigurationError: a malformed name or URL, or a URL of another vault.
    """
    if _NAME.fullmatch(configured):
        return configured
    try:
        other_vault, signing = parse_key_url(configured)
    except ConfigurationError:
        raise ConfigurationError(
            "HMD_AUDIT_SIGNING_KEY: expected a key name, or https://VAULT/keys/NAME"
        ) from None
    if other_vault != vault_url:
        raise ConfigurationError(
            "HMD_AUDIT_SIGNING_KEY: the signing key must be in the vault of HMD_KMS_KEY_ID"
        )
    return signing


def wire_value(value: object) -> str:
    """An SDK enum member as Key Vault writes it (``RSA-HSM``, ``wrapKey``), or ``str(value)``."""
    # The SDK's enums are str enums whose str() is the member's name, not the wire value.
    return str(getattr(value, "value", value))


def wrap_algorithm(key: KeyVaultKey) -> str:
    """The wrap algorithm of ``key``'s type.

    Raises:
        ConfigurationError: a key type that cannot wrap keys.
    """
    kty = wire_value(key.key_type)
    alg = WRAP_ALGORITHMS.get(kty)
    if alg is None:
        raise ConfigurationError(
            f"HMD_KMS_KEY_ID: key type {kty} cannot wrap keys (use RSA, RSA-HSM, or "
            "oct-HSM on a Managed HSM)"
        )
    return alg


def allows(operations: Sequence[object] | None, needed: Sequence[str]) -> bool:
    """Whether a key's key_ops (None: not restricted) include every one of ``needed``."""
    return operations is None or set(needed) <= {wire_value(o) for o in operations}


def _disabled(props: KeyProperties, now: datetime) -> bool:
    return props.enabled is False


def _expired(props: KeyProperties, now: datetime) -> bool:
    return props.expires_on is not None and now >= props.expires_on


def _not_yet_valid(props: KeyProperties, now: datetime) -> bool:
    return props.not_before is not None and now < props.not_before


class _Refusal(NamedTuple):
    applies: Callable[[KeyProperties, datetime], bool]
    error: type[HeimdallKMSError]
    reason: str


# Checked in order: the first that applies to the latest version refuses it.
_REFUSALS = (
    _Refusal(_disabled, KeyVersionRetiredError, "the latest key version is disabled; rotate first"),
    _Refusal(_expired, KeyVersionRetiredError, "the latest key version has expired; rotate first"),
    _Refusal(_not_yet_valid, KMSError, "the latest key version is not valid yet (not before)"),
)


def check_usable(key: KeyVaultKey, now: datetime, operation: str) -> None:
    """Check that ``key``, the latest version, may wrap data keys at ``now``.

    Raises:
        KeyVersionRetiredError: it is disabled or has expired. KMSError: it is not valid yet.
        PermissionDeniedError: its key_ops do not allow wrapKey and unwrapKey.
    """
    # A local wrap would ignore these attributes, and a value wrapped under a version that
    # cannot unwrap is lost; so refuse here, as Key Vault would refuse the unwrap later.
    where = f"Azure Key Vault {operation}"
    for refusal in _REFUSALS:
        if refusal.applies(key.properties, now):
            raise refusal.error(f"{where}: {refusal.reason}")
    if not allows(key.key_operations, ("wrapKey", "unwrapKey")):
        raise PermissionDeniedError(f"{where}: the key's key_ops do not allow wrapKey/unwrapKey")
