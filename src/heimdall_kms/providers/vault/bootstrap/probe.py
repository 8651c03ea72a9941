"""Read-only questions ``heimdall-kms doctor`` asks Vault: sealed? whose token, how long?"""

from __future__ import annotations

from dataclasses import dataclass

import hvac.exceptions
import requests

from heimdall_kms.providers.vault.auth import new_client
from heimdall_kms.providers.vault.bootstrap.steps import _data
from heimdall_kms.providers.vault.errors import Translated
from heimdall_kms.providers.vault.settings import VaultSettings
from heimdall_kms.providers.vault.transit import build_client

__all__ = ["ServerStatus", "TokenStatus", "server_status", "token_status"]


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What Vault's unauthenticated ``sys/seal-status`` says, or why it could not be asked."""

    reachable: bool
    tls_error: bool = False
    problem: str | None = None  # an exception's type name, never a response body
    initialized: bool = False
    sealed: bool = True
    version: str | None = None


@dataclass(frozen=True, slots=True)
class TokenStatus:
    ttl_seconds: int  # 0: the token never expires (a root token)
    renewable: bool
    policies: tuple[str, ...]


def server_status(vault: VaultSettings) -> ServerStatus:
    """Ask Vault whether it is initialized and unsealed; network trouble is reported, not raised."""
    client = new_client(vault)
    try:
        answer = client.adapter.get("/v1/sys/seal-status")
    except requests.exceptions.SSLError:
        return ServerStatus(reachable=False, tls_error=True, problem="SSLError")
    except requests.exceptions.RequestException as exc:
        return ServerStatus(reachable=False, problem=type(exc).__name__)
    except hvac.exceptions.VaultError as exc:
        return ServerStatus(reachable=True, problem=type(exc).__name__)
    finally:
        client.adapter.close()
    return _answered(answer)


def _answered(answer: object) -> ServerStatus:
    """What Vault's answer to ``sys/seal-status`` says."""
    data = _data(answer if isinstance(answer, dict) else None)
    return ServerStatus(
        reachable=True,
        initialized=bool(data.get("initialized")),
        sealed=bool(data.get("sealed", True)),
        version=str(data["version"]) if data.get("version") else None,
    )


def token_status(vault: VaultSettings) -> TokenStatus:
    """Log in as configured and look the token up: its TTL and policies, never its value.

    Raises:
        AuthenticationError: the login was refused. PermissionDeniedError: the token may not
            look itself up. KMSUnavailableError. ConfigurationError: no Kubernetes JWT file.
    """
    client = build_client(vault)
    try:
        with Translated("token lookup", address=client.url):
            data = _data(client.auth.token.lookup_self())
    finally:
        client.adapter.close()
    return TokenStatus(
        ttl_seconds=int(data.get("ttl") or 0),
        renewable=bool(data.get("renewable")),
        policies=tuple(sorted(str(p) for p in data.get("policies") or ())),
    )
