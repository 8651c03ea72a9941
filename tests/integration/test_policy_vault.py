"""The policy engine through a live OpenBao: Transit HMAC in batches, protect/reveal."""

from __future__ import annotations

import hvac
import pytest

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.policy import PolicyEngine, parse_policy
from heimdall_kms.providers.vault import VaultTransitProvider
from heimdall_kms.service import Crypto
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao

pytestmark = pytest.mark.vault

POLICY = parse_policy(
    {"rules": {"email": "hmac", "ssn": "encrypt", "pw": "scrub"}, "record_id": "id"}
)


def engine(server: OpenBao) -> tuple[PolicyEngine, CountingSession]:
    session = CountingSession()
    client = hvac.Client(url=server.addr, token=server.root_token, session=session)
    crypto = Crypto(
        Settings.from_env(server.env()),
        kms=VaultTransitProvider(client, TRANSIT_KEY),
        audit=MemoryAuditSink(),
    )
    return PolicyEngine(crypto, POLICY), session


def test_keyed_hash_and_encryption_share_calls_across_a_batch(fresh_openbao: OpenBao) -> None:
    policy_engine, session = engine(fresh_openbao)
    records = [
        {"id": i, "email": f"u{i % 10}@x.io", "ssn": f"{i:09d}", "pw": "x"} for i in range(200)
    ]
    out = policy_engine.protect_many(records)
    hmac_calls = [s for s in session.sent if "/transit/hmac/" in s]
    encrypt_calls = [s for s in session.sent if "/transit/encrypt/" in s]
    assert len(hmac_calls) == 1  # 200 keyed hashes, one Vault call
    assert len(encrypt_calls) == 1  # 200 DEKs, one Vault call
    assert all(r["email"].startswith("hmac:vault:v1:") for r in out)
    assert out[0]["email"] == out[10]["email"]  # same value, same key: searchable
    assert out[0]["email"] != out[1]["email"]
    back = policy_engine.reveal_outcomes(out, actor="analyst", reason="INC-1")
    assert [r["ssn"] for r in back] == [r["ssn"] for r in records]  # type: ignore[index]
    fresh_openbao.client().secrets.transit.rotate_key(TRANSIT_KEY)
    again = policy_engine.protect({"email": "u0@x.io"})["email"]
    assert again.startswith("hmac:vault:v2:")  # a rotated key is told apart by its version


def test_hmac_key_never_leaves_vault(openbao: OpenBao) -> None:
    policy_engine, _ = engine(openbao)
    tag = policy_engine.protect({"email": "a@b.c"})["email"]
    verify = openbao.client().secrets.transit.verify_signed_data  # noqa: F841 - documented API
    answer = openbao.client().adapter.post(
        f"/v1/transit/verify/{TRANSIT_KEY}/sha2-256",
        json={"input": "YUBiLmM=", "hmac": tag.removeprefix("hmac:")},
    )
    assert answer["data"]["valid"] is True  # Vault itself recognises its own HMAC
