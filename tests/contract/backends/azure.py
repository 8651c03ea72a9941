"""Azure Key Vault: the official clients over HTTPS against the wire-level fake (SPEC §10).

One fake server per module, a fresh RSA key per test. Every principal gets its tokens from the
fake's Entra ID endpoint through ``ClientSecretCredential``, and the Key Vault client goes
through the real challenge. Failures are real answers of the fake (a wrong client secret, a
role without the data action, its fault switch) or a real refused connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from azure.identity import ClientSecretCredential
from azure.keyvault.keys import KeyClient

from heimdall_kms import primitives
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    UNWRAP_ONLY,
    FakeKeyVaultServer,
    start_fake_key_vault,
)
from tests.servers import free_port

ADMIN = ("heimdall-admin", "admin-" + secrets.token_hex(8))
WORKER = ("heimdall-worker", "worker-" + secrets.token_hex(8))


def credential(server: FakeKeyVaultServer, client: tuple[str, str]) -> ClientSecretCredential:
    """A service principal's credential, fetching tokens from the fake's Entra ID endpoint."""
    return ClientSecretCredential(
        server.vault.tenant,
        client[0],
        client[1],
        authority=server.url,
        disable_instance_discovery=True,  # MSAL would ask login.microsoftonline.com otherwise
        connection_verify=str(server.ca_pem),
    )


def key_client(
    server: FakeKeyVaultServer, client: tuple[str, str] = ADMIN, **kwargs: object
) -> KeyClient:
    return KeyClient(
        server.url,
        credential(server, client),
        connection_verify=str(server.ca_pem),
        verify_challenge_resource=False,  # loopback is not *.vault.azure.net
        **kwargs,
    )


class Backend:
    name = "azure"
    binds_context = False  # Key Vault has no AAD on wrap: the context binds in the value's AAD

    def __init__(self) -> None:
        self.server = start_fake_key_vault()
        # A new latest version and a disable apply after a delay here, as on GCP and AWS.
        self.server.vault.propagation_delay = 1.0
        self.server.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
        self.server.vault.add_principal(*WORKER, UNWRAP_ONLY)
        self._admin = key_client(self.server)

    def _new_key(self) -> str:
        name = f"contract-{secrets.token_hex(4)}"
        self._admin.create_rsa_key(name, size=2048)
        return name

    def make(self) -> KeyManagementService:
        return AzureKeyVaultProvider(key_client(self.server), self._new_key())

    def failing(self, how: str) -> Callable[[], object] | None:
        dek = primitives.new_dek()
        # No retries, so that a throttled or unavailable call fails at once.
        fast = {"retry_total": 0}
        if how == "authentication":
            wrong = (ADMIN[0], "not-the-secret")
            provider = AzureKeyVaultProvider(key_client(self.server, wrong), self._new_key())
        elif how == "permission":
            # The worker may unwrap only: reading the key to wrap with is refused (RBAC).
            provider = AzureKeyVaultProvider(key_client(self.server, WORKER), self._new_key())
        elif how == "not_found":
            provider = AzureKeyVaultProvider(key_client(self.server), "no-such-key")
        elif how == "unavailable":
            closed = KeyClient(
                f"https://127.0.0.1:{free_port()}",
                credential(self.server, ADMIN),
                verify_challenge_resource=False,
                connection_timeout=2,
                **fast,
            )
            provider = AzureKeyVaultProvider(closed, "k")
        elif how == "throttled":
            key = self._new_key()
            self.server.vault.inject(key, 429)
            provider = AzureKeyVaultProvider(key_client(self.server, **fast), key)
        else:
            return None
        return lambda: provider.wrap_many([dek], [{}])

    def close(self) -> None:
        self._admin.close()
        self.server.stop()
