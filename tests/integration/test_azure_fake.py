"""The fake Key Vault's rotation-policy calls, as the official SDK sees them.

Key Vault documents that every key has a default policy (notify 30 days before expiry, no
automatic rotation) until one is set, that ``PUT /keys/{name}/rotationpolicy`` replaces it,
and that the two need the ``keyrotationpolicies/read`` and ``/write`` data actions.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
)

from tests.contract.backends.azure import ADMIN, key_client
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    CRYPTO_SERVICE_ENCRYPTION_USER,
    FakeKeyVaultServer,
    start_fake_key_vault,
)

APP = ("fake-app", "app-" + secrets.token_hex(8))


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKeyVaultServer]:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.add_principal(*APP, CRYPTO_SERVICE_ENCRYPTION_USER)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def admin(server: FakeKeyVaultServer) -> Iterator[KeyClient]:
    client = key_client(server)
    yield client
    client.close()


class TestRotationPolicy:
    def test_a_new_key_has_the_default_policy(self, admin: KeyClient) -> None:
        admin.create_rsa_key("default-policy", size=2048)
        policy = admin.get_key_rotation_policy("default-policy")
        assert [(a.action, a.time_before_expiry) for a in policy.lifetime_actions] == [
            (KeyRotationPolicyAction.notify, "P30D")
        ]

    def test_a_policy_set_is_read_back(self, admin: KeyClient) -> None:
        admin.create_rsa_key("set-policy", size=2048)
        rotate = KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P30D")
        admin.update_key_rotation_policy(
            "set-policy", KeyRotationPolicy(), lifetime_actions=[rotate]
        )
        policy = admin.get_key_rotation_policy("set-policy")
        assert [(a.action, a.time_after_create) for a in policy.lifetime_actions] == [
            (KeyRotationPolicyAction.rotate, "P30D")
        ]

    def test_unknown_key_and_missing_action_are_refused(
        self, server: FakeKeyVaultServer, admin: KeyClient
    ) -> None:
        with pytest.raises(ResourceNotFoundError):
            admin.get_key_rotation_policy("no-such-key")
        admin.create_rsa_key("guarded", size=2048)
        app = key_client(server, APP)
        with pytest.raises(HttpResponseError) as caught:
            app.get_key_rotation_policy("guarded")
        assert caught.value.status_code == 403
        app.close()
