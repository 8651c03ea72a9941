"""Vault's settings (``HMD_VAULT_*``, SPEC §2), read by :func:`read_settings`.

Imports no hvac: :mod:`heimdall_kms.config` reads these settings at start-up whether or not the
``vault`` extra is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import VaultAuthMethod
from heimdall_kms.settings_env import Env, Secret, existing_file, is_loopback, secret_path

__all__ = ["VaultSettings", "read_settings"]

_K8S_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@dataclass(frozen=True, slots=True)
class VaultSettings:
    addr: str = field(repr=False)  # may carry user:password@ (a proxy's); reprs must not show it
    auth_method: VaultAuthMethod = VaultAuthMethod.TOKEN
    token: Secret[str] | None = None
    # HMD_VAULT_TOKEN_FILE (a Vault Agent sink): read again whenever it changes (.auth).
    token_file: Path | None = None
    role_id: str | None = None
    secret_id: Secret[str] | None = None
    k8s_role: str | None = None
    k8s_token_path: Path = _K8S_TOKEN
    jwt_role: str | None = None  # HMD_VAULT_JWT_ROLE
    jwt_file: Path | None = None  # HMD_VAULT_JWT_FILE: read at each login (it may rotate)
    # HMD_VAULT_CLIENT_CERT / HMD_VAULT_CLIENT_KEY: presented in every TLS handshake with Vault
    # (cert auth, or a listener that requires client certificates).
    client_cert: Path | None = None
    client_key: Path | None = None
    cert_role: str | None = None  # HMD_VAULT_CERT_ROLE: else Vault tries every cert role
    auth_mount: str | None = None
    transit_mount: str = "transit"
    namespace: str | None = None
    cacert: Path | None = None
    timeout_seconds: float = 30.0
    batch_size: int = 250


def read_settings(env: Env) -> VaultSettings:
    """The Vault settings (``HMD_VAULT_*``, with the ``VAULT_*`` fallbacks).

    Raises:
        ConfigurationError: a value is missing, malformed or inconsistent with the method.
    """
    method = env.enum("HMD_VAULT_AUTH_METHOD", VaultAuthMethod, VaultAuthMethod.TOKEN)
    settings = VaultSettings(
        addr=_address(env),
        auth_method=method,
        token=env.hidden("HMD_VAULT_TOKEN", "VAULT_TOKEN"),
        token_file=env.path("HMD_VAULT_TOKEN_FILE"),
        role_id=env.get("HMD_VAULT_ROLE_ID"),
        secret_id=env.hidden("HMD_VAULT_SECRET_ID"),
        k8s_role=env.get("HMD_VAULT_K8S_ROLE"),
        k8s_token_path=env.path("HMD_VAULT_K8S_TOKEN_PATH") or _K8S_TOKEN,
        jwt_role=env.get("HMD_VAULT_JWT_ROLE"),
        jwt_file=secret_path("HMD_VAULT_JWT_FILE", env.get("HMD_VAULT_JWT_FILE")),
        client_cert=existing_file("HMD_VAULT_CLIENT_CERT", env.get("HMD_VAULT_CLIENT_CERT")),
        client_key=secret_path("HMD_VAULT_CLIENT_KEY", env.get("HMD_VAULT_CLIENT_KEY")),
        cert_role=env.get("HMD_VAULT_CERT_ROLE"),
        auth_mount=env.get("HMD_VAULT_AUTH_MOUNT"),
        transit_mount=env.get("HMD_VAULT_TRANSIT_MOUNT") or "transit",
        namespace=env.get("HMD_VAULT_NAMESPACE", "VAULT_NAMESPACE"),
        cacert=existing_file("HMD_VAULT_CACERT", env.get("HMD_VAULT_CACERT", "VAULT_CACERT")),
        timeout_seconds=env.number("HMD_VAULT_TIMEOUT", 30.0),
        batch_size=env.integer("HMD_VAULT_BATCH_SIZE", 250, minimum=1),
    )
    _check_auth(settings)
    return settings


def _address(env: Env) -> str:
    addr = env.get("HMD_VAULT_ADDR", "VAULT_ADDR")
    if addr is None:
        raise ConfigurationError("HMD_VAULT_ADDR: required for HMD_KMS_PROVIDER=vault")
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError("HMD_VAULT_ADDR: expected an http:// or https:// URL with a host")
    insecure = env.flag("HMD_VAULT_ALLOW_INSECURE_HTTP", default=False, any_case=False)
    _check_plain_http(parts.scheme, parts.hostname, insecure=insecure)
    return addr.rstrip("/")


def _check_plain_http(scheme: str, host: str, *, insecure: bool) -> None:
    """Refuse plain http:// to anything but loopback, unless allowed on purpose.

    Raises:
        ConfigurationError: http:// to a host other than loopback, not allowed.
    """
    if scheme == "http" and not is_loopback(host) and not insecure:
        raise ConfigurationError(
            "HMD_VAULT_ADDR: plain http:// to a host other than loopback would send the token "
            "and every data key unencrypted; use https:// (or set "
            "HMD_VAULT_ALLOW_INSECURE_HTTP=true behind a TLS-terminating proxy on a trusted "
            "network)"
        )


# What each auth method cannot do without, as (variable, its value in the settings).
_REQUIRED: dict[VaultAuthMethod, tuple[tuple[str, Callable[[VaultSettings], object]], ...]] = {
    VaultAuthMethod.TOKEN: (("HMD_VAULT_TOKEN", lambda v: v.token),),
    VaultAuthMethod.APPROLE: (
        ("HMD_VAULT_ROLE_ID", lambda v: v.role_id),
        ("HMD_VAULT_SECRET_ID", lambda v: v.secret_id),
    ),
    VaultAuthMethod.KUBERNETES: (("HMD_VAULT_K8S_ROLE", lambda v: v.k8s_role),),
    VaultAuthMethod.JWT: (
        ("HMD_VAULT_JWT_ROLE", lambda v: v.jwt_role),
        ("HMD_VAULT_JWT_FILE", lambda v: v.jwt_file),
    ),
    VaultAuthMethod.CERT: (("HMD_VAULT_CLIENT_CERT", lambda v: v.client_cert),),
}
_ALSO = {VaultAuthMethod.CERT: " (with HMD_VAULT_CLIENT_KEY)"}


def _check_auth(vault: VaultSettings) -> None:
    _check_required(vault)
    if (vault.client_cert is None) != (vault.client_key is None):
        raise ConfigurationError(
            "HMD_VAULT_CLIENT_CERT, HMD_VAULT_CLIENT_KEY: set both (the certificate and its key)"
        )
    if vault.auth_method is VaultAuthMethod.CERT and not vault.addr.startswith("https://"):
        raise ConfigurationError(
            "HMD_VAULT_ADDR: HMD_VAULT_AUTH_METHOD=cert needs an https:// address "
            "(the certificate is presented in the TLS handshake)"
        )


def _check_required(vault: VaultSettings) -> None:
    """Check that every variable the auth method cannot do without is set.

    Raises:
        ConfigurationError: naming the first one that is not.
    """
    method = vault.auth_method
    for name, value in _REQUIRED[method]:
        if value(vault) is None:
            raise ConfigurationError(
                f"{name}: required for HMD_VAULT_AUTH_METHOD={method.value}{_ALSO.get(method, '')}"
            )
