"""The Key Vault and Entra ID wire fake itself, through the official azure-identity and
azure-keyvault-keys clients, against what Microsoft documents: the bearer challenge, client
credentials, RSA-OAEP-256 wrap and unwrap, key versions and rotation, disabled versions, Azure
RBAC data actions, and the error answers (status and code) of each failure. The provider tests
trust these behaviours; here they are checked on their own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

from tests.contract.backends.azure import ADMIN, credential, key_client
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    CRYPTO_SERVICE_ENCRYPTION_USER,
    SCOPE,
    UNWRAP_ONLY,
    FakeKeyVaultServer,
    start_fake_key_vault,
)

APP = ("fake-app", "app-" + secrets.token_hex(8))
UNWRAPPER = ("fake-unwrapper", "unwrap-" + secrets.token_hex(8))
DEK = bytes(range(32))
OAEP = KeyWrapAlgorithm.rsa_oaep_256


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKeyVaultServer]:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.add_principal(*APP, CRYPTO_SERVICE_ENCRYPTION_USER)
    fake.vault.add_principal(*UNWRAPPER, UNWRAP_ONLY)
    fake.vault.retry_after = "0"
    yield fake
    fake.stop()


@pytest.fixture
def key(server: FakeKeyVaultServer) -> str:
    name = f"fake-{secrets.token_hex(4)}"
    server.vault.create_key(name)
    return name


def crypto_client(
    server: FakeKeyVaultServer, key_id: str, who: tuple[str, str] = APP
) -> CryptographyClient:
    return CryptographyClient(
        key_id,
        credential(server, who),
        connection_verify=str(server.ca_pem),
        verify_challenge_resource=False,  # loopback is not *.vault.azure.net
        retry_total=0,
    )


def refusal(caught: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None]:
    return caught.value.status_code, caught.value.error.code if caught.value.error else None


class TestEntraID:
    def test_client_credentials_give_a_token_for_key_vault(
        self, server: FakeKeyVaultServer
    ) -> None:
        """A known principal with its secret gets a bearer token for vault.azure.net."""
        token = credential(server, APP).get_token(SCOPE)
        assert token.token and token.expires_on > 0

    def test_a_wrong_secret_is_refused_by_entra_id(self, server: FakeKeyVaultServer) -> None:
        """AADSTS7000215 (invalid_client) reaches the SDK as ClientAuthenticationError."""
        with pytest.raises(ClientAuthenticationError):
            credential(server, (APP[0], "wrong")).get_token(SCOPE)

    def test_the_first_request_is_challenged_then_repeated_with_a_token(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """Key Vault answers 401 with WWW-Authenticate to a request without a token; the
        client fetches one and sends the request again."""
        start = len(server.vault.requests)
        key_client(server).get_key(key)
        seen = [(r.authorized, r.status) for r in server.vault.requests[start:]]
        assert seen[0] == (False, 401)
        assert seen[-1] == (True, 200)


class TestWrapUnwrap:
    def test_rsa_oaep_256_round_trip_names_the_version(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """The wrap names the versioned kid and is one 2048-bit RSA block; unwrapKey returns it."""
        ((version, _),) = server.vault.versions(key)
        client = crypto_client(server, server.key_url(key) + f"/{version}")
        wrapped = client.wrap_key(OAEP, DEK)
        assert wrapped.key_id == server.key_url(key) + f"/{version}"
        assert len(wrapped.encrypted_key) == 256
        assert client.unwrap_key(OAEP, wrapped.encrypted_key).key == DEK

    def test_a_damaged_wrapped_key_is_bad_parameter(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """A flipped byte fails OAEP decoding: 400 BadParameter, never another key."""
        ((version, _),) = server.vault.versions(key)
        client = crypto_client(server, server.key_url(key) + f"/{version}")
        damaged = bytearray(client.wrap_key(OAEP, DEK).encrypted_key)
        damaged[10] ^= 1
        with pytest.raises(HttpResponseError) as caught:
            client.unwrap_key(OAEP, bytes(damaged))
        assert refusal(caught) == (400, "BadParameter")

    def test_a_disabled_version_does_not_unwrap(self, server: FakeKeyVaultServer, key: str) -> None:
        """As on the service: unwrapKey on a disabled version is 403, "not allowed on a disabled
        key"; enabled again, it unwraps."""
        ((version, _),) = server.vault.versions(key)
        client = crypto_client(server, server.key_url(key) + f"/{version}")
        wrapped = client.wrap_key(OAEP, DEK).encrypted_key
        server.vault.set_enabled(key, version, False)
        with pytest.raises(HttpResponseError, match="not allowed on a disabled key") as caught:
            client.unwrap_key(OAEP, wrapped)
        assert caught.value.status_code == 403
        server.vault.set_enabled(key, version, True)
        assert client.unwrap_key(OAEP, wrapped).key == DEK


class TestVersions:
    def test_rotate_adds_a_version_the_key_then_answers(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """rotate_key makes a new current version; the old one stays, listed and enabled."""
        admin = key_client(server)
        ((first, _),) = server.vault.versions(key)
        rotated = admin.rotate_key(key)
        assert rotated.properties.version != first
        assert admin.get_key(key).properties.version == rotated.properties.version
        listed = {p.version for p in admin.list_properties_of_key_versions(key)}
        assert listed == {first, rotated.properties.version}
        assert [enabled for _, enabled in server.vault.versions(key)] == [True, True]

    def test_an_unknown_key_is_key_not_found(self, server: FakeKeyVaultServer) -> None:
        """404 KeyNotFound, as Key Vault answers."""
        with pytest.raises(HttpResponseError) as caught:
            key_client(server).get_key("never-created")
        assert refusal(caught) == (404, "KeyNotFound")


class TestRoles:
    def test_the_encryption_user_wraps_but_cannot_rotate(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """Crypto Service Encryption User has read, wrap and unwrap; rotate is ForbiddenByRbac."""
        client = crypto_client(server, server.key_url(key))
        assert client.unwrap_key(OAEP, client.wrap_key(OAEP, DEK).encrypted_key).key == DEK
        with pytest.raises(HttpResponseError) as caught:
            key_client(server, APP).rotate_key(key)
        assert caught.value.status_code == 403
        assert "ForbiddenByRbac" in str(caught.value)

    def test_an_unwrap_only_principal_cannot_wrap(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """A data action the principal lacks is 403, whatever else it may do."""
        ((version, _),) = server.vault.versions(key)
        kid = server.key_url(key) + f"/{version}"
        wrapped = crypto_client(server, kid).wrap_key(OAEP, DEK).encrypted_key
        unwrapper = crypto_client(server, kid, UNWRAPPER)
        assert unwrapper.unwrap_key(OAEP, wrapped).key == DEK
        with pytest.raises(HttpResponseError) as caught:  # no read: the SDK must ask the vault
            unwrapper.wrap_key(OAEP, DEK)
        assert caught.value.status_code == 403


class TestSwitches:
    def test_an_injected_throttle_is_429_then_cleared(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """inject() answers the status the test names (429 with Retry-After); clear() ends it."""
        client = crypto_client(server, server.key_url(key))
        # The SDK may wrap with the public key locally; unwrapKey always asks Key Vault.
        wrapped = client.wrap_key(OAEP, DEK).encrypted_key
        server.vault.inject(key, 429)
        try:
            with pytest.raises(HttpResponseError) as caught:
                client.unwrap_key(OAEP, wrapped)
            assert caught.value.status_code == 429
            assert caught.value.response.headers.get("Retry-After") is not None
        finally:
            server.vault.clear(key)
        assert client.unwrap_key(OAEP, wrapped).key == DEK
