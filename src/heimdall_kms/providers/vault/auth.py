"""Vault authentication and the token's lifecycle, for the Transit provider.

* Login: a static token, AppRole (role id + secret id), Kubernetes (the pod's service
  account JWT), JWT/OIDC (a signed JWT read from ``HMD_VAULT_JWT_FILE`` at each login) or a
  TLS client certificate (``cert``), each at its configurable mount, through hvac's own
  auth-method classes.
* Renewal: a renewable token whose remaining TTL drops below a third of its period is renewed
  (``auth/token/renew-self``), checked at most once a minute.
* Re-login: when Vault refuses the token (expired or revoked) and the method can log in again
  (AppRole, Kubernetes, JWT, cert), the provider logs in once more and repeats the call, so a
  batch is not dropped. A static token cannot log in again: its refusal is final and raised at once.
* A token file (``HMD_VAULT_TOKEN_FILE``, what a Vault Agent sink writes): before each call the
  file's inode, mtime and size are compared with the last read (one ``stat``), and a changed
  file is read again, so the Agent's new token is used from the next call on. When Vault
  refuses the token, the file is read again whatever its stamp says (a rewrite within the
  file system's mtime granularity) and the call repeated once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import requests

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import VaultAuthMethod
from heimdall_kms.providers.vault.http import VaultAdapter, refuse_redirect
from heimdall_kms.providers.vault.settings import VaultSettings
from heimdall_kms.secret_file import FileStamp, read_secret_file

__all__ = ["TokenFile", "TokenKeeper", "login_function", "new_client"]

_TOKEN_FILE = "HMD_VAULT_TOKEN_FILE"  # noqa: S105 - a variable's name, not a token.

Login = Callable[[hvac.Client], None]


def new_client(vault: VaultSettings) -> hvac.Client:
    """An hvac client sending through :class:`.http.VaultAdapter`, following no redirect."""
    verify: bool | str = str(vault.cacert) if vault.cacert else True
    cert = (
        (str(vault.client_cert), str(vault.client_key))
        if vault.client_cert is not None and vault.client_key is not None
        else None
    )
    client = hvac.Client(
        url=vault.addr,
        namespace=vault.namespace,
        verify=verify,
        cert=cert,
        timeout=vault.timeout_seconds,
        allow_redirects=False,
        adapter=VaultAdapter,
    )
    client.adapter.session.hooks["response"].append(refuse_redirect)
    return client


def login_function(vault: VaultSettings) -> Login | None:
    """How to (re-)authenticate, or None for a static token (which cannot log in again)."""
    return _LOGINS[vault.auth_method](vault)


def _token_file(vault: VaultSettings) -> Login | None:
    return TokenFile(vault.token_file) if vault.token_file is not None else None


def _approle(vault: VaultSettings) -> Login | None:
    if not (vault.role_id and vault.secret_id):
        return None
    role_id, secret = vault.role_id, vault.secret_id

    def approle(client: hvac.Client) -> None:
        client.auth.approle.login(
            role_id=role_id, secret_id=secret.reveal(), mount_point=vault.auth_mount or "approle"
        )

    return approle


def _kubernetes(vault: VaultSettings) -> Login | None:
    if not vault.k8s_role:
        return None
    role = vault.k8s_role

    def kubernetes(client: hvac.Client) -> None:
        client.auth.kubernetes.login(
            role=role, jwt=_read_jwt(vault), mount_point=vault.auth_mount or "kubernetes"
        )

    return kubernetes


def _jwt(vault: VaultSettings) -> Login | None:
    if not (vault.jwt_role and vault.jwt_file):
        return None
    jwt_role, jwt_file = vault.jwt_role, vault.jwt_file

    def jwt(client: hvac.Client) -> None:
        token = read_secret_file("HMD_VAULT_JWT_FILE", jwt_file)[0]
        client.auth.jwt.jwt_login(role=jwt_role, jwt=token, path=vault.auth_mount or "jwt")

    return jwt


def _certificate(vault: VaultSettings) -> Login | None:
    if not (vault.client_cert and vault.client_key):
        return None
    cert, key = str(vault.client_cert), str(vault.client_key)

    def certificate(client: hvac.Client) -> None:
        client.auth.cert.login(
            name=vault.cert_role or "",
            cert_pem=cert,
            key_pem=key,
            mount_point=vault.auth_mount or "cert",
        )

    return certificate


# Each auth method's login, built from the settings (None where the settings lack its parts).
_LOGINS: dict[VaultAuthMethod, Callable[[VaultSettings], Login | None]] = {
    VaultAuthMethod.TOKEN: _token_file,
    VaultAuthMethod.APPROLE: _approle,
    VaultAuthMethod.KUBERNETES: _kubernetes,
    VaultAuthMethod.JWT: _jwt,
    VaultAuthMethod.CERT: _certificate,
}


class TokenFile:
    """``HMD_VAULT_TOKEN_FILE``: the token in it, read again when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: FileStamp | None = None

    def __call__(self, client: hvac.Client) -> None:
        """Read the file now and use its token (the re-login of a token file).

        Raises:
            ConfigurationError: the file is gone, unreadable, open to others or empty.
        """
        token, self._stamp = read_secret_file(_TOKEN_FILE, self.path)
        client.token = token

    def refresh(self, client: hvac.Client) -> None:
        """Read the file again if it changed since the last read (one ``stat`` otherwise).

        Raises:
            ConfigurationError: the file is gone, unreadable, open to others or empty.
        """
        try:
            stamp = FileStamp.of(os.stat(self.path))
        except OSError:
            stamp = None  # reported by the read below, with the reason
        if stamp is None or stamp != self._stamp:
            self(client)


class TokenKeeper:
    """Renews a renewable token before it runs out; logs in again when it is refused."""

    def __init__(
        self,
        client: hvac.Client,
        login: Login | None,
        *,
        check_every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.login = login
        # A token file is looked at on every call, not once a minute: one stat is cheap.
        self._file = login if isinstance(login, TokenFile) else None
        self._check_every = check_every
        self._clock = clock
        self._checked = float("-inf")

    def keep_fresh(self) -> None:
        """Pick up a rewritten token file; renew the token when a third of its TTL is left
        (at most one check per minute)."""
        if self._file is not None:
            self._file.refresh(self.client)
        now = self._clock()
        if now - self._checked < self._check_every:
            return
        self._checked = now
        try:
            if _renewal_due(self.client.auth.token.lookup_self()["data"]):
                self.client.auth.token.renew_self()
        except (hvac.exceptions.VaultError, requests.RequestException, KeyError, TypeError):
            # A token that may not look itself up, or a Vault that is briefly away: the call
            # that follows reports the real problem.
            return


def _renewal_due(data: Mapping[str, Any]) -> bool:
    """Whether a renewable token has a third of its TTL left, or less (its lookup's data)."""
    ttl, period = int(data.get("ttl") or 0), int(data.get("creation_ttl") or 0)
    return bool(data.get("renewable")) and period > 0 and ttl <= period / 3


def _read_jwt(vault: VaultSettings) -> str:
    try:
        return vault.k8s_token_path.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigurationError(
            "HMD_VAULT_K8S_TOKEN_PATH: cannot read the service-account token "
            f"{vault.k8s_token_path}"
        ) from None
