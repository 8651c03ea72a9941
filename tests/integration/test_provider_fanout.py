"""The providers' batch calls through the one fan-out (``overlap.fan_out``), against OpenBao."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import hvac
import pytest
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.errors import PermissionDeniedError
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from heimdall_kms.providers.vault.transit import _CONCURRENT_BATCHES, VaultTransitProvider
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao

CTX = {"table": "customers", "field": "ssn", "record": "r1"}
DECRYPT = f"POST /v1/transit/decrypt/{TRANSIT_KEY}"


@pytest.mark.vault
class TestVaultFanOut:
    def test_a_refused_batch_stops_the_batches_not_yet_sent(self, openbao: OpenBao) -> None:
        # 12 batches of 2; the token may encrypt but not decrypt, so every batch is refused.
        # The first refusal is raised and only the batches already in flight were sent (the
        # old pool went on sending: 5, 12, 10, 12 of the 12 in four runs).
        root = openbao.client()
        root.sys.create_or_update_policy(
            "fanout-encrypt-only",
            f'path "transit/encrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n',
        )
        token = root.auth.token.create(policies=["fanout-encrypt-only"], ttl="10m")["auth"][
            "client_token"
        ]
        writer = VaultTransitProvider(openbao.client(), TRANSIT_KEY, batch_size=2)
        wrapped = [w.ciphertext for w in writer.wrap_many([primitives.new_dek()] * 24, [CTX] * 24)]
        session = CountingSession()
        client = hvac.Client(url=openbao.addr, token=token, session=session)
        reader = VaultTransitProvider(client, TRANSIT_KEY, batch_size=2)

        with pytest.raises(PermissionDeniedError):
            reader.unwrap_many(wrapped, [CTX] * 24)

        sent = [line.split("?")[0] for line in session.sent].count(DECRYPT)
        assert 1 <= sent <= _CONCURRENT_BATCHES
        writer.close()
        reader.close()


@pytest.fixture(scope="module")
def gcp_server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms()
    yield fake
    fake.stop()


@pytest.fixture
def gcp_key(gcp_server: FakeKMSServer) -> str:
    admin: kms_v1.KeyManagementServiceClient = rest_client(gcp_server.url)
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "fanout", "key_ring": {}}
    )
    return create_key(admin, str(ring.name))


def _gcp_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("heimdall-gcp-kms")}


class TestGCPFanOut:
    def test_one_long_lived_pool_of_at_most_max_concurrency_threads_closed_by_close(
        self, gcp_server: FakeKMSServer, gcp_key: str
    ) -> None:
        kms = GCPKMSProvider(rest_client(gcp_server.url), gcp_key, max_concurrency=3)
        contexts = [{**CTX, "record": str(i)} for i in range(12)]
        deks = [primitives.new_dek() for _ in contexts]

        wrapped = kms.wrap_many(deks, contexts)
        first = _gcp_threads()
        assert kms.unwrap_many([w.ciphertext for w in wrapped], contexts) == deks

        assert 1 < len(first) <= 3
        assert _gcp_threads() == first  # the same threads, no pool per call
        kms.close()
        assert not _gcp_threads()
