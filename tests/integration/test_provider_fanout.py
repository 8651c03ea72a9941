"""The providers' batch calls through the one fan-out (``overlap.fan_out``), against OpenBao."""

from __future__ import annotations

import hvac
import pytest

from heimdall_kms import crypto
from heimdall_kms.errors import PermissionDeniedError
from heimdall_kms.providers.vault import _CONCURRENT_BATCHES, VaultTransitProvider
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao

pytestmark = pytest.mark.vault

CTX = {"table": "customers", "field": "ssn", "record": "r1"}
DECRYPT = f"POST /v1/transit/decrypt/{TRANSIT_KEY}"


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
        wrapped = [w.ciphertext for w in writer.wrap_many([crypto.new_dek()] * 24, [CTX] * 24)]
        session = CountingSession()
        client = hvac.Client(url=openbao.addr, token=token, session=session)
        reader = VaultTransitProvider(client, TRANSIT_KEY, batch_size=2)

        with pytest.raises(PermissionDeniedError):
            reader.unwrap_many(wrapped, [CTX] * 24)

        sent = [line.split("?")[0] for line in session.sent].count(DECRYPT)
        assert 1 <= sent <= _CONCURRENT_BATCHES
        writer.close()
        reader.close()
