"""The Azure Key Vault provider against the wire-level fake (SPEC §10): disabled versions, the
challenge flow, ordering under concurrency, settings from the environment, and the installed
``heimdall-kms`` command's roles and errors (a key's whole life through the command is
``test_cloud_lifecycle.py``, on every cloud)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from heimdall_kms import primitives
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    IntegrityError,
    KeyVersionRetiredError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
)
from heimdall_kms.providers.azure.keys import parse_key_url
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from tests.contract.backends.azure import ADMIN, WORKER, key_client
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    UNWRAP_ONLY,
    FakeKeyVaultServer,
    start_fake_key_vault,
)
from tests.integration.clouds import azure_env, start_azure
from tests.servers import run_cli

SSN = "123-45-6789"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKeyVaultServer]:
    fake = start_azure()
    yield fake
    fake.stop()


@pytest.fixture
def key(server: FakeKeyVaultServer, request: pytest.FixtureRequest) -> str:
    name = "k-" + request.node.name.replace("_", "-")[-40:].strip("-")
    server.vault.create_key(name)
    return name


def provider(server: FakeKeyVaultServer, key: str, **kwargs: object) -> AzureKeyVaultProvider:
    workers = kwargs.pop("max_concurrency", 8)
    assert isinstance(workers, int)
    return AzureKeyVaultProvider(key_client(server, **kwargs), key, max_concurrency=workers)


def test_disabled_version_fails_in_place_and_describe_follows_key_vault(
    server: FakeKeyVaultServer, key: str
) -> None:
    kms = provider(server, key)
    old = [primitives.new_dek() for _ in range(3)]
    wrapped_old = kms.wrap_many(old, [{}] * 3)
    assert {w.ciphertext.split(":")[1] for w in wrapped_old} == {"v1"}
    kms.rotate()
    (new,) = kms.wrap_many([dek := primitives.new_dek()], [{}])
    assert new.key_version == 2
    info = kms.retire(2)
    assert (info.latest_version, info.min_decryption_version) == (2, 2)
    assert [v.version for v in info.versions] == [2]
    assert [enabled for _, enabled in server.vault.versions(key)] == [False, True]
    outcomes = kms.unwrap_many([wrapped_old[0].ciphertext, new.ciphertext], [{}, {}])
    assert isinstance(outcomes[0], KeyVersionRetiredError)
    assert outcomes[1] == dek
    rewrapped = kms.rewrap_many([wrapped_old[1].ciphertext], [{}])
    assert isinstance(rewrapped[0], KeyVersionRetiredError)
    # Re-enabling in Key Vault (a break-glass step outside this tool) is reflected as is.
    first = server.vault.versions(key)[0][0]
    server.vault.set_enabled(key, first, True)
    assert kms.describe().min_decryption_version == 1
    assert kms.unwrap_many([wrapped_old[2].ciphertext], [{}]) == [old[2]]
    # A disabled latest version is never used to wrap: the value could not be read back.
    latest = server.vault.versions(key)[-1][0]
    server.vault.set_enabled(key, latest, False)
    with pytest.raises(KeyVersionRetiredError, match="rotate first"):
        kms.wrap_many([primitives.new_dek()], [{}])
    assert kms.describe().latest.created_at is None  # `rotate --if-due` treats it as due
    kms.close()


def test_ordinals_are_by_creation_time_across_pages(server: FakeKeyVaultServer, key: str) -> None:
    server.vault.page_size = 2  # the version list comes in pages, in id order
    try:
        kms = provider(server, key)
        for expected in (2, 3, 4):
            assert kms.rotate().latest_version == expected
        info = kms.describe()
        assert [v.version for v in info.versions] == [1, 2, 3, 4]
        created = [v.created_at for v in info.versions]
        assert created == sorted(created)
        (wrapped,) = kms.wrap_many([primitives.new_dek()], [{}])
        ids = [version for version, _ in server.vault.versions(key)]
        assert wrapped.ciphertext.startswith(f"azure:v4:{ids[-1]}:RSA-OAEP-256:")
        # Another process's provider numbers the versions the same way.
        assert provider(server, key).describe() == info
    finally:
        server.vault.page_size = 25


class TestWrappedVersionIsVerified:
    def test_an_ordinal_that_is_not_the_azure_versions_is_refused(
        self, server: FakeKeyVaultServer, key: str
    ) -> None:
        """The version id unwraps; an edited ``azure:v<n>`` in front of it is refused."""
        kms = provider(server, key)
        (v1,) = kms.wrap_many([dek := primitives.new_dek()], [{}])
        kms.rotate()
        forged = "azure:v2:" + v1.ciphertext.split(":", 2)[2]
        assert kms.unwrap_many([v1.ciphertext], [{}]) == [dek]
        (outcome,) = kms.unwrap_many([forged], [{}])
        assert isinstance(outcome, IntegrityError)
        kms.close()


def test_challenge_flow_and_token_reuse() -> None:
    fresh = start_fake_key_vault()  # a new host: nothing is cached for it in this process
    try:
        fresh.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
        fresh.vault.create_key("k")
        kms = provider(fresh, "k")
        deks = [primitives.new_dek() for _ in range(4)]
        wrapped = kms.wrap_many(deks, [{}] * 4)
        assert kms.unwrap_many([w.ciphertext for w in wrapped], [{}] * 4) == deks
        first, second = fresh.vault.requests[:2]
        assert (first.authorized, first.status) == (False, 401)  # no token: the challenge
        assert (second.authorized, second.path) == (True, first.path)  # the same request again
        assert all(r.authorized for r in fresh.vault.requests[1:])
        assert fresh.vault.token_requests == 1  # one token, reused
        # A revoked token is challenged again; the credential's cached token fails again.
        fresh.vault.revoke_tokens()
        with pytest.raises(AuthenticationError) as caught:
            kms.unwrap_many([wrapped[0].ciphertext], [{}])
        assert caught.value.__cause__ is None
        assert [r.status for r in fresh.vault.requests[-2:]] == [401, 401]
        kms.close()
    finally:
        fresh.stop()


def test_order_kept_under_concurrency(server: FakeKeyVaultServer, key: str) -> None:
    kms = provider(server, key, max_concurrency=6)
    deks = [primitives.new_dek() for _ in range(48)]
    wrapped = [w.ciphertext for w in kms.wrap_many(deks, [{}] * 48)]
    damaged = wrapped[17][:-8] + ("A" * 8 if not wrapped[17].endswith("A" * 8) else "B" * 8)
    server.vault.latency = (0.0, 0.03)
    server.vault.max_in_flight = 0
    try:
        outcomes = kms.unwrap_many([*wrapped[:17], damaged, *wrapped[18:]], [{}] * 48)
        assert 1 < server.vault.max_in_flight <= 6
        assert isinstance(outcomes[17], IntegrityError)
        assert outcomes[:17] + outcomes[18:] == deks[:17] + deks[18:]
        kms.rotate()
        rewrapped = kms.rewrap_many(wrapped, [{}] * 48)
        assert {getattr(r, "key_version", None) for r in rewrapped} == {2}
        fresh = [r.ciphertext for r in rewrapped if not isinstance(r, Exception)]
        assert kms.unwrap_many(fresh, [{}] * 48) == deks
    finally:
        server.vault.latency = None
        kms.close()


def test_whole_call_failures_stop_the_batch(server: FakeKeyVaultServer, key: str) -> None:
    kms = provider(server, key, retry_total=0)
    wrapped = [
        w.ciphertext for w in kms.wrap_many([primitives.new_dek() for _ in range(30)], [{}] * 30)
    ]
    server.vault.inject(key, 429)
    before = len(server.vault.requests)
    try:
        with pytest.raises(RateLimitedError):
            kms.unwrap_many(wrapped, [{}] * 30)
        sent = [r for r in server.vault.requests[before:] if r.path.endswith("/unwrapkey")]
        assert len(sent) < 30  # the items not yet started were never sent
        server.vault.inject(key, 503)
        with pytest.raises(KMSUnavailableError, match="HTTP 503"):
            kms.unwrap_many(wrapped[:2], [{}] * 2)
    finally:
        server.vault.clear(key)
    # With the SDK's default retry policy, a short burst of throttling is ridden out.
    patient = provider(server, key)
    server.vault.inject(key, 429, times=2)
    assert len(patient.unwrap_many(wrapped[:1], [{}])) == 1
    kms.close()
    patient.close()


def test_managed_hsm_aes_key_wraps_in_the_hsm(server: FakeKeyVaultServer) -> None:
    server.vault.create_key("hsm-aes", kty="oct-HSM", size=256)
    kms = provider(server, "hsm-aes")
    deks = [primitives.new_dek() for _ in range(5)]
    wrapped = kms.wrap_many(deks, [{}] * 5)
    assert all(":A256KW:" in w.ciphertext for w in wrapped)
    assert kms.unwrap_many([w.ciphertext for w in wrapped], [{}] * 5) == deks
    wraps = [r for r in server.vault.requests if r.path.endswith("/wrapkey")]
    assert len(wraps) == 5  # symmetric keys never leave the HSM: every wrap is a call
    kms.health()
    kms.close()


def test_worker_with_unwrap_only_can_read_but_not_write(
    server: FakeKeyVaultServer, key: str
) -> None:
    app = provider(server, key)
    deks = [primitives.new_dek() for _ in range(3)]
    wrapped = [w.ciphertext for w in app.wrap_many(deks, [{}] * 3)]
    server.vault.add_principal(*WORKER, UNWRAP_ONLY)
    worker = AzureKeyVaultProvider(key_client(server, WORKER), key)
    # The SDK's first look at the key version is refused (no keys/read); it unwraps remotely.
    assert worker.unwrap_many(wrapped, [{}] * 3) == deks
    with pytest.raises(PermissionDeniedError):
        worker.wrap_many([primitives.new_dek()], [{}])
    with pytest.raises(PermissionDeniedError):
        worker.rotate()
    app.close()
    worker.close()


def test_sdk_cryptography_client_would_lose_aes_wrapped_keys(server: FakeKeyVaultServer) -> None:
    """Why oct-HSM keys are wrapped through ``send_request``: for a key whose material Key
    Vault does not return, the SDK's CryptographyClient makes up a random local AES key and
    wraps with it, so the result never unwraps. If this test fails, the SDK changed."""
    version = server.vault.create_key("hsm-hazard", kty="oct-HSM", size=256)
    client = key_client(server)
    dek = primitives.new_dek()
    local = client.get_cryptography_client("hsm-hazard", key_version=version)
    blob = local.wrap_key(KeyWrapAlgorithm.aes_256, bytes(dek)).encrypted_key
    assert not [r for r in server.vault.requests if "hsm-hazard" in r.path and "wrapkey" in r.path]
    text = base64.urlsafe_b64encode(blob).rstrip(b"=").decode()
    kms = provider(server, "hsm-hazard")
    (outcome,) = kms.unwrap_many([f"azure:v1:{version}:A256KW:{text}"], [{}])
    assert isinstance(outcome, IntegrityError)
    client.close()
    kms.close()


def test_from_settings_with_env(
    server: FakeKeyVaultServer, key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = azure_env(server, key, tmp_path) | {"HMD_AZURE_MAX_CONCURRENCY": "4"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env)
    assert settings.azure is not None
    assert settings.azure.max_concurrency == 4
    assert settings.azure.verify_challenge_resource is False
    kms = load_provider(settings)
    assert kms.key_identifier == server.key_url(key)
    kms.health()
    assert kms.describe().latest_version == 1
    kms.close()
    for bad in (
        server.key_url(key) + "/0123456789abcdef",
        server.key_url(key).replace("https://", "http://"),
        server.url + "/secrets/x",
    ):
        with pytest.raises(ConfigurationError, match=r"^HMD_KMS_KEY_ID: ") as caught:
            load_provider(Settings.from_env({**env, "HMD_KMS_KEY_ID": bad}))
        assert "\n" not in str(caught.value)
    # Left on, the SDK refuses the loopback host: Key Vault's challenge names vault.azure.net.
    strict = load_provider(
        Settings.from_env({**env, "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "true"})
    )
    with pytest.raises(ConfigurationError, match=r"^HMD_AZURE_VERIFY_CHALLENGE_RESOURCE: "):
        strict.wrap_many([primitives.new_dek()], [{}])
    strict.close()
    with pytest.raises(ConfigurationError, match=r"^HMD_AZURE_MAX_CONCURRENCY"):
        Settings.from_env({**env, "HMD_AZURE_MAX_CONCURRENCY": "0"})
    with pytest.raises(ConfigurationError, match=r"^HMD_AZURE_DISABLE_INSTANCE_DISCOVERY"):
        Settings.from_env({**env, "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "maybe"})


# -- the installed command (the key's whole life: test_cloud_lifecycle.py) -------------------


def run(
    args: list[str], env: dict[str, str], stdin: str | bytes = ""
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, stdin, drop=("HMD_", "AZURE_"))


def test_the_app_identity_wraps_but_only_the_admin_rotates(
    server: FakeKeyVaultServer, key: str, tmp_path: Path
) -> None:
    """The app's role may wrap and unwrap, not rotate; the admin's rotation reports the local
    clock, as Key Vault's answers carry no server time the provider reads."""
    env = azure_env(server, key, tmp_path)
    admin = env | {"AZURE_CLIENT_ID": ADMIN[0], "AZURE_CLIENT_SECRET": ADMIN[1]}
    assert run(["encrypt", "--field", "ssn"], env, SSN).returncode == 0
    denied = run(["rotate"], env)
    assert denied.returncode == 77
    assert "permission denied (HTTP 403 Forbidden)" in denied.stderr.decode()
    rotated = run(["rotate", "--json"], admin)
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout) | {"next_due": None} == {
        "rotated": True,
        "old_version": 1,
        "new_version": 2,
        "next_due": None,
        "clock": "local",
    }


def test_cli_bad_secret_is_one_error_line(
    server: FakeKeyVaultServer, key: str, tmp_path: Path
) -> None:
    env = azure_env(server, key, tmp_path) | {"AZURE_CLIENT_SECRET": "wrong-secret-value"}
    result = run(["encrypt", "--field", "ssn"], env, SSN)
    err = result.stderr.decode()
    assert result.returncode == 77, err
    assert "Traceback" not in err
    assert "wrong-secret-value" not in err
    assert result.stdout == b""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("heimdall-kms: error:")]
    assert errors == [lines[-1]]
    assert errors[0].startswith("heimdall-kms: error: Azure Key Vault wrap: authentication failed")
    # Before it, azure-identity's own diagnosis (which credential failed, the AADSTS code) is
    # logged as a warning by the SDK; it carries no secret.
    assert all(line.startswith("heimdall-kms: warning:") for line in lines[:-1][:1])


class TestKeyURL:
    def test_a_key_url_gives_the_vault_and_the_name(self) -> None:
        """https://VAULT/keys/NAME is split into the vault URL and the key name."""
        assert parse_key_url(" https://v1.vault.azure.net/keys/pii ") == (
            "https://v1.vault.azure.net",
            "pii",
        )

    def test_a_versioned_url_is_refused_with_the_reason(self) -> None:
        """A URL naming a version says to leave the version out."""
        with pytest.raises(ConfigurationError, match="without a version"):
            parse_key_url("https://v1.vault.azure.net/keys/pii/0123abcd")

    @pytest.mark.parametrize(
        "value",
        [
            "http://v1.vault.azure.net/keys/pii",
            "https://v1.vault.azure.net/keys/pii?x=1",
            "http://v1.vault.azure.net/keys/pii/0123abcd",
            "https://v1.vault.azure.net/secrets/pii",
            "https://v1.vault.azure.net/keys/pi_i",
            "https:///keys/pii",
        ],
    )
    def test_anything_else_names_the_expected_form(self, value: str) -> None:
        """Not https, a query, another collection, a bad name or no host: the expected form."""
        with pytest.raises(ConfigurationError, match=r"^HMD_KMS_KEY_ID: expected https://"):
            parse_key_url(value)
