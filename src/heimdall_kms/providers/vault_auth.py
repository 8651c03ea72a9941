"""Vault authentication and the token's lifecycle, for the Transit provider.

* Login: a static token, AppRole (role id + secret id) or Kubernetes (the pod's service
  account JWT), each at its configurable mount.
* Renewal: a renewable token whose remaining TTL drops below a third of its period is renewed
  (``auth/token/renew-self``), checked at most once a minute.
* Re-login: when Vault refuses the token (expired or revoked) and the method can log in again
  (AppRole, Kubernetes), the provider logs in once more and repeats the call, so a batch is not
  dropped. A static token cannot log in again: its refusal is final and raised at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import hvac
import hvac.exceptions
import requests

from heimdall_kms.config import VaultAuthMethod, VaultSettings
from heimdall_kms.errors import ConfigurationError
from heimdall_kms.providers.vault_http import refuse_redirect

__all__ = ["TokenKeeper", "login_function", "new_client"]

Login = Callable[[hvac.Client], None]


def new_client(vault: VaultSettings) -> hvac.Client:
    """An hvac client that follows no redirect (see :func:`vault_http.refuse_redirect`)."""
    verify: bool | str = str(vault.cacert) if vault.cacert else True
    client = hvac.Client(
        url=vault.addr,
        namespace=vault.namespace,
        verify=verify,
        timeout=vault.timeout_seconds,
        allow_redirects=False,
    )
    client.adapter.session.hooks["response"].append(refuse_redirect)
    return client


def login_function(vault: VaultSettings) -> Login | None:
    """How to (re-)authenticate, or None for a static token (which cannot log in again)."""
    method = vault.auth_method
    if method is VaultAuthMethod.APPROLE and vault.role_id and vault.secret_id:
        role_id, secret = vault.role_id, vault.secret_id

        def approle(client: hvac.Client) -> None:
            client.auth.approle.login(
                role_id=role_id,
                secret_id=secret.reveal(),
                mount_point=vault.auth_mount or "approle",
            )

        return approle
    if method is VaultAuthMethod.KUBERNETES and vault.k8s_role:
        role = vault.k8s_role

        def kubernetes(client: hvac.Client) -> None:
            client.auth.kubernetes.login(
                role=role, jwt=_read_jwt(vault), mount_point=vault.auth_mount or "kubernetes"
            )

        return kubernetes
    return None


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
        self._check_every = check_every
        self._clock = clock
        self._checked = float("-inf")

    def keep_fresh(self) -> None:
        """Renew the token when a third of its TTL is left (at most one check per minute)."""
        now = self._clock()
        if now - self._checked < self._check_every:
            return
        self._checked = now
        try:
            data = self.client.auth.token.lookup_self()["data"]
            ttl, period = int(data.get("ttl") or 0), int(data.get("creation_ttl") or 0)
            if data.get("renewable") and period > 0 and ttl <= period / 3:
                self.client.auth.token.renew_self()
        except (hvac.exceptions.VaultError, requests.RequestException, KeyError, TypeError):
            # A token that may not look itself up, or a Vault that is briefly away: the call
            # that follows reports the real problem.
            return


def _read_jwt(vault: VaultSettings) -> str:
    try:
        return vault.k8s_token_path.read_text(encoding="utf-8").strip()
    except OSError:
        raise ConfigurationError(
            "HMD_VAULT_K8S_TOKEN_PATH: cannot read the service-account token "
            f"{vault.k8s_token_path}"
        ) from None
