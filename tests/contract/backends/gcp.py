"""GCP Cloud KMS: the official client over REST against the wire-level fake (SPEC §10).

One fake server per module, a fresh CryptoKey per test. Failures are real answers of the fake
(its fault switches) or a real refused connection, seen through the unmodified client.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

from Crypto.PublicKey import RSA
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.servers import free_port

LOCATION = "projects/heimdall-test/locations/europe-west1"


def rest_client(url: str) -> kms_v1.KeyManagementServiceClient:
    return kms_v1.KeyManagementServiceClient(
        credentials=AnonymousCredentials(),
        transport="rest",
        client_options=ClientOptions(api_endpoint=url),
    )


def service_account(tmp_path: Path, name: str) -> tuple[Path, str, str]:
    """A service-account key file as IAM issues it; returns (file, email, public key PEM)."""
    key = RSA.generate(2048)
    email = f"{name}@heimdall-test.iam.gserviceaccount.com"
    document = {
        "type": "service_account",
        "project_id": "heimdall-test",
        "private_key_id": f"{name}-key-1",
        "private_key": key.export_key(pkcs=8).decode(),
        "client_email": email,
        "client_id": "1",
        # Never contacted: for a service account the client signs its own JWT (no token
        # exchange), which the fake verifies.
        "token_uri": "http://127.0.0.1:9/token",
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path, email, key.public_key().export_key().decode()


def create_key(client: kms_v1.KeyManagementServiceClient, key_ring: str) -> str:
    key = client.create_crypto_key(
        request={
            "parent": key_ring,
            "crypto_key_id": f"contract-{secrets.token_hex(4)}",
            "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT},
        }
    )
    return str(key.name)


def create_signing_key(
    client: kms_v1.KeyManagementServiceClient,
    key_ring: str,
    key_id: str,
    algorithm: str = "EC_SIGN_P256_SHA256",
) -> str:
    """An ASYMMETRIC_SIGN CryptoKey, as an administrator makes one for audit checkpoints."""
    key = client.create_crypto_key(
        request={
            "parent": key_ring,
            "crypto_key_id": key_id,
            "crypto_key": {
                "purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN,
                "version_template": {"algorithm": algorithm},
            },
        }
    )
    return str(key.name)


class Backend:
    name = "gcp"
    binds_context = True  # the context is the KMS-side additional_authenticated_data

    def __init__(self) -> None:
        self.server: FakeKMSServer = start_fake_kms()
        # Cloud KMS applies a new primary and a disabled version eventually: so does the fake.
        self.server.kms.propagation_delay = 1.0
        self._admin = rest_client(self.server.url)
        ring = self._admin.create_key_ring(
            request={"parent": LOCATION, "key_ring_id": "contract", "key_ring": {}}
        )
        self.key_ring = str(ring.name)

    def make(self) -> KeyManagementService:
        return GCPKMSProvider(rest_client(self.server.url), create_key(self._admin, self.key_ring))

    def failing(self, how: str) -> Callable[[], object] | None:
        dek = primitives.new_dek()
        key = create_key(self._admin, self.key_ring)
        # No retries, so that a throttled or unavailable call fails at once.
        provider = GCPKMSProvider(rest_client(self.server.url), key, retry=False)
        statuses = {
            "authentication": "UNAUTHENTICATED",
            "permission": "PERMISSION_DENIED",
            "throttled": "RESOURCE_EXHAUSTED",
        }
        if how in statuses:
            self.server.kms.inject(key, statuses[how])
        elif how == "not_found":
            provider = GCPKMSProvider(rest_client(self.server.url), key + "-missing", retry=False)
        elif how == "unavailable":
            closed = rest_client(f"http://127.0.0.1:{free_port()}")
            provider = GCPKMSProvider(closed, key, timeout=2.0, retry=False)
        else:
            return None
        return lambda: provider.wrap_many([dek], [{}])

    def close(self) -> None:
        self.server.stop()
