"""The Vault Transit provider and the facade against a real OpenBao server."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import hvac
import pytest
import requests

import heimdall_kms
from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
)
from heimdall_kms.providers.base import HashKey
from heimdall_kms.providers.vault import transit
from heimdall_kms.providers.vault.http import VaultAdapter
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao, free_port

pytestmark = pytest.mark.vault

SSN = "123-45-6789"
CTX = {"table": "customers", "field": "ssn", "record": "r1"}


def counted_crypto(server: OpenBao, *, batch_size: int = 250) -> tuple[Crypto, CountingSession]:
    session = CountingSession()
    client = hvac.Client(url=server.addr, token=server.root_token, session=session)
    provider = VaultTransitProvider(client, TRANSIT_KEY, batch_size=batch_size)
    settings = Settings.from_env(server.env())
    return Crypto(settings, kms=provider, audit=MemoryAuditSink()), session


def test_round_trip_through_vault(openbao: OpenBao) -> None:
    sink = MemoryAuditSink()
    with heimdall_kms.from_env(openbao.env(), audit=sink) as c:
        envelope = c.encrypt(SSN, context=CTX)
        assert isinstance(envelope, KmsV1Envelope)
        assert envelope.provider == "vault"
        assert envelope.key_identifier == TRANSIT_KEY
        assert envelope.encrypted_dek.startswith(f"vault:v{envelope.key_version}:")
        text = c.decrypt(envelope.to_json(), actor="alice", reason="ticket-42", context=CTX)
    assert text == SSN
    assert [e.event_type.value for e in sink.events] == ["crypto.encrypt", "crypto.decrypt"]
    assert sink.events[1].reason == "ticket-42"
    assert sink.events[1].key_version == envelope.key_version


def test_batches_share_http_requests(openbao: OpenBao) -> None:
    c, session = counted_crypto(openbao, batch_size=250)
    items = [(f"value-{i}", {"field": "ssn", "record": str(i)}) for i in range(600)]
    envelopes = c.encrypt_many(items)
    encrypt_calls = [s for s in session.sent if "/transit/encrypt/" in s]
    assert len(encrypt_calls) == 3  # ceil(600 / 250), never 600
    session.sent.clear()
    texts = c.decrypt_many(envelopes, actor="etl", reason="enrichment")
    assert texts == [value for value, _ in items]
    assert len([s for s in session.sent if "/transit/decrypt/" in s]) == 3
    assert len(session.sent) == 3


def test_oversized_batch_is_split_when_openbao_refuses(openbao: OpenBao) -> None:
    # OpenBao refuses a JSON body with more than 1000 strings; 700 items exceed it.
    c, session = counted_crypto(openbao, batch_size=700)
    items = [(f"v{i}", {"record": str(i)}) for i in range(700)]
    envelopes = c.encrypt_many(items)
    assert c.decrypt_many(envelopes, actor="etl", reason="split") == [v for v, _ in items]
    assert 3 <= len([s for s in session.sent if "/transit/encrypt/" in s]) <= 4


def test_one_bad_item_does_not_lose_the_batch(openbao: OpenBao) -> None:
    c, _ = counted_crypto(openbao)
    envelopes = c.encrypt_many([(f"v{i}", {"record": str(i)}) for i in range(3)])
    doc = envelopes[1].to_dict()
    prefix, blob = doc["encrypted_dek"].rsplit(":", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    doc["encrypted_dek"] = f"{prefix}:{base64.b64encode(bytes(raw)).decode()}"
    outcomes = c.decrypt_outcomes(
        [envelopes[0], json.dumps(doc), envelopes[2]], actor="etl", reason="batch"
    )
    assert outcomes[0] == "v0" and outcomes[2] == "v2"
    assert isinstance(outcomes[1], IntegrityError)
    # hvac's own message for this 400 quotes the other items' plaintext DEKs; ours must not.
    assert outcomes[1].__cause__ is None
    for bad in outcomes[1:2]:
        assert "plaintext" not in str(bad) and "=" not in str(bad)


def test_moved_context_and_tampering_fail_with_integrity_error(openbao: OpenBao) -> None:
    with heimdall_kms.from_env(openbao.env(), audit=MemoryAuditSink()) as c:
        envelope = c.encrypt(SSN, context=CTX)
        moved = envelope.to_dict()
        moved["context"] = {**CTX, "record": "r2"}
        with pytest.raises(IntegrityError):
            c.decrypt(json.dumps(moved), actor="a", reason="r")
        with pytest.raises(IntegrityError):
            c.decrypt(envelope, actor="a", reason="r", context={"field": "email"})
        tampered = envelope.to_dict()
        ct = bytearray(envelope.ciphertext)
        ct[0] ^= 0x01
        tampered["ciphertext"] = base64.b64encode(bytes(ct)).decode()
        with pytest.raises(IntegrityError):
            c.decrypt(json.dumps(tampered), actor="a", reason="r")


def test_approle_login(openbao: OpenBao) -> None:
    root = openbao.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "heimdall-app",
        f'path "transit/encrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n'
        f'path "transit/decrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n',
    )
    root.auth.approle.create_or_update_approle("heimdall-app", token_policies=["heimdall-app"])
    role_id = root.auth.approle.read_role_id("heimdall-app")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("heimdall-app")["data"]["secret_id"]
    env = openbao.env(
        HMD_VAULT_AUTH_METHOD="approle",
        HMD_VAULT_ROLE_ID=role_id,
        HMD_VAULT_SECRET_ID=secret_id,
        HMD_VAULT_TOKEN="",
    )
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
        assert c.decrypt(c.encrypt(SSN, context=CTX), actor="a", reason="r") == SSN
    bad = {**env, "HMD_VAULT_SECRET_ID": "not-the-secret-id"}
    with pytest.raises(AuthenticationError) as caught:
        heimdall_kms.from_env(bad, audit=MemoryAuditSink())
    assert "not-the-secret-id" not in str(caught.value)


def test_token_without_decrypt_gets_typed_authentication_error(openbao: OpenBao) -> None:
    root = openbao.client()
    root.sys.create_or_update_policy(
        "encrypt-only", f'path "transit/encrypt/{TRANSIT_KEY}" {{ capabilities = ["update"] }}\n'
    )
    token = root.auth.token.create(policies=["encrypt-only"], ttl="10m")["auth"]["client_token"]
    with heimdall_kms.from_env(openbao.env(HMD_VAULT_TOKEN=token), audit=MemoryAuditSink()) as c:
        envelope = c.encrypt(SSN, context=CTX)
        with pytest.raises(AuthenticationError) as caught:
            c.decrypt(envelope, actor="a", reason="r")
    assert isinstance(caught.value, PermissionDeniedError)
    assert token not in str(caught.value)


def test_invalid_token_is_an_authentication_error(openbao: OpenBao) -> None:
    env = openbao.env(HMD_VAULT_TOKEN="s.not-a-real-token")
    with (
        heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c,
        pytest.raises(AuthenticationError) as caught,
    ):
        c.encrypt(SSN, context=CTX)
    assert "s.not-a-real-token" not in str(caught.value)


def test_missing_key_is_key_not_found(openbao: OpenBao) -> None:
    env = openbao.env(HMD_KMS_KEY_ID="no-such-key")
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c, pytest.raises(KeyNotFoundError):
        c.encrypt(SSN, context=CTX)


def test_unreachable_vault_is_unavailable() -> None:
    env = {
        "HMD_KMS_PROVIDER": "vault",
        "HMD_VAULT_ADDR": f"http://127.0.0.1:{free_port()}",
        "HMD_VAULT_TOKEN": "t",
        "HMD_VAULT_TIMEOUT": "2",
    }
    sink = MemoryAuditSink()
    with heimdall_kms.from_env(env, audit=sink) as c, pytest.raises(KMSUnavailableError):
        c.encrypt(SSN, context=CTX)
    assert sink.events[0].result.value == "failure"
    assert sink.events[0].error_type == "unavailable"


def test_sealed_vault_is_unavailable(fresh_openbao: OpenBao) -> None:
    with heimdall_kms.from_env(fresh_openbao.env(), audit=MemoryAuditSink()) as c:
        envelope = c.encrypt(SSN, context=CTX)
        fresh_openbao.client().sys.seal()
        with pytest.raises(KMSUnavailableError):
            c.decrypt(envelope, actor="a", reason="r")
        fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)
        assert c.decrypt(envelope, actor="a", reason="r") == SSN


def test_rotate_rewrap_retire_on_vault(fresh_openbao: OpenBao) -> None:
    provider = VaultTransitProvider.from_settings(Settings.from_env(fresh_openbao.env()))
    dek = primitives.new_dek()
    (old,) = provider.wrap_many([dek], [CTX])
    assert old.key_version == 1
    info = provider.rotate()
    assert info.latest_version == 2 and [v.version for v in info.versions] == [1, 2]
    assert all(v.created_at is not None for v in info.versions)
    (new,) = provider.rewrap_many([old.ciphertext], [CTX])
    assert not isinstance(new, HeimdallKMSError)
    assert new.key_version == 2 and new.ciphertext.startswith("vault:v2:")
    (same,) = provider.unwrap_many([new.ciphertext], [CTX])
    assert same == dek
    retired = provider.retire(2)
    assert retired.min_decryption_version == 2
    assert [v.version for v in retired.versions] == [2]
    outcomes = provider.unwrap_many([old.ciphertext, new.ciphertext], [CTX, CTX])
    assert isinstance(outcomes[0], KeyVersionRetiredError)
    assert outcomes[1] == dek
    provider.health()
    provider.close()


def test_custom_ca_over_tls() -> None:
    from tests.servers import start_openbao

    server = start_openbao(tls=True)
    try:
        with heimdall_kms.from_env(server.env(), audit=MemoryAuditSink()) as c:
            assert c.decrypt(c.encrypt(SSN, context=CTX), actor="a", reason="r") == SSN
        no_ca = server.env(HMD_VAULT_CACERT="")
        with (
            heimdall_kms.from_env(no_ca, audit=MemoryAuditSink()) as c,
            pytest.raises(KMSUnavailableError),
        ):
            c.encrypt(SSN, context=CTX)
    finally:
        server.stop()


def test_kubernetes_auth_without_token_file_is_a_configuration_error(openbao: OpenBao) -> None:
    env = openbao.env(
        HMD_VAULT_AUTH_METHOD="kubernetes",
        HMD_VAULT_K8S_ROLE="heimdall",
        HMD_VAULT_K8S_TOKEN_PATH="/nonexistent/token",
    )
    with pytest.raises(ConfigurationError, match="HMD_VAULT_K8S_TOKEN_PATH"):
        heimdall_kms.from_env(env, audit=MemoryAuditSink())


def test_envelope_is_parseable_and_records_the_version(openbao: OpenBao) -> None:
    with heimdall_kms.from_env(openbao.env(), audit=MemoryAuditSink()) as c:
        text = c.encrypt(SSN, context=CTX).to_json()
    envelope = parse(text)
    assert isinstance(envelope, KmsV1Envelope)
    assert envelope.encrypted_dek.startswith(f"vault:v{envelope.key_version}:")


def test_namespace(openbao: OpenBao) -> None:
    root = openbao.client()
    root.adapter.post("/v1/sys/namespaces/team-a")
    scoped = hvac.Client(url=openbao.addr, token=openbao.root_token, namespace="team-a")
    scoped.sys.enable_secrets_engine("transit", path="transit")
    scoped.secrets.transit.create_key("team-a-pii")
    env = openbao.env(HMD_KMS_KEY_ID="team-a-pii", HMD_VAULT_NAMESPACE="team-a")
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
        envelope = c.encrypt(SSN, context=CTX)
        assert c.decrypt(envelope, actor="a", reason="r") == SSN
    # The same key name outside the namespace does not exist.
    outside = openbao.env(HMD_KMS_KEY_ID="team-a-pii")
    with (
        heimdall_kms.from_env(outside, audit=MemoryAuditSink()) as c,
        pytest.raises(KeyNotFoundError),
    ):
        c.decrypt(envelope, actor="a", reason="r")


class TestTokenFile:
    """HMD_VAULT_TOKEN_FILE as a Vault Agent sink keeps it: a rewritten token is picked up."""

    @staticmethod
    def _token(server: OpenBao) -> str:
        created = server.client().auth.token.create(policies=["root"], ttl="10m")
        return str(created["auth"]["client_token"])

    @staticmethod
    def _sink(path: Path, token: str) -> None:
        # What Vault Agent's file sink does: write a temporary file, then rename it over.
        temporary = path.with_suffix(".tmp")
        temporary.write_text(token, encoding="utf-8")
        temporary.chmod(0o600)
        os.replace(temporary, path)

    def test_a_rewritten_token_is_used_after_the_old_one_is_revoked(
        self, openbao: OpenBao, tmp_path: Path
    ) -> None:
        path = tmp_path / "agent-token"
        old = self._token(openbao)
        self._sink(path, old + "\n")
        env = openbao.env(HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(path))
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            openbao.client().auth.token.revoke(old)
            new = self._token(openbao)
            self._sink(path, new + "\n")
            assert c.decrypt(envelope, actor="a", reason="r") == SSN
            assert c.decrypt(c.encrypt(SSN, context=CTX), actor="a", reason="r") == SSN

    def test_a_refused_token_makes_it_read_the_file_again(
        self, openbao: OpenBao, tmp_path: Path
    ) -> None:
        # Rewritten in place with the same size and mtime: only Vault's refusal can tell.
        path = tmp_path / "agent-token"
        old = self._token(openbao)
        self._sink(path, old)
        before = path.stat()
        env = openbao.env(HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(path))
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            openbao.client().auth.token.revoke(old)
            new = self._token(openbao)
            assert len(new) == len(old)
            path.write_text(new, encoding="utf-8")
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            assert c.decrypt(envelope, actor="a", reason="r") == SSN

    def test_a_revoked_token_not_replaced_is_refused(
        self, openbao: OpenBao, tmp_path: Path
    ) -> None:
        path = tmp_path / "agent-token"
        old = self._token(openbao)
        self._sink(path, old)
        env = openbao.env(HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(path))
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            openbao.client().auth.token.revoke(old)
            with pytest.raises(AuthenticationError) as caught:
                c.decrypt(envelope, actor="a", reason="r")
        assert old not in str(caught.value)

    def test_a_token_file_opened_to_others_later_is_refused(
        self, openbao: OpenBao, tmp_path: Path
    ) -> None:
        path = tmp_path / "agent-token"
        self._sink(path, self._token(openbao))
        env = openbao.env(HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(path))
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as c:
            c.encrypt(SSN, context=CTX)
            self._sink(path, self._token(openbao))
            path.chmod(0o644)
            with pytest.raises(ConfigurationError, match=r"^HMD_VAULT_TOKEN_FILE: "):
                c.encrypt(SSN, context=CTX)


class _NoSessionRequest(CountingSession):
    """Counts what reaches the transport; fails any use of ``Session.request``."""

    def request(self, *args: object, **kwargs: object) -> requests.Response:  # type: ignore[override]
        raise AssertionError("a Vault call went around VaultAdapter, through Session.request")


class TestOneHTTPPath:
    """hvac's calls and the batch requests alike go through VaultAdapter (vault_http)."""

    def test_every_call_goes_through_the_adapter(self, fresh_openbao: OpenBao) -> None:
        session = _NoSessionRequest()
        client = hvac.Client(
            url=fresh_openbao.addr, token=fresh_openbao.root_token, session=session
        )
        provider = VaultTransitProvider(client, TRANSIT_KEY, batch_size=2)
        assert isinstance(provider._client.adapter, VaultAdapter)
        dek = primitives.new_dek()
        wrapped = provider.wrap_many([dek] * 3, [CTX] * 3)  # key check (hvac) + 2 batches
        assert provider.unwrap_many([w.ciphertext for w in wrapped], [CTX] * 3) == [dek] * 3
        provider.hmac_many([b"x"], HashKey(f"{TRANSIT_KEY}-hmac", 1))
        assert provider.rotate().latest_version == 2  # hvac's rotate_key and read_key
        provider.health()
        paths = [sent.split("?")[0] for sent in session.sent]
        assert f"GET /v1/transit/keys/{TRANSIT_KEY}" in paths
        assert f"POST /v1/transit/keys/{TRANSIT_KEY}/rotate" in paths
        assert paths.count(f"POST /v1/transit/encrypt/{TRANSIT_KEY}") >= 2
        assert session.statuses and all(status < 300 for status in session.statuses)

    def test_hvac_errors_carry_retry_after_on_the_hvac_path_too(
        self, fresh_openbao: OpenBao
    ) -> None:
        root = fresh_openbao.client()
        root.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": True})
        root.write_data(
            "sys/quotas/rate-limit/tight",
            data={"path": "transit/", "rate": 1, "interval": "10s"},
        )
        client = hvac.Client(url=fresh_openbao.addr, token=fresh_openbao.root_token)
        provider = VaultTransitProvider(client, TRANSIT_KEY)
        provider.describe()  # hvac's read_key, not the batch path: the quota's one call
        with pytest.raises(RateLimitedError) as caught:
            provider.describe()
        assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= 10


class TestSignerToken:
    """The audit checkpoint signer (it lives as long as `serve`) follows a token file too."""

    def test_the_signer_uses_the_rewritten_token_after_the_old_one_is_revoked(
        self, openbao: OpenBao, tmp_path: Path
    ) -> None:
        from heimdall_kms.audit.signers import signer_from_settings

        name = "signer-token-audit"
        root = openbao.client()
        root.secrets.transit.create_key(name, key_type="ed25519")
        path = tmp_path / "agent-token"
        old = TestTokenFile._token(openbao)
        TestTokenFile._sink(path, old)
        env = openbao.env(
            HMD_VAULT_TOKEN="", HMD_VAULT_TOKEN_FILE=str(path), HMD_AUDIT_SIGNING_KEY=name
        )
        signer = signer_from_settings(Settings.from_env(env))
        assert signer is not None
        first = signer.sign(b"checkpoint 1")
        root.auth.token.revoke(old)
        TestTokenFile._sink(path, TestTokenFile._token(openbao))
        second = signer.sign(b"checkpoint 2")
        assert signer.verify_many([(b"checkpoint 1", first), (b"checkpoint 2", second)]) == [
            True,
            True,
        ]


class TestBatchBody:
    """The batch_input body is put together directly; it is the JSON the encoder writes."""

    @pytest.mark.parametrize(
        ("member", "items"),
        [
            ("plaintext", [base64.b64encode(os.urandom(32)).decode() for _ in range(3)]),
            ("ciphertext", ["vault:v1:QUJD", "vault:v12:ZGVm+/=="]),
            ("ciphertext", ["vault:v1:QUJD"]),
            ("ciphertext", ['vault:v1:"quoted"', "tab\there", "é"]),  # not as-is: encoded
            ("plaintext", []),
        ],
    )
    def test_it_reads_back_as_the_items(self, member: str, items: list[str]) -> None:
        body = transit._batch_json(member, items)
        assert json.loads(body) == {"batch_input": [{member: item} for item in items]}

    def test_a_batch_still_round_trips_through_openbao(self, openbao: OpenBao) -> None:
        kms = VaultTransitProvider(openbao.client(), TRANSIT_KEY, batch_size=7)
        deks = primitives.new_deks(20)
        wrapped = kms.wrap_many(deks, [{}] * 20)
        assert kms.unwrap_many([w.ciphertext for w in wrapped], [{}] * 20) == deks
