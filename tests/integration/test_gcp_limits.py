"""Cloud KMS HSM keys take at most 8 KiB of plaintext and AAD together (issue 19 item 6).

The provider sends the value's context as ``additional_authenticated_data``; a context that
heimdall's own limits allow can exceed 8 KiB, which an HSM key would refuse only at the KMS.
It is refused here, before any request, with an error that says why.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from heimdall_kms import primitives
from heimdall_kms.errors import InvalidInputError
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms()
    yield fake
    fake.stop()


@pytest.fixture
def kms(server: FakeKMSServer) -> Iterator[GCPKMSProvider]:
    admin = rest_client(server.url)
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": f"limits-{id(admin)}", "key_ring": {}}
    )
    provider = GCPKMSProvider(rest_client(server.url), create_key(admin, str(ring.name)))
    yield provider
    provider.close()


def context_of(entries: int) -> dict[str, str]:
    return {f"k{i:02d}": "v" * 1000 for i in range(entries)}


class TestHSMInputLimit:
    def test_a_context_over_8_kib_is_refused_before_any_request(
        self, server: FakeKMSServer, kms: GCPKMSProvider
    ) -> None:
        before = server.kms.calls["encrypt"]
        dek = primitives.new_dek()
        with pytest.raises(InvalidInputError, match=r"8192 bytes of plaintext and AAD"):
            kms.wrap_many([dek], [context_of(9)])
        assert server.kms.calls["encrypt"] == before

    def test_a_context_under_8_kib_wraps_and_unwraps(self, kms: GCPKMSProvider) -> None:
        context = context_of(7)
        dek = primitives.new_dek()
        (wrapped,) = kms.wrap_many([dek], [context])
        assert kms.unwrap_many([wrapped.ciphertext], [context]) == [dek]
