"""The GCP and Azure audit checkpoint signers, and the fakes' signing keys they run against.

The fakes sign with pycryptodome (``tests/fakes/signing_keys.py``); heimdall-kms verifies GCP
signatures with ``cryptography`` (``primitives.verify_with_public_key``) and Azure's through the
Azure SDK, so each side checks the other. The official clients drive the fakes unmodified.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import SignatureAlgorithm
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1
from google.oauth2 import service_account as google_accounts

from heimdall_kms import primitives
from heimdall_kms.audit.checkpoint import new_checkpoint
from heimdall_kms.audit.cloud_signers import AzureSigner, GCPSigner
from heimdall_kms.config import GCPSettings, GCPTransport
from heimdall_kms.errors import ConfigurationError, KMSError, PermissionDeniedError
from heimdall_kms.providers.azure.keys import signing_key_name
from heimdall_kms.providers.gcp.client import build_client
from tests.contract.backends.azure import ADMIN, key_client
from tests.contract.backends.gcp import (
    LOCATION,
    create_signing_key,
    rest_client,
    service_account,
)
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    READ,
    SIGN,
    VERIFY,
    FakeKeyVaultServer,
    start_fake_key_vault,
)
from tests.fakes.gcp_kms_http import FakeKMSServer, crc32c, start_fake_kms
from tests.fakes.signing_keys import Curve, Encoding, SigningKey

MESSAGE = b'{"seq":3,"hash":"ab"}'
SIGN_ALGORITHM = kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm


class TestFakeSigningKeys:
    @pytest.mark.parametrize("encoding", list(Encoding))
    def test_a_p256_signature_verifies_for_its_digest_only(self, encoding: Encoding) -> None:
        key = SigningKey.generate(Curve.P256)
        digest = hashlib.sha256(MESSAGE).digest()
        signature = key.sign_digest(digest, encoding)
        assert len(signature) == 64 if encoding is Encoding.RAW else 68 <= len(signature) <= 72
        assert key.verify_digest(digest, signature, encoding)
        assert not key.verify_digest(hashlib.sha256(b"other").digest(), signature, encoding)
        assert not SigningKey.generate(Curve.P256).verify_digest(digest, signature, encoding)

    def test_the_signatures_verify_with_an_independent_implementation(self) -> None:
        p256, ed25519 = SigningKey.generate(Curve.P256), SigningKey.generate(Curve.ED25519)
        der = p256.sign_digest(hashlib.sha256(MESSAGE).digest(), Encoding.DER)
        for key, signature in ((p256, der), (ed25519, ed25519.sign_data(MESSAGE))):
            pem = key.public_pem().encode()
            assert primitives.verify_with_public_key(pem, MESSAGE, signature)
            assert not primitives.verify_with_public_key(pem, MESSAGE + b" ", signature)

    def test_a_key_signs_only_its_way(self) -> None:
        with pytest.raises(ValueError, match="digest"):
            SigningKey.generate(Curve.P256).sign_digest(b"short", Encoding.DER)
        with pytest.raises(ValueError, match="Ed25519"):
            SigningKey.generate(Curve.P256).sign_data(MESSAGE)


# -- GCP ----------------------------------------------------------------------------------------


class GCPWorld:
    def __init__(self) -> None:
        self.server: FakeKMSServer = start_fake_kms()
        self.admin = rest_client(self.server.url)
        ring = self.admin.create_key_ring(
            request={"parent": LOCATION, "key_ring_id": f"r{secrets.token_hex(3)}"}
        )
        self.ring = str(ring.name)

    def signing_key(self, algorithm: str = "EC_SIGN_P256_SHA256") -> str:
        return create_signing_key(self.admin, self.ring, f"audit-{secrets.token_hex(3)}", algorithm)

    def signer(
        self, key: str, client: kms_v1.KeyManagementServiceClient | None = None
    ) -> GCPSigner:
        return GCPSigner(client or rest_client(self.server.url), key, timeout=10)


@pytest.fixture
def gcp() -> Iterator[GCPWorld]:
    world = GCPWorld()
    yield world
    world.server.stop()


class TestGCPFakeSigning:
    def test_asymmetric_sign_and_get_public_key_as_documented(self, gcp: GCPWorld) -> None:
        version = f"{gcp.signing_key()}/cryptoKeyVersions/1"
        digest = hashlib.sha256(MESSAGE).digest()
        answer = gcp.admin.asymmetric_sign(
            request={"name": version, "digest": {"sha256": digest}, "digest_crc32c": crc32c(digest)}
        )
        assert answer.verified_digest_crc32c and answer.name == version
        assert answer.signature_crc32c == crc32c(answer.signature)
        public = gcp.admin.get_public_key(request={"name": version})
        assert public.algorithm == SIGN_ALGORITHM.EC_SIGN_P256_SHA256
        assert public.pem_crc32c == crc32c(public.pem.encode())
        assert primitives.verify_with_public_key(public.pem.encode(), MESSAGE, answer.signature)

    def test_ed25519_signs_the_data_itself(self, gcp: GCPWorld) -> None:
        version = f"{gcp.signing_key('EC_SIGN_ED25519')}/cryptoKeyVersions/1"
        answer = gcp.admin.asymmetric_sign(request={"name": version, "data": MESSAGE})
        pem = gcp.admin.get_public_key(request={"name": version}).pem.encode()
        assert primitives.verify_with_public_key(pem, MESSAGE, answer.signature)
        with pytest.raises(api_exceptions.BadRequest, match="signs data, no digest"):
            gcp.admin.asymmetric_sign(
                request={"name": version, "digest": {"sha256": hashlib.sha256(MESSAGE).digest()}}
            )

    def test_what_cloud_kms_refuses_the_fake_refuses(self, gcp: GCPWorld) -> None:
        key = gcp.signing_key()
        version = f"{key}/cryptoKeyVersions/1"
        # Over REST every 400 is a BadRequest: the status name is in the message.
        with pytest.raises(api_exceptions.BadRequest, match="signs a digest"):
            gcp.admin.asymmetric_sign(request={"name": version, "data": MESSAGE})
        with pytest.raises(api_exceptions.BadRequest, match="checksum"):
            gcp.admin.asymmetric_sign(
                request={"name": version, "digest": {"sha256": bytes(32)}, "digest_crc32c": 1}
            )
        with pytest.raises(api_exceptions.BadRequest, match="no primary"):
            gcp.admin.encrypt(request={"name": key, "plaintext": b"x"})
        with pytest.raises(api_exceptions.BadRequest, match="symmetric keys"):
            gcp.admin.create_crypto_key(
                request={
                    "parent": gcp.ring,
                    "crypto_key_id": "rotating",
                    "crypto_key": {
                        "purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
                        "version_template": {"algorithm": "EC_SIGN_P256_SHA256"},
                        "rotation_period": {"seconds": 86400 * 30},
                    },
                }
            )
        gcp.admin.update_crypto_key_version(
            request={"crypto_key_version": {"name": version, "state": 2}, "update_mask": "state"}
        )
        with pytest.raises(api_exceptions.BadRequest, match="not enabled"):
            gcp.admin.asymmetric_sign(request={"name": version, "digest": {"sha256": bytes(32)}})


class TestGCPSigner:
    @pytest.mark.parametrize("algorithm", ["EC_SIGN_P256_SHA256", "EC_SIGN_ED25519"])
    def test_a_checkpoint_signs_and_verifies(self, gcp: GCPWorld, algorithm: str) -> None:
        signer = gcp.signer(gcp.signing_key(algorithm))
        checkpoint = new_checkpoint("host:/log", 3, "ab" * 32, signer)
        assert checkpoint.signature.startswith("gcp:v1:")
        assert signer.verify_many([(checkpoint.message(), checkpoint.signature)]) == [True]
        assert signer.verify_many([(checkpoint.message() + b" ", checkpoint.signature)]) == [False]

    def test_over_grpc_too(self) -> None:
        """The provider's default transport: the fake's gRPC service, the client's protos."""
        server = start_fake_kms(grpc=True)
        try:
            admin = rest_client(server.url)
            ring = admin.create_key_ring(request={"parent": LOCATION, "key_ring_id": "g"}).name
            key = create_signing_key(admin, str(ring), "audit")
            settings = GCPSettings(
                endpoint=server.grpc_url, transport=GCPTransport.GRPC, anonymous=True
            )
            signer = GCPSigner(build_client(settings), key, timeout=10)
            signature = signer.sign(MESSAGE)
            assert signer.verify_many([(MESSAGE, signature)]) == [True]
            assert server.kms.calls["asymmetric_sign"] == server.kms.calls["get_public_key"] == 1
        finally:
            server.stop()

    def test_another_keys_signature_fails_and_garbage_is_no_signature(self, gcp: GCPWorld) -> None:
        signer, forger = gcp.signer(gcp.signing_key()), gcp.signer(gcp.signing_key())
        forged = forger.sign(MESSAGE)  # also "gcp:v1:...": the same version number
        assert (
            signer.verify_many(
                [
                    (MESSAGE, forged),
                    (MESSAGE, "gcp:v9:AAAA"),
                    (MESSAGE, "vault:v1:x"),
                    (MESSAGE, ""),
                ]
            )
            == [False] * 4
        )

    def test_a_new_version_signs_and_old_checkpoints_still_verify(self, gcp: GCPWorld) -> None:
        key = gcp.signing_key()
        signer = gcp.signer(key)
        old = signer.sign(MESSAGE)
        gcp.admin.create_crypto_key_version(request={"parent": key, "crypto_key_version": {}})
        new = signer.sign(MESSAGE)
        assert (old.split(":")[1], new.split(":")[1]) == ("v1", "v2")
        assert signer.verify_many([(MESSAGE, old), (MESSAGE, new)]) == [True, True]

    def test_no_enabled_version_is_an_error_not_a_signature(self, gcp: GCPWorld) -> None:
        key = gcp.signing_key()
        gcp.admin.update_crypto_key_version(
            request={
                "crypto_key_version": {"name": f"{key}/cryptoKeyVersions/1", "state": 2},
                "update_mask": "state",
            }
        )
        with pytest.raises(KMSError, match="no enabled version"):
            gcp.signer(key).sign(MESSAGE)

    def test_writers_sign_and_the_audit_role_only_verifies(
        self, gcp: GCPWorld, tmp_path: Path
    ) -> None:
        """The roles `gcp bootstrap` prints, enforced by the fake's IAM."""
        key = gcp.signing_key()
        clients = {}
        for role, roles in (
            ("writer", ("roles/cloudkms.signer", "roles/cloudkms.viewer")),
            ("audit", ("roles/cloudkms.publicKeyViewer",)),
        ):
            path, email, public = service_account(tmp_path, role)
            gcp.server.kms.add_service_account(email, public, *roles)
            credentials = google_accounts.Credentials.from_service_account_file(
                str(path), scopes=["https://www.googleapis.com/auth/cloudkms"]
            )
            clients[role] = kms_v1.KeyManagementServiceClient(
                credentials=credentials,
                transport="rest",
                client_options={"api_endpoint": gcp.server.url},
            )
        writer, audit = gcp.signer(key, clients["writer"]), gcp.signer(key, clients["audit"])
        signature = writer.sign(MESSAGE)
        assert audit.verify_many([(MESSAGE, signature)]) == [True]
        with pytest.raises(PermissionDeniedError):
            audit.sign(MESSAGE)
        with pytest.raises(PermissionDeniedError):
            writer.verify_many([(MESSAGE, signature)])  # writers read no public key


# -- Azure --------------------------------------------------------------------------------------

WRITER = ("audit-writer", "writer-" + secrets.token_hex(8))
AUDITOR = ("audit-reader", "auditor-" + secrets.token_hex(8))
VERIFY_ONLY = ("audit-verify-only", "verify-" + secrets.token_hex(8))


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeKeyVaultServer]:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.add_principal(*WRITER, frozenset({READ, SIGN}))
    fake.vault.add_principal(*AUDITOR, frozenset({READ, VERIFY}))
    fake.vault.add_principal(*VERIFY_ONLY, frozenset({VERIFY}))
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def admin(vault: FakeKeyVaultServer) -> Iterator[KeyClient]:
    client = key_client(vault)
    yield client
    client.close()


def ec_key(admin: KeyClient) -> str:
    name = f"audit-{secrets.token_hex(3)}"
    admin.create_ec_key(name, curve="P-256", key_operations=["sign", "verify"])
    return name


class TestAzureFakeSigning:
    def test_sign_and_the_services_verify_as_documented(
        self, vault: FakeKeyVaultServer, admin: KeyClient
    ) -> None:
        name = ec_key(admin)
        key = admin.get_key(name)
        assert (key.key_type.value, key.key.crv.value) == ("EC", "P-256")
        digest = hashlib.sha256(MESSAGE).digest()
        signed = admin.get_cryptography_client(name).sign(SignatureAlgorithm.es256, digest)
        assert len(signed.signature) == 64
        # A principal that may not read the key cannot verify locally: the SDK asks the service.
        remote = key_client(vault, VERIFY_ONLY).get_cryptography_client(
            name, key_version=key.properties.version
        )
        assert remote.verify(SignatureAlgorithm.es256, digest, signed.signature).is_valid
        other = hashlib.sha256(b"other").digest()
        assert not remote.verify(SignatureAlgorithm.es256, other, signed.signature).is_valid
        asked = [r for r in vault.vault.requests if r.path.endswith("/verify")]
        assert asked and asked[-1].status == 200

    def test_what_key_vault_refuses_the_fake_refuses(self, admin: KeyClient) -> None:
        name = ec_key(admin)
        digest = hashlib.sha256(MESSAGE).digest()
        version = admin.get_key(name).properties.version
        admin.update_key_properties(name, version, enabled=False)
        with pytest.raises(HttpResponseError, match="disabled"):
            admin.get_cryptography_client(name, key_version=version).sign(
                SignatureAlgorithm.es256, digest
            )
        rsa = f"rsa-{secrets.token_hex(3)}"
        admin.create_rsa_key(rsa, size=2048)
        with pytest.raises(HttpResponseError):
            admin.get_cryptography_client(rsa).sign(SignatureAlgorithm.es256, digest)
        with pytest.raises(HttpResponseError):
            admin.create_ec_key(f"p384-{secrets.token_hex(3)}", curve="P-384")


class TestAzureSigner:
    def test_writers_sign_the_audit_role_verifies_and_not_the_other_way(
        self, vault: FakeKeyVaultServer, admin: KeyClient
    ) -> None:
        name = ec_key(admin)
        writer = AzureSigner(key_client(vault, WRITER), name)
        auditor = AzureSigner(key_client(vault, AUDITOR), name)
        checkpoint = new_checkpoint("host:/log", 3, "ab" * 32, writer)
        assert checkpoint.signature.startswith("azure:")
        assert checkpoint.key == f"azure:{vault.url}/keys/{name}"
        assert auditor.verify_many([(checkpoint.message(), checkpoint.signature)]) == [True]
        assert auditor.verify_many([(b"other", checkpoint.signature)]) == [False]
        with pytest.raises(PermissionDeniedError):
            auditor.sign(MESSAGE)

    def test_another_keys_signature_fails_and_garbage_is_no_signature(
        self, vault: FakeKeyVaultServer, admin: KeyClient
    ) -> None:
        name, other = ec_key(admin), ec_key(admin)
        auditor = AzureSigner(key_client(vault, AUDITOR), name)
        forged = AzureSigner(admin, other).sign(MESSAGE)
        real = AzureSigner(admin, name).sign(MESSAGE)
        # The real version with the forger's bytes, and the forger's version: both fail.
        swapped = real.rsplit(":", 1)[0] + ":" + forged.rsplit(":", 1)[1]
        assert (
            auditor.verify_many(
                [(MESSAGE, swapped), (MESSAGE, forged), (MESSAGE, "azure:abc:AAAA"), (MESSAGE, "x")]
            )
            == [False] * 4
        )

    def test_rotation_keeps_old_checkpoints_verifiable(
        self, vault: FakeKeyVaultServer, admin: KeyClient
    ) -> None:
        name = ec_key(admin)
        signer = AzureSigner(admin, name)
        old = signer.sign(MESSAGE)
        admin.rotate_key(name)
        new = signer.sign(MESSAGE)
        assert old.split(":")[1] != new.split(":")[1]
        auditor = AzureSigner(key_client(vault, AUDITOR), name)
        assert auditor.verify_many([(MESSAGE, old), (MESSAGE, new)]) == [True, True]


class TestAzureSigningKeyName:
    URL = "https://vault.example.vault.azure.net/keys/pii"

    @pytest.mark.parametrize(
        ("configured", "name"),
        [
            (None, "pii-audit"),
            ("audit-key", "audit-key"),
            ("https://vault.example.vault.azure.net/keys/other", "other"),
        ],
    )
    def test_a_name_or_a_url_in_the_same_vault(self, configured: str | None, name: str) -> None:
        assert signing_key_name(configured, self.URL) == name

    @pytest.mark.parametrize(
        "configured",
        ["PII", URL, "https://elsewhere.vault.azure.net/keys/x", "not a name"],
    )
    def test_the_encryption_key_another_vault_or_garbage_is_refused(self, configured: str) -> None:
        with pytest.raises(ConfigurationError, match="HMD_AUDIT_SIGNING_KEY"):
            signing_key_name(configured, self.URL)
