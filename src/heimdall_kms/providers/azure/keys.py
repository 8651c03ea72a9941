"""What ``HMD_KMS_KEY_ID`` names on Azure: a key URL without a version,
``https://VAULT/keys/NAME``, and the audit signing key beside it. No SDK here."""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from heimdall_kms.errors import ConfigurationError

__all__ = ["parse_key_url", "signing_key_name"]

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
