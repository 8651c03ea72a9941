"""``heimdall-kms gcp bootstrap`` and ``azure bootstrap`` against the wire-level fakes.

The installed command runs with the official clients (google-cloud-kms over REST, the Azure
SDK over HTTPS through the fake's Entra ID), as a user runs it. One scenario per property,
parametrised over the two clouds; each backend is a small object that knows how to point the
command at a fresh key name, create a key beforehand as an administrator would, and count
what the fake was asked to create.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyRotationPolicyAction
from azure.keyvault.keys.crypto import SignatureAlgorithm
from google.api_core import exceptions as api_exceptions
from google.cloud import kms_v1

from heimdall_kms import primitives
from heimdall_kms.errors import PermissionDeniedError
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from tests.contract.backends.azure import ADMIN, key_client
from tests.contract.backends.gcp import LOCATION, create_signing_key, rest_client
from tests.fakes.azure_kv_http import CRYPTO_OFFICER, FakeKeyVaultServer, start_fake_key_vault
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.servers import run_cli

ROLES = ["app", "worker", "admin", "audit"]
SIGNING_OPS = ["sign", "verify"]


class Backend(Protocol):
    name: str

    def env(self, tmp_path: Path) -> dict[str, str]: ...
    def precreate(self) -> None: ...
    def creations(self) -> int: ...
    def exists(self) -> bool: ...
    def stop(self) -> None: ...


class GCP:
    name = "gcp"

    def __init__(self) -> None:
        self.server: FakeKMSServer = start_fake_kms()
        self.admin = rest_client(self.server.url)
        self.ring = f"{LOCATION}/keyRings/ring-{secrets.token_hex(3)}"
        self.key = f"{self.ring}/cryptoKeys/pii"

    def env(self, tmp_path: Path) -> dict[str, str]:
        return {
            "HMD_KMS_PROVIDER": "gcp",
            "HMD_KMS_KEY_ID": self.key,
            "HMD_GCP_KMS_ENDPOINT": self.server.url,
            "HMD_GCP_TRANSPORT": "rest",
            "HMD_GCP_CREDENTIALS": "anonymous",
            "HMD_KEY_ROTATION_DAYS": "30",
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        }

    def precreate(self) -> None:
        parent, ring_id = self.ring.split("/keyRings/")
        self.admin.create_key_ring(request={"parent": parent, "key_ring_id": ring_id})
        self.admin.create_crypto_key(
            request={
                "parent": self.ring,
                "crypto_key_id": "pii",
                "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT},
            }
        )
        create_signing_key(self.admin, self.ring, "pii-audit")

    def creations(self) -> int:
        calls = self.server.kms.calls
        return calls["create_key_ring"] + calls["create_crypto_key"]

    def exists(self) -> bool:
        try:
            self.admin.get_crypto_key(request={"name": self.key})
        except api_exceptions.NotFound:
            return False
        return True

    def stop(self) -> None:
        self.server.stop()


class Azure:
    name = "azure"

    def __init__(self) -> None:
        self.server: FakeKeyVaultServer = start_fake_key_vault()
        self.server.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
        self.key = f"pii-{secrets.token_hex(3)}"
        self.admin = key_client(self.server)

    def env(self, tmp_path: Path) -> dict[str, str]:
        return {
            "HMD_KMS_PROVIDER": "azure",
            "HMD_KMS_KEY_ID": self.server.key_url(self.key),
            "HMD_AZURE_CA_BUNDLE": str(self.server.ca_pem),
            "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
            "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "true",
            "HMD_KEY_ROTATION_DAYS": "30",
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
            "AZURE_TENANT_ID": self.server.vault.tenant,
            "AZURE_CLIENT_ID": ADMIN[0],
            "AZURE_CLIENT_SECRET": ADMIN[1],
            "AZURE_AUTHORITY_HOST": self.server.url,
            "REQUESTS_CA_BUNDLE": str(self.server.ca_pem),
        }

    def precreate(self) -> None:
        self.admin.create_rsa_key(self.key, size=2048)
        self.admin.create_ec_key(f"{self.key}-audit", curve="P-256", key_operations=SIGNING_OPS)

    def creations(self) -> int:
        return sum(
            r.path.endswith("/create") and r.status == 200 for r in self.server.vault.requests
        )

    def exists(self) -> bool:
        return bool(self.server.vault.versions(self.key))

    def stop(self) -> None:
        self.admin.close()
        self.server.stop()


@pytest.fixture(params=["gcp", "azure"])
def cloud(request: pytest.FixtureRequest) -> Iterator[Backend]:
    backend: Backend = GCP() if request.param == "gcp" else Azure()
    yield backend
    backend.stop()


def bootstrap(cloud: Backend, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run_cli([cloud.name, "bootstrap", *args], cloud.env(tmp_path), drop=("HMD_", "AZURE_"))


def document(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr.decode()
    answer: dict[str, Any] = json.loads(result.stdout)
    return answer


def key_events(tmp_path: Path) -> list[dict[str, Any]]:
    log = tmp_path / "audit.log"
    if not log.exists():
        return []
    events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in events if e["event_type"] == "key.create"]


class TestBootstrap:
    def test_dry_run_creates_nothing_and_prints_what_it_would(
        self, cloud: Backend, tmp_path: Path
    ) -> None:
        plan = document(bootstrap(cloud, tmp_path, "--dry-run", "--json"))
        assert plan["dry_run"] is True
        created = [s for s in plan["steps"] if s["change"] == "created"]
        assert created
        assert all(s["calls"] for s in created)
        assert [g["role"] for g in plan["access"]] == ROLES
        assert [g["role"] for g in plan["signing_access"]] == ROLES
        assert plan["signing_key"].endswith("-audit")
        assert plan["steps"][-1]["step"].startswith("audit signing key")
        assert plan["steps"][-1]["change"] == "created" and plan["steps"][-1]["calls"]
        assert cloud.creations() == 0
        assert not cloud.exists()
        assert key_events(tmp_path) == []
        text = bootstrap(cloud, tmp_path, "--dry-run")
        assert text.returncode == 0, text.stderr.decode()
        assert b"would create" in text.stdout
        assert b"Access to the audit signing key" in text.stdout
        assert cloud.creations() == 0

    def test_run_creates_audited_then_a_second_run_changes_nothing(
        self, cloud: Backend, tmp_path: Path
    ) -> None:
        first = document(bootstrap(cloud, tmp_path, "--json", "--actor", "ops@example"))
        assert first["dry_run"] is False
        assert cloud.exists()
        made = cloud.creations()
        assert made >= 1
        events = key_events(tmp_path)
        assert [e["result"] for e in events] == ["intent", "success"]
        assert {e["actor"] for e in events} == {"ops@example"}
        assert events[0]["key_identifier"] == first["key"]
        second = document(bootstrap(cloud, tmp_path, "--json"))
        assert {s["change"] for s in second["steps"]} == {"unchanged"}
        assert cloud.creations() == made
        assert len(key_events(tmp_path)) == 2

    def test_an_unwritable_audit_log_creates_nothing(self, cloud: Backend, tmp_path: Path) -> None:
        env = cloud.env(tmp_path) | {"HMD_AUDIT_LOG": str(tmp_path / "missing" / "audit.log")}
        result = run_cli([cloud.name, "bootstrap"], env, drop=("HMD_", "AZURE_"))
        assert result.returncode == 74, result.stderr.decode()
        assert b"Traceback" not in result.stderr
        assert cloud.creations() == 0
        assert not cloud.exists()

    def test_an_existing_key_is_adopted(self, cloud: Backend, tmp_path: Path) -> None:
        cloud.precreate()
        before = cloud.creations()
        plan = document(bootstrap(cloud, tmp_path, "--json"))
        assert {s["change"] for s in plan["steps"]} == {"unchanged"}
        assert any("adopted" in note for s in plan["steps"] for note in s["notes"])
        assert cloud.creations() == before
        assert key_events(tmp_path) == []

    def test_printed_policies_are_valid_json(self, cloud: Backend, tmp_path: Path) -> None:
        member = "app=serviceAccount:svc@p.iam.gserviceaccount.com"
        if cloud.name == "azure":
            member = "app=11111111-2222-3333-4444-555555555555"
        plan = document(bootstrap(cloud, tmp_path, "--dry-run", "--json", "--member", member))
        app = plan["access"][0]
        assert app["member"] == member.split("=", 1)[1]
        text = bootstrap(cloud, tmp_path, "--dry-run", "--member", member).stdout.decode()
        printed = [
            line.split(": ", 1)[1]
            for line in text.splitlines()
            if line.strip().startswith(
                ("binding: ", "versions_binding: ", "custom_role: ", "assignment: ")
            )
        ]
        assert len(printed) >= 2 * len(ROLES)
        for grant in plan["access"] + plan["signing_access"]:
            for value in grant["documents"].values():
                assert json.dumps(value, sort_keys=True) in printed
        for line in printed:
            json.loads(line)

    def test_a_bad_member_is_one_line_and_changes_nothing(
        self, cloud: Backend, tmp_path: Path
    ) -> None:
        result = bootstrap(cloud, tmp_path, "--member", "root=someone")
        assert result.returncode != 0
        assert b"Traceback" not in result.stderr
        assert b"--member" in result.stderr
        assert cloud.creations() == 0


class TestGCPDesign:
    def test_the_key_rotates_every_hmd_key_rotation_days(self, tmp_path: Path) -> None:
        gcp = GCP()
        try:
            document(bootstrap(gcp, tmp_path, "--json"))
            key = gcp.admin.get_crypto_key(request={"name": gcp.key})
            assert key.purpose == kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
            assert key.rotation_period.total_seconds() == 30 * 86400
            plan = document(bootstrap(gcp, tmp_path, "--json", "--dry-run"))
            grants = {g["role"]: g["grants"] for g in plan["access"]}
            assert grants["app"] == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
            assert grants["worker"] == "roles/cloudkms.cryptoKeyDecrypter"
            assert grants["audit"] == "roles/cloudkms.viewer"
            admin = plan["access"][2]["documents"]["custom_role"]["includedPermissions"]
            assert not any("useTo" in p or "destroy" in p for p in admin)
        finally:
            gcp.stop()

    def test_the_signing_key_signs_and_writers_sign_while_audit_only_verifies(
        self, tmp_path: Path
    ) -> None:
        gcp = GCP()
        try:
            made = document(bootstrap(gcp, tmp_path, "--json"))
            key = gcp.admin.get_crypto_key(request={"name": f"{gcp.key}-audit"})
            assert key.purpose == kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN
            assert key.version_template.algorithm.name == "EC_SIGN_P256_SHA256"
            assert made["signing_key"] == f"{gcp.key}-audit"
            grants = {g["role"]: g for g in made["signing_access"]}
            for writer in ("app", "worker", "admin"):
                assert grants[writer]["grants"] == "roles/cloudkms.signer, roles/cloudkms.viewer"
                assert "cloudkms.cryptoKeyVersions.useToSign" in grants[writer]["permissions"]
                assert grants[writer]["scope"] == f"{gcp.key}-audit"
            assert grants["audit"]["grants"] == "roles/cloudkms.publicKeyViewer"
            assert grants["audit"]["permissions"] == ["cloudkms.cryptoKeyVersions.viewPublicKey"]
        finally:
            gcp.stop()

    def test_a_signing_key_that_cannot_sign_is_refused(self, tmp_path: Path) -> None:
        gcp = GCP()
        try:
            gcp.precreate()
            env = gcp.env(tmp_path) | {"HMD_AUDIT_SIGNING_KEY": gcp.key}  # ENCRYPT_DECRYPT
            result = run_cli(["gcp", "bootstrap"], env, drop=("HMD_",))
            err = result.stderr.decode()
            assert result.returncode == 4, err
            assert len(err.strip().splitlines()) == 1 and b"Traceback" not in result.stderr
        finally:
            gcp.stop()


class TestAzureDesign:
    def test_an_adopted_keys_rotation_policy_is_reported_not_changed(self, tmp_path: Path) -> None:
        azure = Azure()
        try:
            azure.precreate()
            plan = document(bootstrap(azure, tmp_path, "--json"))
            (policy,) = [s for s in plan["steps"] if s["step"].startswith("rotation policy")]
            assert policy["change"] == "unchanged"
            assert "no automatic rotation" in policy["notes"][0]
            actions = azure.admin.get_key_rotation_policy(azure.key).lifetime_actions
            # Key Vault's default policy, kept as it was.
            assert [a.action for a in actions] == [KeyRotationPolicyAction.notify]
        finally:
            azure.stop()

    def test_a_key_that_cannot_wrap_is_refused(self, tmp_path: Path) -> None:
        azure = Azure()
        try:
            azure.admin.create_rsa_key(azure.key, size=2048, key_operations=["sign", "verify"])
            result = bootstrap(azure, tmp_path)
            assert result.returncode == 4, result.stderr.decode()
            assert b"wrapKey" in result.stderr
            assert len(result.stderr.decode().strip().splitlines()) == 1
        finally:
            azure.stop()

    def test_created_key_only_wraps_and_roles_follow_the_built_in_tables(
        self, tmp_path: Path
    ) -> None:
        azure = Azure()
        try:
            document(bootstrap(azure, tmp_path, "--json", "--key-type", "RSA"))
            key = azure.admin.get_key(azure.key)
            assert sorted(str(o) for o in key.key_operations or []) == ["unwrapKey", "wrapKey"]
            policy = azure.admin.get_key_rotation_policy(azure.key)
            assert [(a.action, a.time_after_create) for a in policy.lifetime_actions] == [
                (KeyRotationPolicyAction.rotate, "P30D")
            ]
            plan = document(bootstrap(azure, tmp_path, "--json", "--dry-run"))
            grants = {g["role"]: g for g in plan["access"]}
            assert grants["app"]["grants"] == "Key Vault Crypto Service Encryption User"
            assert grants["audit"]["grants"] == "Key Vault Reader"
            admin = grants["admin"]["documents"]["custom_role"]["DataActions"]
            assert not any(a.endswith(("wrap/action", "delete", "purge/action")) for a in admin)
        finally:
            azure.stop()

    def test_the_signing_roles_sign_or_verify_and_no_more(self, tmp_path: Path) -> None:
        """The signing key's printed data actions, given to principals of the fake's RBAC:
        a writer signs, the auditor verifies and cannot sign."""
        azure = Azure()
        try:
            plan = document(bootstrap(azure, tmp_path, "--json", "--key-type", "RSA"))
            signing = azure.admin.get_key(f"{azure.key}-audit")
            assert (signing.key_type.value, signing.key.crv.value) == ("EC", "P-256")
            assert sorted(str(o) for o in signing.key_operations or []) == SIGNING_OPS
            actions = {g["role"]: frozenset(g["permissions"]) for g in plan["signing_access"]}
            assert all(a.endswith(("/read", "/sign/action")) for a in actions["app"])
            assert actions["app"] == actions["worker"] == actions["admin"]
            assert all(a.endswith(("/read", "/verify/action")) for a in actions["audit"])
            digest = hashlib.sha256(b"checkpoint").digest()
            clients = {}
            for role in ("app", "audit"):
                principal = (f"s-{role}", f"secret-{role}-" + secrets.token_hex(8))
                azure.server.vault.add_principal(*principal, actions[role])
                clients[role] = key_client(azure.server, principal)
            crypto_of = {
                role: client.get_cryptography_client(
                    f"{azure.key}-audit", key_version=signing.properties.version
                )
                for role, client in clients.items()
            }
            signed = crypto_of["app"].sign(SignatureAlgorithm.es256, digest)
            with pytest.raises(HttpResponseError):
                crypto_of["audit"].sign(SignatureAlgorithm.es256, digest)
            result = crypto_of["audit"].verify(SignatureAlgorithm.es256, digest, signed.signature)
            assert result.is_valid
            verify = [r for r in azure.server.vault.requests if r.path.endswith("/verify")]
            # The auditor may read the public key, so the SDK verifies locally with it; the
            # service's verify is allowed to it too, and refused to the writer.
            assert all(r.status == 200 for r in verify)
            for client in clients.values():
                client.close()
        finally:
            azure.stop()

    def test_the_printed_roles_are_enough_and_no_more(self, tmp_path: Path) -> None:
        """Each role's printed data actions, given to a principal of the fake's RBAC, allow
        exactly that role's operations."""
        azure = Azure()
        try:
            plan = document(bootstrap(azure, tmp_path, "--json", "--key-type", "RSA"))
            actions = {g["role"]: frozenset(g["permissions"]) for g in plan["access"]}
            providers = {}
            for role, granted in actions.items():
                principal = (f"p-{role}", f"secret-{role}-" + secrets.token_hex(8))
                azure.server.vault.add_principal(*principal, granted)
                client = key_client(azure.server, principal)
                providers[role] = AzureKeyVaultProvider(client, azure.key)
            app, admin = providers["app"], providers["admin"]
            (wrapped,) = app.wrap_many([dek := primitives.new_dek()], [{}])
            assert app.unwrap_many([wrapped.ciphertext], [{}]) == [dek]
            assert providers["worker"].unwrap_many([wrapped.ciphertext], [{}]) == [dek]
            with pytest.raises(PermissionDeniedError):
                app.rotate()
            assert admin.rotate().latest_version == 2
            assert admin.retire(2).min_decryption_version == 2
            assert providers["audit"].describe().latest_version == 2
            with pytest.raises(PermissionDeniedError):
                admin.unwrap_many([wrapped.ciphertext], [{}])  # the admin reads no value
            with pytest.raises(PermissionDeniedError):
                providers["audit"].rotate()
            for kms in providers.values():
                kms.close()
        finally:
            azure.stop()
