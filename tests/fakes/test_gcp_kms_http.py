"""The Cloud KMS wire fake itself, through the official google-cloud-kms client (REST and gRPC),
against what Cloud KMS documents: CRC32C both ways, the ciphertext naming its version, AAD
binding, primary versions, version states and the status and message of each failure (over
REST the SDK raises INVALID_ARGUMENT and FAILED_PRECONDITION as BadRequest, from HTTP 400, so
the message tells them apart). The provider tests trust these behaviours; here they are checked
on their own."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import google_crc32c
import grpc
import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service.transports import (
    KeyManagementServiceGrpcTransport,
)
from google.protobuf import field_mask_pb2

from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.gcp_kms_http import FakeKMSServer, crc32c, start_fake_kms

State = kms_v1.CryptoKeyVersion.CryptoKeyVersionState


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms(grpc=True)
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["rest", "grpc"])
def client(
    request: pytest.FixtureRequest, server: FakeKMSServer
) -> kms_v1.KeyManagementServiceClient:
    if request.param == "rest":
        return rest_client(server.url)
    # A plaintext gRPC endpoint: the client would otherwise insist on TLS.
    channel = grpc.insecure_channel(server.grpc_url.removeprefix("http://"))
    return kms_v1.KeyManagementServiceClient(
        transport=KeyManagementServiceGrpcTransport(channel=channel)
    )


@pytest.fixture
def key(client: kms_v1.KeyManagementServiceClient) -> str:
    ring = client.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": f"fake-{secrets.token_hex(4)}", "key_ring": {}}
    )
    return create_key(client, str(ring.name))


def crc(data: bytes) -> int:
    return int(google_crc32c.value(data))


def encrypt(
    client: kms_v1.KeyManagementServiceClient, name: str, plaintext: bytes, aad: bytes = b""
) -> kms_v1.EncryptResponse:
    return client.encrypt(
        request={
            "name": name,
            "plaintext": plaintext,
            "additional_authenticated_data": aad,
            "plaintext_crc32c": crc(plaintext),
            "additional_authenticated_data_crc32c": crc(aad),
        }
    )


def new_primary(client: kms_v1.KeyManagementServiceClient, key: str) -> str:
    version = client.create_crypto_key_version(request={"parent": key, "crypto_key_version": {}})
    number = version.name.rsplit("/", 1)[1]
    client.update_crypto_key_primary_version(request={"name": key, "crypto_key_version_id": number})
    return str(version.name)


class TestCrc32c:
    def test_the_fakes_own_table_agrees_with_google_crc32c(self) -> None:
        """The fake's CRC32C (its own table) is the Castagnoli checksum the SDK computes."""
        assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
        for size in (0, 1, 31, 4096):
            data = os.urandom(size)
            assert crc32c(data) == crc(data)

    def test_a_request_checksum_that_does_not_match_is_invalid_argument(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """Cloud KMS refuses a request whose plaintext_crc32c is not the plaintext's."""
        with pytest.raises(api_exceptions.BadRequest, match="did not match the data"):
            client.encrypt(request={"name": key, "plaintext": b"x", "plaintext_crc32c": crc(b"y")})


class TestEncryptDecrypt:
    def test_round_trip_with_verified_checksums(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """encrypt names the primary version, confirms both request checksums and sends the
        ciphertext's; decrypt returns the plaintext with its checksum."""
        sealed = encrypt(client, key, b"data key", b"aad")
        assert sealed.name == f"{key}/cryptoKeyVersions/1"
        assert (
            sealed.verified_plaintext_crc32c
            and sealed.verified_additional_authenticated_data_crc32c
        )
        assert sealed.ciphertext_crc32c == crc(sealed.ciphertext)
        opened = client.decrypt(
            request={
                "name": key,
                "ciphertext": sealed.ciphertext,
                "additional_authenticated_data": b"aad",
            }
        )
        assert opened.plaintext == b"data key"
        assert opened.plaintext_crc32c == crc(b"data key")

    def test_without_request_checksums_nothing_is_verified(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """The verified_* fields say false when the request carried no checksum."""
        sealed = client.encrypt(request={"name": key, "plaintext": b"x"})
        assert not sealed.verified_plaintext_crc32c
        assert not sealed.verified_additional_authenticated_data_crc32c

    @pytest.mark.parametrize("change", ["aad", "bit", "key"])
    def test_a_wrong_aad_a_flipped_bit_or_another_key_is_invalid_argument(
        self, client: kms_v1.KeyManagementServiceClient, key: str, change: str
    ) -> None:
        """Decryption failed: the ciphertext is invalid (INVALID_ARGUMENT), never a plaintext."""
        ciphertext = bytearray(encrypt(client, key, b"data key", b"aad").ciphertext)
        name, aad = key, b"aad"
        if change == "aad":
            aad = b"other"
        elif change == "bit":
            ciphertext[-1] ^= 1
        else:
            name = create_key(client, key.rsplit("/cryptoKeys/", 1)[0])
        with pytest.raises(api_exceptions.BadRequest, match="the ciphertext is invalid"):
            client.decrypt(
                request={
                    "name": name,
                    "ciphertext": bytes(ciphertext),
                    "additional_authenticated_data": aad,
                }
            )

    def test_plaintext_over_64_kib_is_invalid_argument(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """Cloud KMS's documented limit for symmetric encrypt."""
        with pytest.raises(api_exceptions.BadRequest, match="larger than 64 KiB"):
            client.encrypt(request={"name": key, "plaintext": b"x" * (64 * 1024 + 1)})


class TestVersions:
    def test_a_new_primary_encrypts_and_the_old_version_still_decrypts(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """The ciphertext names its version, so decrypt needs only the key's name."""
        old = encrypt(client, key, b"old").ciphertext
        assert new_primary(client, key) == f"{key}/cryptoKeyVersions/2"
        assert encrypt(client, key, b"new").name == f"{key}/cryptoKeyVersions/2"
        opened = client.decrypt(request={"name": key, "ciphertext": old})
        assert opened.plaintext == b"old"
        assert not opened.used_primary

    def test_a_disabled_version_refuses_with_failed_precondition_until_enabled(
        self, client: kms_v1.KeyManagementServiceClient, key: str, server: FakeKMSServer
    ) -> None:
        """A version not ENABLED refuses decrypt with FAILED_PRECONDITION; enabling restores it."""
        old = encrypt(client, key, b"old").ciphertext
        new_primary(client, key)
        version = f"{key}/cryptoKeyVersions/1"
        mask = field_mask_pb2.FieldMask(paths=["state"])
        client.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": version, "state": State.DISABLED},
                "update_mask": mask,
            }
        )
        assert server.kms.version_state(key, 1) == "DISABLED"
        with pytest.raises(api_exceptions.BadRequest, match="current state is: DISABLED"):
            client.decrypt(request={"name": key, "ciphertext": old})
        client.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": version, "state": State.ENABLED},
                "update_mask": mask,
            }
        )
        assert client.decrypt(request={"name": key, "ciphertext": old}).plaintext == b"old"

    def test_listing_versions_shows_each_with_its_state(
        self, client: kms_v1.KeyManagementServiceClient, key: str
    ) -> None:
        """list_crypto_key_versions answers every version of the key, in order."""
        new_primary(client, key)
        listed = list(client.list_crypto_key_versions(request={"parent": key}))
        assert [v.name.rsplit("/", 1)[1] for v in listed] == ["1", "2"]
        assert {v.state for v in listed} == {State.ENABLED}

    def test_an_unknown_key_is_not_found(self, client: kms_v1.KeyManagementServiceClient) -> None:
        """NOT_FOUND, as Cloud KMS answers for a key that does not exist."""
        with pytest.raises(api_exceptions.NotFound):
            client.encrypt(
                request={"name": f"{LOCATION}/keyRings/none/cryptoKeys/none", "plaintext": b"x"}
            )


class TestSwitches:
    def test_an_injected_status_is_answered_then_cleared(
        self, client: kms_v1.KeyManagementServiceClient, key: str, server: FakeKMSServer
    ) -> None:
        """inject() answers the status the test names, as the SDK maps it; clear() ends it."""
        server.kms.inject(key, "PERMISSION_DENIED")
        try:
            with pytest.raises(api_exceptions.Forbidden):
                client.encrypt(request={"name": key, "plaintext": b"x"})
        finally:
            server.kms.clear(key)
        assert client.encrypt(request={"name": key, "plaintext": b"x"}).ciphertext

    def test_corrupt_keeps_the_checksum_of_the_original(
        self, client: kms_v1.KeyManagementServiceClient, key: str, server: FakeKMSServer
    ) -> None:
        """A corrupted answer fails the client's own CRC32C check, as a damaged response would."""
        server.kms.corrupt(key)
        sealed = encrypt(client, key, b"x")
        assert sealed.ciphertext_crc32c != crc(sealed.ciphertext)
