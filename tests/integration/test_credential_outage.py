"""A metadata-server outage is transient, not "credentials refused" (issue 19 item 6).

Each SDK's own credential object fetches its token from a metadata endpoint on a local port
that nothing listens on: a real transport failure, with no client patched. The provider must
report ``KMSUnavailableError`` (retryable), the error of an outage, not ``AuthenticationError``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.identity import ManagedIdentityCredential
from azure.keyvault.keys import KeyClient

from heimdall_kms import primitives
from heimdall_kms.config import AWSSettings
from heimdall_kms.errors import AuthenticationError, KMSUnavailableError
from heimdall_kms.providers.aws.client import build_client, caller
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from tests.fakes.azure_kv_http import FakeKeyVaultServer, start_fake_key_vault
from tests.servers import free_port

# Run in a fresh interpreter: google-auth reads GCE_METADATA_HOST when it is first imported.
_GCP_ON_GCE = """
import json, sys
from google.api_core.client_options import ClientOptions
from google.auth import compute_engine
from google.cloud import kms_v1
from heimdall_kms import primitives
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.providers.gcp.provider import GCPKMSProvider

client = kms_v1.KeyManagementServiceClient(
    credentials=compute_engine.Credentials(),
    transport="rest",
    client_options=ClientOptions(api_endpoint=sys.argv[1]),
)
kms = GCPKMSProvider(client, "projects/p/locations/l/keyRings/r/cryptoKeys/k", timeout=5)
try:
    kms.wrap_many([primitives.new_dek()], [{}])
except HeimdallKMSError as exc:
    print(json.dumps({"type": type(exc).__name__, "retryable": exc.retryable}))
"""


class TestGCPMetadataServer:
    def test_an_unreachable_metadata_server_is_transient(self) -> None:
        dead = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_"))}
        env |= {"GCE_METADATA_HOST": f"127.0.0.1:{dead}", "GCE_METADATA_IP": f"127.0.0.1:{dead}"}
        result = subprocess.run(
            [sys.executable, "-c", _GCP_ON_GCE, f"http://127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome == {"type": "KMSUnavailableError", "retryable": True}


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeKeyVaultServer]:
    server = start_fake_key_vault()
    server.vault.create_key("pii")
    yield server
    server.stop()


class TestAzureManagedIdentity:
    def test_an_unreachable_imds_is_transient(
        self, vault: FakeKeyVaultServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{free_port()}")
        for name in ("AZURE_CLIENT_ID", "IDENTITY_ENDPOINT", "MSI_ENDPOINT"):
            monkeypatch.delenv(name, raising=False)
        credential = ManagedIdentityCredential()
        client = KeyClient(
            vault.url,
            credential,
            connection_verify=str(vault.ca_pem),
            verify_challenge_resource=False,
        )
        kms = AzureKeyVaultProvider(client, "pii", credential=credential)
        with pytest.raises(KMSUnavailableError) as caught:
            kms.wrap_many([primitives.new_dek()], [{}])
        assert not isinstance(caught.value, AuthenticationError)
        assert caught.value.retryable
        kms.close()


class TestAWSCredentialEndpoint:
    def test_an_unreachable_container_endpoint_is_transient(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        dead = free_port()
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{dead}/creds")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        settings = AWSSettings(region="eu-west-1", endpoint_url=f"http://127.0.0.1:{dead}")
        with pytest.raises(KMSUnavailableError) as caught:
            build_client(settings)
        assert caught.value.retryable

    def test_a_refresh_that_cannot_reach_the_endpoint_is_transient(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Credentials served once by a real container endpoint, about to expire; the endpoint
        then goes away, so the next call's mandatory refresh fails on the wire."""

        class Credentials(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                expires = datetime.now(UTC) + timedelta(minutes=5)  # inside botocore's 10 min
                body = json.dumps(
                    {
                        "AccessKeyId": "ASIAEXAMPLE",
                        "SecretAccessKey": "not-a-secret",
                        "Token": "not-a-token",
                        "Expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return None

        endpoint = ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
        thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
        thread.start()
        for name in list(os.environ):
            if name.startswith("AWS_"):
                monkeypatch.delenv(name)
        port = endpoint.server_address[1]
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{port}/c")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        client = build_client(
            AWSSettings(region="eu-west-1", endpoint_url=f"http://127.0.0.1:{free_port()}")
        )
        endpoint.shutdown()
        endpoint.server_close()
        with pytest.raises(KMSUnavailableError) as caught:
            caller(client)("ListKeys")
        assert "credential endpoint" in str(caught.value)
