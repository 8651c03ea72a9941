"""One key's whole life through the installed command, on every cloud KMS (issue 19, Tests).

encrypt and decrypt; migrate a table of legacy values; rotate; a retire refused while values
still need the old version; rewrap (only the wrapped DEKs change); retire (the KMS then refuses
the old version); rotate and re-encrypt in full (fresh DEKs); then every value still reads with
the env key gone, and the audit log verifies and holds no plaintext. The same scenario runs on
GCP (REST and gRPC), AWS (its own rotation, and one key per version behind aliases) and Azure
Key Vault; where a KMS cannot retire one version (AWS's own rotation) the scenario checks that
retire is refused and the old value still reads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import kms_v1

from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.envelope import KmsV1Envelope, parse
from tests.contract.backends.gcp import rest_client
from tests.fakes.azure_kv_http import (
    FakeKeyVaultServer,
)
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.integration.clouds import Cloud, aws_cloud, azure_cloud, gcp_cloud, start_azure
from tests.legacy_data import legacy_envelope
from tests.servers_aws import MotoServer, start_moto

SSN = "123-45-6789"
MASTER_HEX = "ab" * 32
ROWS = 30
PLAIN = {i: f"{i:03d}-00-{i:04d}" for i in range(1, ROWS + 1)}
NULL_ROW, REDACTED_ROW = ROWS + 1, ROWS + 2  # neither is a value to encrypt: both are skipped


@pytest.fixture(scope="module")
def gcp_server() -> Iterator[FakeKMSServer]:
    fake = start_fake_kms(grpc=True)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gcp_admin(gcp_server: FakeKMSServer) -> kms_v1.KeyManagementServiceClient:
    return rest_client(gcp_server.url)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azure_server() -> Iterator[FakeKeyVaultServer]:
    fake = start_azure()
    yield fake
    fake.stop()


@pytest.fixture(params=["gcp-rest", "gcp-grpc", "aws-native", "aws-aliases", "azure"])
def cloud(request: pytest.FixtureRequest, tmp_path: Path) -> Cloud:
    """A fresh key on one cloud KMS (each server starts once per module, on first use)."""
    provider, _, variant = request.param.partition("-")
    if provider == "gcp":
        server = request.getfixturevalue("gcp_server")
        return gcp_cloud(server, request.getfixturevalue("gcp_admin"), variant, tmp_path)
    if provider == "aws":
        return aws_cloud(request.getfixturevalue("moto"), AWSKeyVersioning(variant), tmp_path)
    return azure_cloud(request.getfixturevalue("azure_server"), tmp_path)


def ok(result: Any) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout) if result.stdout.startswith(b"{") else result.stdout.decode()


def legacy_table(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
        connection.executemany(
            "INSERT INTO customers VALUES (?, ?)",
            [(i, legacy_envelope(MASTER_HEX, text)) for i, text in PLAIN.items()]
            + [(NULL_ROW, None), (REDACTED_ROW, "[REDACTED]")],
        )
    return ["--database", f"sqlite:///{db}", "--table", "customers", "--column", "ssn"]


def stored(db: Path) -> dict[int, str | None]:
    with sqlite3.connect(db) as connection:
        return dict(connection.execute("SELECT id, ssn FROM customers ORDER BY id").fetchall())


def envelopes(db: Path) -> dict[int, KmsV1Envelope]:
    result = {}
    for row_id, text in stored(db).items():
        if row_id in (NULL_ROW, REDACTED_ROW):
            continue
        assert text is not None, row_id
        envelope = parse(text)
        assert isinstance(envelope, KmsV1Envelope), row_id
        result[row_id] = envelope
    return result


class TestKeyLifecycle:
    def test_encrypt_migrate_rotate_rewrap_retire_full_on_every_cloud(
        self, cloud: Cloud, tmp_path: Path
    ) -> None:
        """The whole story of one key, told once, run on each KMS."""
        env, admin, run = cloud.env, cloud.admin_env, cloud.run
        hybrid = env | {"HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX}

        # encrypt / decrypt, and a moved context
        sealed = ok(run(["encrypt", "--field", "ssn", "--context", "record=r1"], env, SSN))
        assert (sealed["provider"], sealed["key_identifier"], sealed["key_version"]) == (
            cloud.name,
            cloud.key_identifier,
            1,
        )
        assert sealed["encrypted_dek"].startswith(f"{cloud.name}:v1:")
        decrypt = ["decrypt", "--actor", "alice", "--reason", "t-42", "--field", "ssn"]
        assert ok(run(decrypt, env, json.dumps(sealed))) == SSN
        moved = run(
            ["decrypt", "--actor", "a", "--reason", "r", "--context", "record=r2"],
            env,
            json.dumps(sealed),
        )
        assert moved.returncode == 66
        assert len(moved.stderr.decode().strip().splitlines()) == 1
        assert "Traceback" not in moved.stderr.decode()

        # migrate a table of legacy envelopes
        db = tmp_path / "app.db"
        target = legacy_table(db)
        summary = ok(run(["migrate", *target, "--batch-size", "10", "--json"], hybrid))
        assert (summary["completed"], summary["skipped"]) == (ROWS, 2)
        migrated = envelopes(db)
        assert {e.key_version for e in migrated.values()} == {1}
        assert migrated[5].context == {"table": "customers", "field": "ssn", "record": "5"}

        # rotate; retire is refused while values need version 1; rewrap
        rotated = ok(run(["rotate", "--json"], admin))
        assert (rotated["rotated"], rotated["old_version"], rotated["new_version"]) == (True, 1, 2)
        refused = run(["retire", "--below-version", "2", *target], admin)
        assert refused.returncode == 4
        assert f"{ROWS} stored values still need a version below 2" in refused.stderr.decode()
        assert cloud.version_enabled(1)
        assert (
            ok(run(["reencrypt", *target, "--mode", "rewrap", "--json"], admin))["completed"]
            == ROWS
        )
        rewrapped = envelopes(db)
        for row_id, before in migrated.items():
            after = rewrapped[row_id]
            assert (after.ciphertext, after.nonce) == (before.ciphertext, before.nonce)
            assert after.key_version == 2
            assert after.encrypted_dek.startswith(f"{cloud.name}:v2:")

        # retire: the KMS then refuses version 1 (or, where it cannot, retire is refused)
        retire = run(["retire", "--below-version", "2", *target, "--json"], admin)
        stale = run(["decrypt", "--actor", "a", "--reason", "r"], env, json.dumps(sealed))
        if cloud.retires:
            assert ok(retire)["min_decryption_version"] == 2
            assert not cloud.version_enabled(1)
            assert stale.returncode == 68  # written under version 1, now disabled in the KMS
        else:
            assert retire.returncode == 4
            assert "cannot retire versions below 2" in retire.stderr.decode()
            assert len(retire.stderr.decode().strip().splitlines()) == 1
            assert ok(stale) == SSN

        # rotate again and re-encrypt everything with fresh DEKs
        assert ok(run(["rotate", "--json"], admin))["new_version"] == 3
        full = ok(run(["reencrypt", *target, "--mode", "full", "--json"], admin))
        assert full["completed"] == ROWS
        fresh = envelopes(db)
        for row_id, before in rewrapped.items():
            assert fresh[row_id].ciphertext != before.ciphertext
            assert fresh[row_id].key_version == 3
        assert stored(db)[NULL_ROW] is None and stored(db)[REDACTED_ROW] == "[REDACTED]"

        # KMS-only now: the env key is gone and every value still reads
        for row_id in (1, 7, ROWS):
            text = run(["decrypt", "--actor", "a", "--reason", "verify"], env, stored(db)[row_id])
            assert ok(text) == PLAIN[row_id]

        log = (tmp_path / "audit.log").read_text(encoding="utf-8")
        assert SSN not in log and all(text not in log for text in PLAIN.values())
        events = {json.loads(line)["event_type"] for line in log.splitlines()}
        assert {"crypto.encrypt", "crypto.decrypt", "key.rotate", "reencrypt.batch"} <= events
        assert "key.retire" in events
        ok(run(["audit", "verify", str(tmp_path / "audit.log")], env))
