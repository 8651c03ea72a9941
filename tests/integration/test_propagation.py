"""Eventual consistency: rotate, reencrypt and retire confirm the effect at the KMS.

Against the GCP (and Azure) wire fake with a propagation delay (a new primary and a disabled version
take effect for encrypt/decrypt only after it, reads show them at once), as Cloud KMS
documents. The commands run installed, as a user runs them.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys.crypto import KeyWrapAlgorithm
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import KeyVersionRetiredError, NotInEffectError
from heimdall_kms.jobs.propagation import Effect, Propagation, confirm_primary
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.contract.backends.azure import ADMIN, key_client
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.azure_kv_http import CRYPTO_OFFICER, FakeKeyVaultServer, start_fake_key_vault
from tests.fakes.gcp_kms_http import FakeKMS, FakeKMSServer, start_fake_kms
from tests.servers import run_cli

DELAY = 3.0
COUNT = 20


@pytest.fixture(scope="module")
def server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms()
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def key_ring(server: FakeKMSServer) -> str:
    ring = rest_client(server.url).create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "propagation", "key_ring": {}}
    )
    return str(ring.name)


@pytest.fixture
def key(server: FakeKMSServer, key_ring: str) -> Iterator[str]:
    yield create_key(rest_client(server.url), key_ring)
    server.kms.propagation_delay = 0.0
    server.kms.mixed_propagation = 0


def env_for(server: FakeKMSServer, key: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "gcp",
        "HMD_KMS_KEY_ID": key,
        "HMD_GCP_KMS_ENDPOINT": server.url,
        "HMD_GCP_TRANSPORT": "rest",
        "HMD_GCP_CREDENTIALS": "anonymous",
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        **extra,
    }


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    done = run_cli(args, env, drop=("HMD_", "GOOGLE_"))
    elapsed = time.monotonic() - started
    return done.returncode, done.stdout.decode(), done.stderr.decode(), elapsed


def seeded(env: dict[str, str], tmp_path: Path) -> tuple[Path, list[str]]:
    """COUNT values sealed under v1 in a SQLite table; returns it and the target options."""
    db = tmp_path / "app.db"
    settings = Settings.from_env(env)
    kms = GCPKMSProvider.from_settings(settings)
    sealer = Crypto(settings, kms=kms, audit=MemoryAuditSink())
    items = [
        (f"{i:03d}-00-0000", {"table": "c", "field": "ssn", "record": str(i)}) for i in range(COUNT)
    ]
    envelopes = sealer.encrypt_many(items)
    kms.close()
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE c (id INTEGER PRIMARY KEY, ssn TEXT)")
        connection.executemany(
            "INSERT INTO c VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(envelopes)]
        )
    return db, ["--database", f"sqlite:///{db}", "--table", "c", "--column", "ssn"]


def versions(db: Path) -> list[int]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT ssn FROM c ORDER BY id").fetchall()
    found = []
    for (text,) in rows:
        envelope = parse(text)
        assert isinstance(envelope, KmsV1Envelope)
        # The version the KMS really used, as its ciphertext names it (gcp:v<n>:...).
        found.append(int(envelope.encrypted_dek.split(":")[1].removeprefix("v")))
    return found


class TestFakePropagation:
    """The fake itself: reads show a change at once, encrypt/decrypt obey it after the delay."""

    def test_new_primary_and_disable_take_effect_after_the_delay(self) -> None:
        moment = [datetime(2026, 1, 1, tzinfo=UTC)]
        fake = start_fake_kms(kms=FakeKMS(clock=lambda: moment[0]))
        try:
            fake.kms.propagation_delay = 60.0
            client = rest_client(fake.url)
            ring = client.create_key_ring(request={"parent": LOCATION, "key_ring_id": "r"})
            name = create_key(client, str(ring.name))
            old = client.encrypt(request={"name": name, "plaintext": b"k"}).ciphertext
            client.create_crypto_key_version(request={"parent": name, "crypto_key_version": {}})
            key = client.update_crypto_key_primary_version(
                request={"name": name, "crypto_key_version_id": "2"}
            )
            assert key.primary.name.endswith("/2")  # the read shows it at once
            used = client.encrypt(request={"name": name, "plaintext": b"k"}).name
            assert used.endswith("/1")  # encrypt does not, yet
            client.update_crypto_key_version(
                request={
                    "crypto_key_version": {
                        "name": f"{name}/cryptoKeyVersions/1",
                        "state": kms_v1.CryptoKeyVersion.CryptoKeyVersionState.DISABLED,
                    },
                    "update_mask": {"paths": ["state"]},
                }
            )
            assert fake.kms.version_state(name, 1) == "DISABLED"
            assert client.decrypt(request={"name": name, "ciphertext": old}).plaintext == b"k"
            moment[0] += timedelta(seconds=61)
            assert client.encrypt(request={"name": name, "plaintext": b"k"}).name.endswith("/2")
            with pytest.raises(api_exceptions.BadRequest, match="not enabled"):
                client.decrypt(request={"name": name, "ciphertext": old})
        finally:
            fake.stop()


class TestCommandsWaitForTheEffect:
    def test_rotate_reencrypt_full_retire(
        self, server: FakeKMSServer, key: str, tmp_path: Path
    ) -> None:
        env = env_for(server, key, tmp_path)
        db, target = seeded(env, tmp_path)
        kms = GCPKMSProvider(rest_client(server.url), key)
        old_dek = primitives.new_dek()
        (old,) = kms.wrap_many([old_dek], [{}])
        server.kms.propagation_delay = DELAY

        code, out, err, elapsed = run(["rotate", "--json"], env)
        assert code == 0, err
        assert json.loads(out)["new_version"] == 2
        assert "waiting for v2 to become primary" in err
        assert elapsed >= DELAY - 0.5  # not reported before the KMS wraps with v2

        code, out, err, _ = run(["reencrypt", *target, "--mode", "full", "--json"], env)
        assert code == 0, err
        report = json.loads(out)
        assert (report["completed"], report["failed"]) == (COUNT, 0)
        assert versions(db) == [2] * COUNT

        code, out, err, elapsed = run(["retire", "--below-version", "2", *target, "--json"], env)
        assert code == 0, err
        assert json.loads(out)["effect"] == "confirmed"
        assert "waiting for v1 to stop decrypting" in err
        assert elapsed >= DELAY - 0.5
        # Right after retire reports success, an old DEK is refused.
        (outcome,) = kms.unwrap_many([old.ciphertext], [{}])
        assert isinstance(outcome, KeyVersionRetiredError)
        primitives.wipe(old_dek)
        kms.close()

    def test_past_the_bound_rotate_fails_saying_it_happened(
        self, server: FakeKMSServer, key: str, tmp_path: Path
    ) -> None:
        server.kms.propagation_delay = 30.0
        env = env_for(server, key, tmp_path, HMD_KMS_PROPAGATION_SECONDS="1")
        code, _, err, _ = run(["rotate"], env)
        assert code == 75
        assert "the rotation happened and is not yet in effect" in err
        assert "Traceback" not in err
        outcome = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
        assert outcome["result"] == "failure"
        assert outcome["error_type"] == "not_in_effect"
        assert outcome["details"]["in_effect"] is False
        assert outcome["key_version"] == 2


class TestJobVerifiesEachResult:
    @pytest.mark.parametrize("mode", [ReencryptMode.FULL, ReencryptMode.REWRAP])
    def test_results_on_the_old_version_are_not_completed(
        self, server: FakeKMSServer, key: str, tmp_path: Path, mode: ReencryptMode
    ) -> None:
        env = env_for(server, key, tmp_path)
        db, _ = seeded(env, tmp_path)
        settings = Settings.from_env(env)
        kms = GCPKMSProvider.from_settings(settings)
        server.kms.propagation_delay = DELAY
        # Within the delay one encrypt in five still reaches a replica with the old primary:
        # the canaries see v2 three times in a row, some of the job's wraps land on v1.
        server.kms.mixed_propagation = 5
        kms.rotate()
        store = open_store(f"sqlite:///{db}", Target("c", "ssn"))
        facade = Crypto(settings, kms=kms, audit=MemoryAuditSink())
        options = ReencryptOptions(mode=mode)
        first = run_reencrypt(facade, [store], options).to_dict()
        on_new = versions(db).count(2)
        assert 0 < first["failed"] < COUNT
        assert first["completed"] == on_new  # never counts a value still under v1
        assert first["completed"] + first["failed"] == COUNT
        assert {f["error_type"] for f in first["failures"]} == {"not_in_effect"}
        time.sleep(DELAY)
        second = run_reencrypt(facade, [store], options).to_dict()
        assert (second["completed"], second["failed"]) == (COUNT - on_new, 0)
        assert versions(db) == [2] * COUNT
        store.close()
        kms.close()


# -- Azure Key Vault ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vault() -> Iterator[FakeKeyVaultServer]:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    yield fake
    fake.stop()


class TestAzureFakePropagation:
    def test_new_version_and_disable_take_effect_after_the_delay(
        self, vault: FakeKeyVaultServer
    ) -> None:
        vault.vault.propagation_delay = 1.5
        name = f"p-{secrets.token_hex(4)}"
        first = vault.vault.create_key(name)
        try:
            client = key_client(vault)
            second = str(client.rotate_key(name).properties.version)
            assert len(list(client.list_properties_of_key_versions(name))) == 2  # at once
            assert client.get_key(name).properties.version == first  # not yet
            crypto_client = client.get_cryptography_client(name, key_version=first)
            wrapped = crypto_client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, b"k" * 32)
            client.update_key_properties(name, first, enabled=False)
            unwrapped = crypto_client.unwrap_key(
                KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key
            )
            assert unwrapped.key == b"k" * 32  # the disable is not in effect yet
            time.sleep(1.6)
            assert client.get_key(name).properties.version == second
            with pytest.raises(HttpResponseError, match="disabled"):
                crypto_client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, wrapped.encrypted_key)
        finally:
            vault.vault.propagation_delay = 0.0


class TestAzureRotateRetireWait:
    def test_rotate_and_retire_report_only_the_effect(self, vault: FakeKeyVaultServer) -> None:
        name = f"p-{secrets.token_hex(4)}"
        vault.vault.create_key(name)
        kms = AzureKeyVaultProvider(key_client(vault), name)
        old_dek = primitives.new_dek()
        (old,) = kms.wrap_many([old_dek], [{}])
        vault.vault.propagation_delay = DELAY
        lines: list[str] = []
        wait = Propagation(progress=lines.append)
        sink = MemoryAuditSink()
        try:
            started = time.monotonic()
            result = rotate(
                kms, sink, actor="t", if_due=False, cadence=timedelta(days=1), propagation=wait
            )
            assert result.new_version == 2
            assert any("waiting for v2 to become primary" in line for line in lines)
            assert time.monotonic() - started >= DELAY - 0.5
            (fresh,) = kms.wrap_many([primitives.new_dek()], [{}])
            assert fresh.key_version == 2
            retired = retire(
                kms, [], sink, below_version=2, actor="t", force=True, propagation=wait
            )
            assert retired.effect is Effect.CONFIRMED
            assert any("waiting for v1 to stop decrypting" in line for line in lines)
            (outcome,) = kms.unwrap_many([old.ciphertext], [{}])
            assert isinstance(outcome, KeyVersionRetiredError)
            assert sink.events[-1].details is not None
            assert sink.events[-1].details["effect"] == "confirmed"
        finally:
            vault.vault.propagation_delay = 0.0
            primitives.wipe(old_dek)
            kms.close()


class TestRetirePastTheBound:
    def test_retire_fails_saying_it_happened(
        self, server: FakeKMSServer, key: str, tmp_path: Path
    ) -> None:
        env = env_for(server, key, tmp_path, HMD_KMS_PROPAGATION_SECONDS="1")
        kms = GCPKMSProvider(rest_client(server.url), key)
        kms.rotate()
        kms.close()
        server.kms.propagation_delay = 30.0
        code, _, err, _ = run(["retire", "--below-version", "2", "--force"], env)
        assert code == 75
        assert "the retirement happened and is not yet in effect" in err
        assert "waiting for v1 to stop decrypting" in err
        assert server.kms.version_state(key, 1) == "DISABLED"  # made, only not in effect
        outcome = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
        assert (outcome["result"], outcome["error_type"]) == ("failure", "not_in_effect")
        assert outcome["details"]["in_effect"] is False


class TestBoundedBackoff:
    """The wait on a virtual clock shared with the fake: backoff, its cap, and the bound."""

    @pytest.mark.parametrize(("delay", "in_effect"), [(40.0, True), (400.0, False)])
    def test_waits_with_backoff_up_to_the_bound(self, delay: float, in_effect: bool) -> None:
        moment = [datetime(2026, 1, 1, tzinfo=UTC)]
        fake = start_fake_kms(kms=FakeKMS(clock=lambda: moment[0]))
        pauses: list[float] = []
        lines: list[str] = []

        def sleep(seconds: float) -> None:
            pauses.append(seconds)
            moment[0] += timedelta(seconds=seconds)

        def clock() -> float:
            return moment[0].timestamp()

        wait = Propagation(
            bound_seconds=300.0,
            progress=lines.append,
            clock=clock,
            sleep=sleep,
        )
        try:
            client = rest_client(fake.url)
            ring = client.create_key_ring(request={"parent": LOCATION, "key_ring_id": "b"})
            kms = GCPKMSProvider(client, create_key(client, str(ring.name)))
            fake.kms.propagation_delay = delay
            version = kms.rotate().latest_version
            if in_effect:
                confirm_primary(kms, version, wait)
                assert sum(pauses) >= delay
            else:
                with pytest.raises(NotInEffectError, match="still wraps with v1 after 300 s"):
                    confirm_primary(kms, version, wait)
                assert sum(pauses) == pytest.approx(300.0)
            assert pauses[:4] == [0.5, 1.0, 2.0, 4.0]
            assert max(pauses) <= 10.0
            assert lines[0] == "waiting for v2 to become primary (0 s)"
            assert len(lines) == len(pauses)
        finally:
            fake.stop()

    def test_a_rerun_with_nothing_left_to_disable_is_not_called_confirmed(
        self, server: FakeKMSServer, key: str, tmp_path: Path
    ) -> None:
        env = env_for(server, key, tmp_path)
        kms = GCPKMSProvider(rest_client(server.url), key)
        kms.rotate()
        kms.retire(2)  # disabled earlier (say by a retire that timed out)
        kms.close()
        code, out, err, _ = run(["retire", "--below-version", "2", "--force", "--json"], env)
        assert code == 0, err
        assert json.loads(out)["effect"] == "unconfirmed"
        assert "was not confirmed" in err
