"""The GCP Cloud KMS provider, the facade and the installed command against the wire-level fake.

The official google-cloud-kms client talks to ``tests/fakes/gcp_kms_http.py`` unmodified, over
REST and over gRPC; the fake does real AES-256-GCM and CRC32C, so what is checked here is what
the bytes on the wire do, not what a mock was told to return.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1

import heimdall_kms
from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import GCPSettings, GCPTransport, Settings
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KMSError,
    KMSUnavailableError,
    PermissionDeniedError,
)
from heimdall_kms.providers import WrappedKey
from heimdall_kms.providers.gcp.client import build_client
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from heimdall_kms.service import Crypto
from tests.contract.backends.gcp import LOCATION, create_key, rest_client, service_account
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.integration.clouds import gcp_env
from tests.servers import free_port

SSN = "123-45-6789"
CTX = {"table": "customers", "field": "ssn", "record": "r1"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms(grpc=True)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def admin(server: FakeKMSServer) -> kms_v1.KeyManagementServiceClient:
    return rest_client(server.url)


@pytest.fixture(scope="module")
def key_ring(admin: kms_v1.KeyManagementServiceClient) -> str:
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "integration", "key_ring": {}}
    )
    return str(ring.name)


@pytest.fixture
def key(admin: kms_v1.KeyManagementServiceClient, key_ring: str) -> str:
    return create_key(admin, key_ring)


def provider(server: FakeKMSServer, key: str, **options: object) -> GCPKMSProvider:
    return GCPKMSProvider(rest_client(server.url), key, **options)  # type: ignore[arg-type]


def wrap(kms: GCPKMSProvider, count: int) -> tuple[list[bytearray], list[WrappedKey]]:
    deks = [primitives.new_dek() for _ in range(count)]
    return deks, kms.wrap_many(deks, [{**CTX, "record": str(i)} for i in range(count)])


# -- the facade over both transports ------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_round_trip_through_the_facade(server: FakeKMSServer, key: str, transport: str) -> None:
    sink = MemoryAuditSink()
    with heimdall_kms.from_env(gcp_env(server, key, transport), audit=sink) as c:
        envelope = c.encrypt(SSN, context=CTX)
        assert isinstance(envelope, KmsV1Envelope)
        assert envelope.provider == "gcp"
        assert envelope.key_identifier == key
        assert envelope.key_version == 1
        assert envelope.encrypted_dek.startswith("gcp:v1:")
        assert c.decrypt(envelope.to_json(), actor="alice", reason="t-1", context=CTX) == SSN
        with pytest.raises(IntegrityError):
            c.decrypt(envelope, actor="alice", reason="t-1", context={"record": "r2"})
        many = c.encrypt_many([(f"v{i}", {**CTX, "record": str(i)}) for i in range(30)])
        assert c.decrypt_many(many, actor="etl", reason="batch") == [f"v{i}" for i in range(30)]
    assert [e.event_type.value for e in sink.events][:2] == ["crypto.encrypt", "crypto.decrypt"]


def test_from_settings_reads_the_hmd_gcp_variables(server: FakeKMSServer, key: str) -> None:
    settings = Settings.from_env(
        gcp_env(server, key, HMD_GCP_MAX_CONCURRENCY="3", HMD_GCP_TIMEOUT="7.5")
    )
    assert settings.gcp is not None
    assert settings.gcp.endpoint == server.url
    assert (settings.gcp.transport, settings.gcp.anonymous) == ("rest", True)
    assert (settings.gcp.max_concurrency, settings.gcp.timeout_seconds) == (3, 7.5)
    kms = GCPKMSProvider.from_settings(settings)
    server.kms.latency = 0.01
    try:
        deks, wrapped = wrap(kms, 12)
    finally:
        server.kms.latency = 0.0
    assert (
        kms.unwrap_many(
            [w.ciphertext for w in wrapped], [{**CTX, "record": str(i)} for i in range(12)]
        )
        == deks
    )
    kms.close()


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"HMD_KMS_KEY_ID": "my-key"}, "HMD_KMS_KEY_ID"),
        ({"HMD_KMS_KEY_ID": "projects/p/locations/l/keyRings/r"}, "HMD_KMS_KEY_ID"),
        ({"HMD_GCP_TRANSPORT": "http3"}, "HMD_GCP_TRANSPORT"),
        ({"HMD_GCP_CREDENTIALS": "default"}, "HMD_GCP_KMS_ENDPOINT"),  # plain http + real creds
        ({"HMD_GCP_MAX_CONCURRENCY": "0"}, "HMD_GCP_MAX_CONCURRENCY"),
    ],
)
def test_bad_settings_fail_naming_the_variable(
    server: FakeKMSServer, key: str, overrides: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        GCPKMSProvider.from_settings(Settings.from_env({**gcp_env(server, key), **overrides}))
    assert str(caught.value).startswith(variable)


def test_missing_application_default_credentials_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A credentials file that does not exist makes google.auth.default() fail at once, without
    # probing the GCE metadata server.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    settings = Settings.from_env(
        {
            "HMD_KMS_PROVIDER": "gcp",
            "HMD_KMS_KEY_ID": "projects/p/locations/l/keyRings/r/cryptoKeys/k",
            "HMD_GCP_TRANSPORT": "rest",
        }
    )
    assert settings.gcp is not None
    with pytest.raises(ConfigurationError) as caught:
        build_client(settings.gcp)
    assert str(caught.value).startswith("GOOGLE_APPLICATION_CREDENTIALS")


# -- integrity: CRC32C and AAD ------------------------------------------------------------------


def test_crc32c_rejects_a_corrupted_encrypt_response(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    before = server.kms.calls["encrypt"]
    server.kms.corrupt(key, times=1)
    deks, (wrapped,) = wrap(kms, 1)  # one bad answer: refused, asked again, good answer kept
    assert server.kms.calls["encrypt"] - before == 2
    assert kms.unwrap_many([wrapped.ciphertext], [{**CTX, "record": "0"}]) == deks
    server.kms.corrupt(key, times=100)
    with pytest.raises(KMSError, match="CRC32C") as caught:
        wrap(kms, 1)
    assert not isinstance(caught.value, KMSUnavailableError | IntegrityError)
    server.kms.clear(key)


def test_crc32c_rejects_a_corrupted_decrypt_response(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    deks, wrapped = wrap(kms, 3)
    contexts = [{**CTX, "record": str(i)} for i in range(3)]
    server.kms.corrupt(key, times=100)
    outcomes = kms.unwrap_many([w.ciphertext for w in wrapped], contexts)
    server.kms.clear(key)
    # A flipped plaintext byte would be a wrong DEK; the checksum catches it before any use.
    assert all(isinstance(o, KMSError) and "CRC32C" in str(o) for o in outcomes)
    assert kms.unwrap_many([w.ciphertext for w in wrapped], contexts) == deks


def test_unconfirmed_request_checksums_are_refused(server: FakeKMSServer, key: str) -> None:
    server.kms.unverified(key)
    with pytest.raises(KMSError, match="did not confirm"):
        wrap(provider(server, key), 1)
    server.kms.clear(key)


def test_the_kms_itself_binds_the_context(
    server: FakeKMSServer, key: str, admin: kms_v1.KeyManagementServiceClient, key_ring: str
) -> None:
    kms = provider(server, key)
    deks, (wrapped,) = wrap(kms, 1)
    ciphertext = base64.b64decode(wrapped.ciphertext.split(":", 2)[2])
    # The raw Cloud KMS call refuses without the AAD, and with another record's.
    for aad in (b"", b'{"ctx":{"field":"ssn","record":"1","table":"customers"},"purpose":"x"}'):
        with pytest.raises(api_exceptions.BadRequest):
            admin.decrypt(
                request={
                    "name": key,
                    "ciphertext": ciphertext,
                    "additional_authenticated_data": aad,
                }
            )
    canonical = json.dumps(
        {"ctx": {**CTX, "record": "0"}, "purpose": "heimdall-kms/dek"},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    answer = admin.decrypt(
        request={"name": key, "ciphertext": ciphertext, "additional_authenticated_data": canonical}
    )
    assert answer.plaintext == bytes(deks[0])
    (moved,) = kms.unwrap_many([wrapped.ciphertext], [{**CTX, "record": "1"}])
    assert isinstance(moved, IntegrityError)
    other = provider(server, create_key(admin, key_ring))
    (elsewhere,) = other.unwrap_many([wrapped.ciphertext], [{**CTX, "record": "0"}])
    assert isinstance(elsewhere, IntegrityError)  # another CryptoKey cannot open it


# -- concurrency and failures -------------------------------------------------------------------


def test_order_is_kept_under_concurrency_with_failures_in_place(
    server: FakeKMSServer, key: str
) -> None:
    kms = provider(server, key, max_concurrency=6)
    count = 120
    contexts = [{**CTX, "record": str(i)} for i in range(count)]
    server.kms.latency = 0.004
    server.kms.max_in_flight = 0
    try:
        deks = [primitives.new_dek() for _ in range(count)]
        wrapped = kms.wrap_many(deks, contexts)
        texts = [w.ciphertext for w in wrapped]
        bad = {7: "gcp:v1:AAAA", 50: "not-a-gcp-ciphertext", 99: texts[98]}
        for position, text in bad.items():
            texts[position] = text
        outcomes = kms.unwrap_many(texts, contexts)
    finally:
        server.kms.latency = 0.0
    assert 1 < server.kms.max_in_flight <= 6
    for i, outcome in enumerate(outcomes):
        if i in bad:
            assert isinstance(outcome, IntegrityError), i
        else:
            assert outcome == deks[i], i


def test_a_whole_call_failure_mid_batch_is_raised(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key, retry=False)
    _, wrapped = wrap(kms, 20)
    server.kms.inject(key, "PERMISSION_DENIED", after=5)
    with pytest.raises(PermissionDeniedError) as caught:
        kms.unwrap_many(
            [w.ciphertext for w in wrapped], [{**CTX, "record": str(i)} for i in range(20)]
        )
    server.kms.clear(key)
    assert caught.value.__cause__ is None
    assert "http" not in str(caught.value)  # no URL, no server text: the status code only


def test_unavailable_is_retried_then_reported(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key, timeout=10.0)
    before = server.kms.calls["encrypt"]
    server.kms.inject(key, "UNAVAILABLE", times=2)
    wrap(kms, 1)  # two 503s, then an answer: three requests received
    assert server.kms.calls["encrypt"] - before == 3
    closed = GCPKMSProvider(rest_client(f"http://127.0.0.1:{free_port()}"), key, timeout=0.5)
    with pytest.raises(KMSUnavailableError):
        wrap(closed, 1)


# -- key lifecycle ------------------------------------------------------------------------------


def test_rotate_waits_for_pending_generation(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    server.kms.pending_generation = True
    try:
        info = kms.rotate()
    finally:
        server.kms.pending_generation = False
    assert info.latest_version == 2
    assert [v.version for v in info.versions] == [1, 2]


def test_gcp_scheduled_rotation_is_followed(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    deks, old = wrap(kms, 2)
    server.kms.scheduled_rotation(key)  # Cloud KMS's own rotation schedule fired
    info = kms.describe()
    assert info.latest_version == 2
    _, new = wrap(kms, 1)
    assert new[0].key_version == 2
    contexts = [{**CTX, "record": str(i)} for i in range(2)]
    rewrapped = kms.rewrap_many([w.ciphertext for w in old], contexts)
    assert [r.key_version for r in rewrapped if isinstance(r, WrappedKey)] == [2, 2]
    assert (
        kms.unwrap_many([r.ciphertext for r in rewrapped if isinstance(r, WrappedKey)], contexts)
        == deks
    )


def test_retire_disables_the_versions_below(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    kms.rotate()
    kms.rotate()
    with pytest.raises(InvalidInputError):
        kms.retire(0)
    with pytest.raises(InvalidInputError):
        kms.retire(4)
    info = kms.retire(3)
    assert (info.min_decryption_version, info.latest_version) == (3, 3)
    states = [server.kms.version_state(key, n) for n in (1, 2, 3)]
    assert states == ["DISABLED", "DISABLED", "ENABLED"]
    assert kms.retire(2).min_decryption_version == 3  # never re-enables anything


# -- health (the key's whole life through the command: test_cloud_lifecycle.py) -----------------


def test_health_round_trip(server: FakeKMSServer, key: str) -> None:
    kms = provider(server, key)
    kms.health()
    assert isinstance(kms.unwrap_many(["gcp:v1:!!"], [{}])[0], HeimdallKMSError)


# -- authentication and IAM: service-account keys through Application Default Credentials -------


def test_service_accounts_and_roles_through_adc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = start_fake_kms()
    try:
        setup = rest_client(fake.url)
        ring = setup.create_key_ring(
            request={"parent": LOCATION, "key_ring_id": "iam", "key_ring": {}}
        )
        key = create_key(setup, str(ring.name))
        accounts = {}
        for name, role in [
            ("app", "roles/cloudkms.cryptoKeyEncrypterDecrypter"),
            ("worker", "roles/cloudkms.cryptoKeyDecrypter"),
            ("admin", "roles/cloudkms.admin"),
            ("job", "roles/cloudkms.cryptoKeyEncrypterDecrypter roles/cloudkms.viewer"),
            ("intruder", None),
        ]:
            path, email, public = service_account(tmp_path, name)
            if role is not None:
                fake.kms.add_service_account(email, public, *role.split())
            accounts[name] = path

        def as_account(name: str) -> GCPKMSProvider:
            monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(accounts[name]))
            client = build_client(GCPSettings(endpoint=fake.url, transport=GCPTransport.REST))
            return GCPKMSProvider(client, key, retry=False)

        app, worker, admin = as_account("app"), as_account("worker"), as_account("admin")
        # The app encrypts and decrypts through the facade with nothing but its role.
        settings = Settings.from_env(gcp_env(fake, key))
        with Crypto(settings, kms=app, audit=MemoryAuditSink()) as c:
            envelope = c.encrypt(SSN, context=CTX)
            assert c.decrypt(envelope, actor="a", reason="r") == SSN
        assert isinstance(envelope, KmsV1Envelope)
        (dek,) = worker.unwrap_many([envelope.encrypted_dek], [envelope.context])
        assert isinstance(dek, bytearray)
        with pytest.raises(PermissionDeniedError):
            worker.wrap_many([primitives.new_dek()], [{}])  # a worker only decrypts
        with pytest.raises(PermissionDeniedError):
            app.rotate()  # rotation is an admin's job
        with pytest.raises(PermissionDeniedError):
            app.describe()  # the data path needs no key metadata, so the app role has none
        assert admin.rotate().latest_version == 2
        with pytest.raises(PermissionDeniedError):
            admin.wrap_many([primitives.new_dek()], [{}])  # Cloud KMS Admin cannot use keys
        # The re-encryption job reads the versions and re-wraps (decrypt + encrypt).
        job = as_account("job")
        assert job.describe().latest_version == 2
        (fresh,) = job.rewrap_many([envelope.encrypted_dek], [envelope.context])
        assert isinstance(fresh, WrappedKey) and fresh.key_version == 2
        assert admin.retire(2).min_decryption_version == 2
        with pytest.raises(AuthenticationError):
            as_account("intruder").wrap_many([primitives.new_dek()], [{}])
        with pytest.raises(AuthenticationError):
            GCPKMSProvider(rest_client(fake.url), key, retry=False).describe()  # anonymous
    finally:
        fake.stop()
