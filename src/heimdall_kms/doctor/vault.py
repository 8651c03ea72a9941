"""The Vault-only checks: TLS trust, the server's seal state, and the token the login gives."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from heimdall_kms.config import Settings, VaultAuthMethod, VaultSettings
from heimdall_kms.doctor.report import Check, DoctorReport, Status, fix_for
from heimdall_kms.errors import AuthenticationError, HeimdallKMSError, PermissionDeniedError
from heimdall_kms.providers.vault.bootstrap import (
    ServerStatus,
    TokenStatus,
    server_status,
    token_status,
)

__all__ = ["vault_checks"]

_SHORT_TTL = 3600
_BOOTSTRAP_HINT = (
    "use a least-privilege identity: `heimdall-kms vault bootstrap` creates the app, worker, "
    "admin and audit roles (docs/vault-bootstrap.md)"
)


def vault_checks(report: DoctorReport, settings: Settings) -> bool:
    """Add the tls, vault server and vault token lines; True when the provider can be used."""
    vault = settings.vault
    assert vault is not None
    status = server_status(vault)
    report.add(_tls(vault, status))
    report.add(_server(vault, status))
    if not _usable(status):
        report.add(Check("vault token", Status.SKIP, "needs a reachable, unsealed Vault"))
        return False
    try:
        token = token_status(vault)
    except PermissionDeniedError:
        report.add(_refused_lookup(vault, settings))
        # A fresh AppRole or Kubernetes login is valid; a static token refused here most
        # likely is not, and every later check would only fail the same way.
        return vault.auth_method is not VaultAuthMethod.TOKEN
    except HeimdallKMSError as exc:
        report.add(Check("vault token", Status.FAIL, str(exc), fix_for(exc, settings)))
        return False
    report.add(_token(vault, token))
    return True


def _usable(status: ServerStatus) -> bool:
    """Reachable, answering as Vault does, initialised and unsealed."""
    return status.reachable and not status.problem and not status.sealed and status.initialized


def _refused_lookup(vault: VaultSettings, settings: Settings) -> Check:
    if vault.auth_method is VaultAuthMethod.TOKEN:
        # Vault answers 403 both to an unknown token and to one without lookup-self.
        return Check(
            "vault token",
            Status.FAIL,
            "Vault refused the token (HTTP 403): it is invalid, expired or revoked, or it may "
            "not look itself up (no default policy)",
            fix_for(AuthenticationError("token refused"), settings)
            + "; a token must be able to read auth/token/lookup-self",
        )
    return Check(
        "vault token",
        Status.WARN,
        "logged in, but the token may not look itself up: it will not be renewed",
        "grant read on auth/token/lookup-self and update on auth/token/renew-self "
        "(the policies `heimdall-kms vault bootstrap` writes do)",
    )


def _loopback(addr: str) -> bool:
    host = urlsplit(addr).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls(vault: VaultSettings, status: ServerStatus) -> Check:
    if urlsplit(vault.addr).scheme == "http":
        return _plain_http(vault.addr)
    if status.tls_error:
        return _untrusted(vault)
    if not status.reachable:
        return Check("tls", Status.SKIP, "could not connect")
    trust = f"HMD_VAULT_CACERT ({vault.cacert})" if vault.cacert else "the system trust store"
    return Check("tls", Status.OK, f"https; Vault's certificate verified against {trust}")


def _plain_http(addr: str) -> Check:
    if _loopback(addr):
        return Check("tls", Status.WARN, "plain http to a loopback address: development only")
    return Check(
        "tls",
        Status.WARN,
        "plain http: the token and every data key cross the network unencrypted",
        "serve Vault over https and set HMD_VAULT_ADDR=https://...",
    )


def _untrusted(vault: VaultSettings) -> Check:
    """Vault's certificate failed verification: against which trust, and what to do."""
    if vault.cacert is not None:
        return Check(
            "tls",
            Status.FAIL,
            f"Vault's certificate is not signed by HMD_VAULT_CACERT ({vault.cacert})",
            "point HMD_VAULT_CACERT at the PEM of the CA that signed Vault's certificate",
        )
    return Check(
        "tls",
        Status.FAIL,
        "Vault's certificate is not trusted by the system trust store",
        "set HMD_VAULT_CACERT to the PEM file of the CA that signed Vault's certificate",
    )


def _server(vault: VaultSettings, status: ServerStatus) -> Check:
    if status.tls_error:
        return Check("vault server", Status.SKIP, "see tls")
    if not status.reachable:
        return Check(
            "vault server",
            Status.FAIL,
            f"cannot reach {vault.addr} ({status.problem})",
            "check HMD_VAULT_ADDR, and that Vault listens there (network, firewall, DNS)",
        )
    if status.problem:
        return Check(
            "vault server",
            Status.FAIL,
            f"{vault.addr} answered seal-status with {status.problem}",
            "check that HMD_VAULT_ADDR is Vault's API address",
        )
    return _seal_state(vault, status)


def _seal_state(vault: VaultSettings, status: ServerStatus) -> Check:
    """The server answered seal-status: whether it is initialized and unsealed."""
    if not status.initialized:
        return Check("vault server", Status.FAIL, "Vault is not initialized", "bao operator init")
    if status.sealed:
        return Check(
            "vault server",
            Status.FAIL,
            f"{vault.addr} is sealed",
            "unseal it: `bao operator unseal` (or `vault operator unseal`) by the key holders",
        )
    version = f", version {status.version}" if status.version else ""
    return Check("vault server", Status.OK, f"{vault.addr} reachable, unsealed{version}")


def _duration(seconds: int) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds // 60} min"


def _expiring_static_token(vault: VaultSettings, token: TokenStatus) -> bool:
    """A short-lived token nothing renews or replaces: the process stops when it expires."""
    return (
        vault.auth_method is VaultAuthMethod.TOKEN
        and vault.token_file is None  # a Vault Agent replaces the token in its sink
        and token.ttl_seconds < _SHORT_TTL
        and not token.renewable
    )


def _token(vault: VaultSettings, token: TokenStatus) -> Check:
    detail = _token_detail(vault, token)
    if "root" in token.policies:
        return Check("vault token", Status.WARN, detail + " (a root token)", _BOOTSTRAP_HINT)
    if token.ttl_seconds == 0:
        return Check("vault token", Status.WARN, detail, _BOOTSTRAP_HINT)
    if _expiring_static_token(vault, token):
        return Check(
            "vault token",
            Status.WARN,
            detail + "; a static token cannot log in again when it expires",
            "use AppRole, Kubernetes, JWT or cert auth, a Vault Agent token file "
            "(HMD_VAULT_TOKEN_FILE), or a renewable (periodic) token",
        )
    return Check("vault token", Status.OK, detail)


def _token_detail(vault: VaultSettings, token: TokenStatus) -> str:
    ttl = "never expires" if token.ttl_seconds == 0 else f"TTL {_duration(token.ttl_seconds)}"
    renew = ", renewable" if token.renewable else ""
    return (
        f"{vault.auth_method.value} login; {ttl}{renew}; policies "
        f"{', '.join(token.policies) or 'none'}"
    )
