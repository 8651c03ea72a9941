"""The wait AWS, GCP and Azure ask for when they throttle is read onto the typed error.

AWS through botocore's Stubber on a real client (moto never throttles): a
``ThrottlingException`` whose answer carries ``Retry-After``. GCP and Azure through their wire
fakes, which answer 429 on demand: Cloud KMS's ``google.rpc.RetryInfo`` over REST and gRPC,
Key Vault's ``Retry-After`` and ``x-ms-retry-after-ms``. The fakes' own 429s are checked on
the wire first, so the provider tests rest on a behaviour that is itself tested.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.errors import KMSUnavailableError, RateLimitedError
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from heimdall_kms.providers.retry_after import from_headers
from tests.contract.backends.azure import ADMIN, key_client
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.azure_kv_http import CRYPTO_OFFICER, FakeKeyVaultServer, start_fake_key_vault
from tests.fakes.gcp_kms_http import RETRY_INFO_TYPE, FakeKMSServer, start_fake_kms

ALIAS = "alias/heimdall-pii"


@pytest.fixture(scope="module")
def gcp() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms(grpc=True)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gcp_key(gcp: FakeKMSServer) -> str:
    admin = rest_client(gcp.url)
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "retry-after", "key_ring": {}}
    )
    return create_key(admin, str(ring.name))


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeKeyVaultServer]:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.create_key("throttled")
    yield fake
    fake.stop()


def _post(url: str, body: dict[str, Any], context: ssl.SSLContext | None = None) -> Any:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    return urllib.request.urlopen(request, timeout=10, context=context)


class TestTheFakesThrottle:
    def test_gcp_answers_429_with_retry_info_then_serves_again(
        self, gcp: FakeKMSServer, gcp_key: str
    ) -> None:
        gcp.kms.inject(gcp_key, "RESOURCE_EXHAUSTED", times=1, retry_delay=2.5)
        body = {"plaintext": "AAAA"}
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(f"{gcp.url}/v1/{gcp_key}:encrypt", body)
        assert refused.value.code == 429
        error = json.loads(refused.value.read())["error"]
        assert error["status"] == "RESOURCE_EXHAUSTED"
        assert error["details"] == [{"@type": RETRY_INFO_TYPE, "retryDelay": "2.5s"}]
        with _post(f"{gcp.url}/v1/{gcp_key}:encrypt", body) as served:  # times=1: once only
            assert served.status == 200

    def test_azure_answers_429_with_both_retry_headers(self, azure: FakeKeyVaultServer) -> None:
        azure.vault.inject("throttled", 429, times=1)
        azure.vault.retry_after, azure.vault.retry_after_ms = "3", "1500"
        context = ssl.create_default_context(cafile=str(azure.ca_pem))
        token = azure.vault.issue_token(ADMIN[0])
        request = urllib.request.Request(
            f"{azure.url}/keys/throttled?api-version=7.4",
            headers={"Authorization": f"Bearer {token}"},
        )
        try:
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10, context=context)
            assert refused.value.code == 429
            assert refused.value.headers["Retry-After"] == "3"
            assert refused.value.headers["x-ms-retry-after-ms"] == "1500"
            assert json.loads(refused.value.read())["error"]["code"] == "Throttled"
            with urllib.request.urlopen(request, timeout=10, context=context) as served:
                assert served.status == 200
        finally:
            azure.vault.retry_after, azure.vault.retry_after_ms = "1", None


class TestHeaders:
    @pytest.mark.parametrize(
        ("headers", "seconds"),
        [
            ({"retry-after": "7"}, 7.0),
            ({"retry-after-ms": "250", "retry-after": "7"}, 0.25),
            ({"x-ms-retry-after-ms": "1200"}, 1.2),
            ({"x-ms-retry-after-ms": "soon", "retry-after": "2"}, 2.0),
            ({"retry-after": "-5"}, 0.0),
            ({}, None),
        ],
    )
    def test_milliseconds_win_over_seconds(
        self, headers: dict[str, str], seconds: float | None
    ) -> None:
        assert from_headers(headers.get) == seconds


def _stubbed_aws(code: str, status: int, headers: dict[str, str]) -> AWSKMSProvider:
    client = boto3.client(
        "kms",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    stubber = Stubber(client)
    stubber.add_client_error(
        "encrypt",
        service_error_code=code,
        http_status_code=status,
        response_meta={"HTTPHeaders": headers},
    )
    stubber.activate()
    return AWSKMSProvider(client, ALIAS, versioning=AWSKeyVersioning.ALIASES)


class TestAWS:
    def test_throttling_exception_carries_retry_after(self) -> None:
        kms = _stubbed_aws("ThrottlingException", 400, {"retry-after": "4"})
        with pytest.raises(RateLimitedError, match="ThrottlingException") as caught:
            kms.wrap_many([primitives.new_dek()], [{}])
        assert caught.value.retry_after == 4.0

    def test_without_the_header_there_is_no_wait_to_honour(self) -> None:
        kms = _stubbed_aws("ThrottlingException", 400, {})
        with pytest.raises(RateLimitedError) as caught:
            kms.wrap_many([primitives.new_dek()], [{}])
        assert caught.value.retry_after is None

    def test_an_unavailable_answer_carries_it_too(self) -> None:
        kms = _stubbed_aws("ServiceUnavailableException", 503, {"Retry-After": "2"})
        with pytest.raises(KMSUnavailableError) as caught:
            kms.wrap_many([primitives.new_dek()], [{}])
        assert caught.value.retry_after == 2.0


class TestGCP:
    @pytest.mark.parametrize("transport", ["rest", "grpc"])
    def test_resource_exhausted_carries_the_retry_info_delay(
        self, gcp: FakeKMSServer, gcp_key: str, transport: str
    ) -> None:
        client = rest_client(gcp.url) if transport == "rest" else _grpc_client(gcp)
        kms = GCPKMSProvider(client, gcp_key)  # the SDK's retries on, as configured
        gcp.kms.inject(gcp_key, "RESOURCE_EXHAUSTED", times=1, retry_delay=1.5)
        before = gcp.kms.calls["encrypt"]
        try:
            with pytest.raises(RateLimitedError, match="RESOURCE_EXHAUSTED") as caught:
                kms.wrap_many([primitives.new_dek()], [{}])
            assert caught.value.retry_after == 1.5
            # Not retried by the SDK: the caller decides (online fails fast, a job waits).
            assert gcp.kms.calls["encrypt"] == before + 1
            assert len(kms.wrap_many([primitives.new_dek()], [{}])) == 1
        finally:
            gcp.kms.clear(gcp_key)
            kms.close()


def _grpc_client(gcp: FakeKMSServer) -> kms_v1.KeyManagementServiceClient:
    from heimdall_kms.config import GCPSettings, GCPTransport
    from heimdall_kms.providers.gcp.client import build_client

    return build_client(
        GCPSettings(endpoint=gcp.grpc_url, transport=GCPTransport.GRPC, anonymous=True)
    )


class TestAzure:
    @pytest.mark.parametrize(
        ("retry_after", "retry_after_ms", "seconds"), [("2", None, 2.0), ("2", "800", 0.8)]
    )
    def test_a_429_carries_key_vaults_wait(
        self,
        azure: FakeKeyVaultServer,
        retry_after: str,
        retry_after_ms: str | None,
        seconds: float,
    ) -> None:
        # retry_total=0: what is left once azure-core's own retries (which wait the same
        # headers out) are spent.
        kms = AzureKeyVaultProvider(key_client(azure, retry_total=0), "throttled")
        azure.vault.inject("throttled", 429, times=1)
        azure.vault.retry_after, azure.vault.retry_after_ms = retry_after, retry_after_ms
        try:
            with pytest.raises(RateLimitedError, match="HTTP 429") as caught:
                kms.wrap_many([primitives.new_dek()], [{}])
            assert caught.value.retry_after == seconds
        finally:
            azure.vault.retry_after, azure.vault.retry_after_ms = "1", None
            azure.vault.clear("throttled")
            kms.close()
