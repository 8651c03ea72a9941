"""The policy engine through a live OpenBao: Transit HMAC in batches, protect/reveal."""

from __future__ import annotations

import hvac
import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.policy import PolicyEngine, parse_policy
from heimdall_kms.providers.vault.transit import VaultTransitProvider
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
    client = fresh_openbao.client()
    client.secrets.transit.rotate_key(TRANSIT_KEY)
    client.secrets.transit.rotate_key(TRANSIT_KEY)
    client.secrets.transit.update_key_configuration(TRANSIT_KEY, min_decryption_version=3)
    again = policy_engine.protect({"email": "u0@x.io"})["email"]
    # A search index: rotating and retiring the encryption key never changes a tag.
    assert again == out[0]["email"]


def test_hmac_key_never_leaves_vault(openbao: OpenBao) -> None:
    policy_engine, _ = engine(openbao)
    tag = policy_engine.protect({"email": "a@b.c"})["email"]
    verify = openbao.client().secrets.transit.verify_signed_data  # noqa: F841 - documented API
    answer = openbao.client().adapter.post(
        f"/v1/transit/verify/{TRANSIT_KEY}-hmac/sha2-256",
        json={"input": "YUBiLmM=", "hmac": tag.removeprefix("hmac:")},
    )
    assert answer["data"]["valid"] is True  # Vault itself recognises its own HMAC


class TestReindex:
    """Rotating the hashing key itself: a re-index with a window where old and new tags match."""

    @staticmethod
    def crypto(server: OpenBao, **overrides: str) -> Crypto:
        return heimdall_kms.from_env(server.env(**overrides), audit=MemoryAuditSink())

    def test_rotating_the_hashing_key_is_a_reindex_with_a_window(
        self, fresh_openbao: OpenBao
    ) -> None:
        emails = [f"user{i}@example.com" for i in range(20)]
        with self.crypto(fresh_openbao) as crypto:
            index = dict(zip(crypto.hmac_many(emails), emails, strict=True))  # tag -> row
        # 1. Rotate the hashing key in the KMS: nothing changes until the pin moves.
        fresh_openbao.client().secrets.transit.rotate_key(f"{TRANSIT_KEY}-hmac")
        with self.crypto(fresh_openbao) as crypto:
            assert set(crypto.hmac_many(emails)) == set(index)
        # 2. The window: new tags under v2, lookups match the v1 tags still stored too.
        window = {"HMD_HMAC_KEY_VERSION": "2", "HMD_HMAC_PREVIOUS_VERSION": "1"}
        with self.crypto(fresh_openbao, **window) as crypto:
            for email, tags in zip(emails, crypto.hmac_lookup(emails), strict=True):
                assert tags[0].startswith("hmac:vault:v2:")
                assert [index.get(tag) for tag in tags] == [None, email]
            # 3. Re-index: each row's tag recomputed from its plaintext (here the source list;
            #    in Heimdall the encrypted copy of the field, decrypted by the re-index job).
            index = dict(zip(crypto.hmac_many(emails), emails, strict=True))
            for email, tags in zip(emails, crypto.hmac_lookup(emails), strict=True):
                assert [index.get(tag) for tag in tags] == [email, None]
        # 4. After the re-index: only the new version, and every row is found.
        with self.crypto(fresh_openbao, HMD_HMAC_KEY_VERSION="2") as crypto:
            found = [index.get(tags[0]) for tags in crypto.hmac_lookup(emails)]
            assert found == emails
            # A rotation of the encryption key changes nothing.
            fresh_openbao.client().secrets.transit.rotate_key(TRANSIT_KEY)
            assert [index.get(tags[0]) for tags in crypto.hmac_lookup(emails)] == emails
