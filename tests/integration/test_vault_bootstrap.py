"""`heimdall-kms vault bootstrap` against a real OpenBao: idempotence, and least privilege.

The matrix logs in as each role through its real AppRole role and asks Vault for every
operation: what the role may do works, everything else is refused by Vault with HTTP 403.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import trustme

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import PermissionDeniedError
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.providers.vault.bootstrap import ROLES, BootstrapOptions, policy_hcl
from tests.servers import TRANSIT_KEY, OpenBao, start_openbao

pytestmark = pytest.mark.vault

SSN = "123-45-6789"
CTX = {"table": "customers", "field": "ssn", "record": "r1"}
PREFIX = "heimdall-kms"


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    return subprocess.run(
        [str(Path(sys.executable).with_name("heimdall-kms")), *args],
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=60,
        check=False,
    )


def bootstrap(server: OpenBao, *args: str, **env: str) -> dict[str, Any]:
    result = run(["vault", "bootstrap", "--json", *args], server.env(**env))
    assert result.returncode == 0, result.stderr
    assert server.root_token not in result.stdout + result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def changes(document: dict[str, Any]) -> dict[str, str]:
    return {step["step"]: step["change"] for step in document["steps"]}


def login(server: OpenBao, role: str) -> hvac.Client:
    """A client logged in through the role's real AppRole role (as a deployment would)."""
    root = server.client()
    name = f"{PREFIX}-{role}"
    role_id = root.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    client = hvac.Client(url=server.addr)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    return client


def approle_env(server: OpenBao, role: str) -> dict[str, str]:
    root = server.client()
    name = f"{PREFIX}-{role}"
    return server.env(
        HMD_VAULT_AUTH_METHOD="approle",
        HMD_VAULT_ROLE_ID=root.auth.approle.read_role_id(name)["data"]["role_id"],
        HMD_VAULT_SECRET_ID=root.auth.approle.generate_secret_id(name)["data"]["secret_id"],
        HMD_VAULT_TOKEN="",
    )


# -- idempotence, dry run, refusals ------------------------------------------------------------


def test_bootstrap_creates_the_design_then_changes_nothing(fresh_openbao: OpenBao) -> None:
    env = {"HMD_VAULT_TRANSIT_MOUNT": "kms", "HMD_KMS_KEY_ID": "customer-pii"}
    first = bootstrap(fresh_openbao, "--auto-rotate-period", "90d", **env)
    assert set(changes(first).values()) == {"created"}
    assert len(first["steps"]) == 4 + 4 + 1 + 4  # mount, keys, policies, approle, roles
    key = fresh_openbao.client().secrets.transit.read_key("customer-pii", mount_point="kms")["data"]
    assert key["type"] == "aes256-gcm96"
    assert key["exportable"] is False and key["allow_plaintext_backup"] is False
    assert key["deletion_allowed"] is False
    assert key["auto_rotate_period"] == 90 * 86400
    hashing = fresh_openbao.client().secrets.transit.read_key(
        "customer-pii-hmac", mount_point="kms"
    )["data"]
    # The keyed-hashing key of its own: same protections, never auto-rotated (tags are pinned).
    assert (hashing["type"], hashing["exportable"]) == ("aes256-gcm96", False)
    assert hashing["auto_rotate_period"] == 0
    signing = fresh_openbao.client().secrets.transit.read_key(
        "customer-pii-audit", mount_point="kms"
    )["data"]
    # The audit checkpoints' signing key: ed25519, not exportable, not deletable.
    assert (signing["type"], signing["exportable"]) == ("ed25519", False)
    assert signing["deletion_allowed"] is False
    second = bootstrap(fresh_openbao, "--auto-rotate-period", "90d", **env)
    assert set(changes(second).values()) == {"unchanged"}
    assert second["role_ids"] == first["role_ids"]
    assert all(re.fullmatch(r"[0-9a-f-]{36}", rid) for rid in first["role_ids"].values())
    text = run(["vault", "bootstrap"], fresh_openbao.env(**env))
    assert text.returncode == 0, text.stderr
    assert "0 created, 0 updated, 13 unchanged" in text.stdout
    assert "Secret ids are credentials and are not printed" in text.stdout


def test_dry_run_prints_hcl_and_api_calls_and_writes_nothing(fresh_openbao: OpenBao) -> None:
    result = run(["vault", "bootstrap", "--dry-run"], fresh_openbao.env())
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "would create" in out and "unchanged" in out  # the fixture's key already exists
    assert "PUT /v1/sys/policies/acl/heimdall-kms-app" in out
    assert 'POST /v1/sys/auth/approle {"type": "approle"}' in out
    assert f'path "transit/encrypt/{TRANSIT_KEY}"' in out
    assert 'path "transit/export/*" {' in out
    assert 'capabilities = ["deny"]' in out
    root = fresh_openbao.client()
    assert f"{PREFIX}-app" not in root.sys.list_policies()["data"]["policies"]
    assert "approle/" not in root.sys.list_auth_methods()["data"]


def test_a_drifted_policy_is_put_back(fresh_openbao: OpenBao) -> None:
    bootstrap(fresh_openbao)
    root = fresh_openbao.client()
    root.sys.create_or_update_policy(
        f"{PREFIX}-worker", 'path "transit/*" { capabilities = ["update"] }'
    )
    again = changes(bootstrap(fresh_openbao))
    assert again[f"policy {PREFIX}-worker"] == "updated"
    assert [c for c in again.values() if c != "unchanged"] == ["updated"]
    rules = root.sys.read_policy(f"{PREFIX}-worker")["data"]["rules"]
    assert rules == policy_hcl("worker", BootstrapOptions(key=TRANSIT_KEY))


def test_an_exportable_key_is_refused_before_anything_is_written(fresh_openbao: OpenBao) -> None:
    root = fresh_openbao.client()
    root.secrets.transit.create_key("leaky", exportable=True)
    result = run(["vault", "bootstrap"], fresh_openbao.env(HMD_KMS_KEY_ID="leaky"))
    assert result.returncode == 4
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exportable=true" in lines[0] and "Traceback" not in lines[0]
    assert f"{PREFIX}-app" not in root.sys.list_policies()["data"]["policies"]


def test_bootstrap_needs_the_vault_settings() -> None:
    result = run(["vault", "bootstrap"], {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": "/x"})
    assert result.returncode == 78
    assert result.stderr.startswith("heimdall-kms: error: HMD_KMS_PROVIDER:")


def test_secret_ids_only_on_request_and_marked_sensitive(fresh_openbao: OpenBao) -> None:
    quiet = run(["vault", "bootstrap"], fresh_openbao.env())
    assert quiet.returncode == 0, quiet.stderr
    root = fresh_openbao.client()
    with pytest.raises(hvac.exceptions.InvalidPath):  # no secret id was even generated
        root.auth.approle.list_secret_id_accessors(f"{PREFIX}-app")
    loud = run(["vault", "bootstrap", "--print-secret-ids"], fresh_openbao.env())
    assert loud.returncode == 0, loud.stderr
    assert "SENSITIVE" in loud.stderr and "SENSITIVE" in loud.stdout
    shown = loud.stdout.split("secret ids (SENSITIVE")[1]
    secret_ids = dict(re.findall(r"^  (\w+)\s+heimdall-kms-\w+\s+([0-9a-f-]{36})$", shown, re.M))
    assert set(secret_ids) == set(ROLES)
    role_id = root.auth.approle.read_role_id(f"{PREFIX}-app")["data"]["role_id"]
    client = hvac.Client(url=fresh_openbao.addr)
    client.auth.approle.login(role_id=role_id, secret_id=secret_ids["app"])
    assert client.is_authenticated()


def test_kubernetes_roles_are_bound_to_service_accounts(
    fresh_openbao: OpenBao, tmp_path: Path
) -> None:
    ca = tmp_path / "k8s-ca.pem"
    ca.write_bytes(trustme.CA().cert_pem.bytes())
    args = [
        "--kubernetes",
        "--k8s-namespace", "heimdall",
        "--k8s-service-account", "admin=ops-rotator",
        "--k8s-host", "https://k8s.example.internal:6443",
        "--k8s-ca-cert", str(ca),
    ]  # fmt: skip
    first = changes(bootstrap(fresh_openbao, *args))
    assert first["Kubernetes auth kubernetes/"] == "created"
    assert first["Kubernetes role heimdall-kms-admin (service account heimdall/ops-rotator)"] == (
        "created"
    )
    role = fresh_openbao.client().adapter.get("/v1/auth/kubernetes/role/heimdall-kms-app")["data"]
    assert role["bound_service_account_names"] == ["heimdall-kms-app"]
    assert role["bound_service_account_namespaces"] == ["heimdall"]
    assert role["token_policies"] == ["heimdall-kms-app"]
    assert set(changes(bootstrap(fresh_openbao, *args)).values()) == {"unchanged"}


# -- the least-privilege matrix -----------------------------------------------------------------

Operation = Callable[[hvac.Client, dict[str, str]], object]
K = TRANSIT_KEY
OPERATIONS: dict[str, Operation] = {
    "encrypt": lambda c, d: c.adapter.post(f"/v1/transit/encrypt/{K}", json={"plaintext": "QUJD"}),
    "decrypt": lambda c, d: c.adapter.post(
        f"/v1/transit/decrypt/{K}", json={"ciphertext": d["ciphertext"]}
    ),
    "hmac": lambda c, d: c.adapter.post(
        f"/v1/transit/hmac/{K}-hmac/sha2-256", json={"input": "QUJD"}
    ),
    "read key metadata": lambda c, d: c.adapter.get(f"/v1/transit/keys/{K}"),
    "sign an audit checkpoint": lambda c, d: c.adapter.post(
        f"/v1/transit/sign/{K}-audit", json={"input": "QUJD"}
    ),
    "verify an audit checkpoint": lambda c, d: c.adapter.post(
        f"/v1/transit/verify/{K}-audit", json={"input": "QUJD", "signature": d["signature"]}
    ),
    "rotate": lambda c, d: c.adapter.post(f"/v1/transit/keys/{K}/rotate"),
    "set min_decryption_version": lambda c, d: c.adapter.post(
        f"/v1/transit/keys/{K}/config", json={"min_decryption_version": 1}
    ),
    "rewrap": lambda c, d: c.adapter.post(
        f"/v1/transit/rewrap/{K}", json={"ciphertext": d["ciphertext"]}
    ),
    "allow deletion": lambda c, d: c.adapter.post(
        f"/v1/transit/keys/{K}/config", json={"deletion_allowed": True}
    ),
    "make exportable": lambda c, d: c.adapter.post(
        f"/v1/transit/keys/{K}/config", json={"exportable": True}
    ),
    "export": lambda c, d: c.adapter.get(f"/v1/transit/export/encryption-key/{K}"),
    "read a backup": lambda c, d: c.adapter.get(f"/v1/transit/backup/{K}"),
    "restore a backup": lambda c, d: c.adapter.post("/v1/transit/restore", json={"backup": "e30="}),
    "import key material": lambda c, d: c.adapter.post(
        f"/v1/transit/keys/{K}/import", json={"ciphertext": "e30="}
    ),
    "import a key version": lambda c, d: c.adapter.post(
        f"/v1/transit/keys/{K}/import_version", json={"ciphertext": "e30="}
    ),
    "create another key": lambda c, d: c.adapter.post("/v1/transit/keys/another"),
    "delete the key": lambda c, d: c.adapter.delete(f"/v1/transit/keys/{K}"),
    "list keys": lambda c, d: c.adapter.list("/v1/transit/keys"),
    "write a policy": lambda c, d: c.adapter.put(
        "/v1/sys/policies/acl/mine", json={"policy": 'path "*" { capabilities = ["sudo"] }'}
    ),
}
SIGN = "sign an audit checkpoint"
ALLOWED = {
    "app": {"encrypt", "decrypt", "hmac", "read key metadata", SIGN},
    "worker": {"decrypt", "read key metadata", SIGN},
    "admin": {"rotate", "set min_decryption_version", "rewrap", "read key metadata", SIGN},
    "audit": {"read key metadata", "verify an audit checkpoint"},
}
MATRIX = [
    pytest.param(role, op, op in ALLOWED[role], id=f"{role}-{op.replace(' ', '_')}")
    for role in ROLES
    for op in OPERATIONS
]


@dataclass(frozen=True)
class Bootstrapped:
    """A server vault bootstrap has set up, with a ciphertext and a signature made under its
    keys (what the roles are tried on)."""

    server: OpenBao
    data: dict[str, str]


@pytest.fixture(scope="module")
def bootstrapped() -> Iterator[Bootstrapped]:
    server = start_openbao()
    try:
        bootstrap(server)
        transit = server.client().secrets.transit
        data = {
            "ciphertext": transit.encrypt_data(K, "QUJD")["data"]["ciphertext"],
            "signature": transit.sign_data(f"{K}-audit", "QUJD")["data"]["signature"],
        }
        yield Bootstrapped(server, data)
    finally:
        server.stop()


@pytest.mark.parametrize(("role", "operation", "allowed"), MATRIX)
def test_each_role_may_do_its_job_and_nothing_else(
    bootstrapped: Bootstrapped, role: str, operation: str, allowed: bool
) -> None:
    server = bootstrapped.server
    data = bootstrapped.data
    client = login(server, role)
    call = OPERATIONS[operation]
    if allowed:
        call(client, data)
    else:
        with pytest.raises(hvac.exceptions.Forbidden):  # HTTP 403 from Vault itself
            call(client, data)


def test_the_explicit_deny_wins_over_a_broader_policy(
    bootstrapped: Bootstrapped,
) -> None:
    server = bootstrapped.server
    root = server.client()
    root.sys.create_or_update_policy("too-broad", 'path "transit/*" { capabilities = ["read"] }')
    broad = root.auth.token.create(policies=["too-broad"], ttl="5m")["auth"]["client_token"]
    with pytest.raises(hvac.exceptions.InvalidRequest):  # allowed, but the key is not exportable
        server.client(broad).adapter.get(f"/v1/transit/export/encryption-key/{K}")
    both = root.auth.token.create(policies=["too-broad", f"{PREFIX}-app"], ttl="5m")
    client = server.client(both["auth"]["client_token"])
    for path in (f"/v1/transit/export/encryption-key/{K}", f"/v1/transit/backup/{K}"):
        with pytest.raises(hvac.exceptions.Forbidden):
            client.adapter.get(path)


def test_the_roles_through_the_facade(bootstrapped: Bootstrapped) -> None:
    server = bootstrapped.server
    with heimdall_kms.from_env(approle_env(server, "app"), audit=MemoryAuditSink()) as app:
        envelope = app.encrypt(SSN, context=CTX)
        assert app.decrypt(envelope, actor="a", reason="r", context=CTX) == SSN
        assert app.hmac_many([SSN])[0].startswith("hmac:vault:v")
    with heimdall_kms.from_env(approle_env(server, "worker"), audit=MemoryAuditSink()) as worker:
        assert worker.decrypt(envelope, actor="etl", reason="enrich") == SSN
        with pytest.raises(PermissionDeniedError):
            worker.encrypt(SSN, context=CTX)
    admin_settings = Settings.from_env(approle_env(server, "admin"))
    admin = load_provider(admin_settings)
    try:
        result = rotate(admin, MemoryAuditSink(), actor="t", if_due=False, cadence=timedelta(90))
        assert result.new_version == result.old_version + 1
    finally:
        admin.close()
    with heimdall_kms.from_env(approle_env(server, "admin"), audit=MemoryAuditSink()) as crypto:
        assert isinstance(envelope, KmsV1Envelope)
        (rewrapped,) = crypto.rewrap_outcomes([envelope])
        assert isinstance(rewrapped, KmsV1Envelope)
        assert rewrapped.key_version > envelope.key_version
        with pytest.raises(PermissionDeniedError):  # separation of duties: no plaintext
            crypto.decrypt(envelope, actor="a", reason="r")
    with heimdall_kms.from_env(approle_env(server, "audit"), audit=MemoryAuditSink()) as audit:
        assert audit.kms is not None and audit.kms.describe().latest_version >= 2
        with pytest.raises(PermissionDeniedError):
            audit.decrypt(envelope, actor="a", reason="r")


def test_the_documented_policies_are_the_ones_written() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "vault-bootstrap.md"
    text = doc.read_text(encoding="utf-8")
    for role in ROLES:
        assert f"```hcl\n{policy_hcl(role, BootstrapOptions(key=TRANSIT_KEY))}```" in text, role


class TestBootstrapAuditsTheKey:
    """Issue 15 low: creating the master key writes key.create (its intent first)."""

    def test_creating_the_key_is_audited_once(self, fresh_openbao: OpenBao, tmp_path: Path) -> None:
        log = tmp_path / "audit.log"
        env = {"HMD_KMS_KEY_ID": "customer-pii", "HMD_AUDIT_LOG": str(log)}
        result = run(["vault", "bootstrap", "--actor", "ops-alice"], fresh_openbao.env(**env))
        assert result.returncode == 0, result.stderr
        events = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(e["event_type"], e["result"]) for e in events] == [
            ("key.create", "intent"),
            ("key.create", "success"),
        ]
        assert {e["key_identifier"] for e in events} == {"customer-pii"}
        assert events[1]["actor"] == "ops-alice" and events[1]["key_version"] == 1
        assert fresh_openbao.root_token not in log.read_text()
        again = run(["vault", "bootstrap"], fresh_openbao.env(**env))
        assert again.returncode == 0, again.stderr
        assert len(log.read_text().splitlines()) == 2  # nothing created, nothing to audit

    def test_with_an_unwritable_audit_log_nothing_is_created(
        self, fresh_openbao: OpenBao, tmp_path: Path
    ) -> None:
        (tmp_path / "audit.log").mkdir()  # a directory: the log cannot be opened
        env = {"HMD_KMS_KEY_ID": "customer-pii", "HMD_AUDIT_LOG": str(tmp_path / "audit.log")}
        result = run(["vault", "bootstrap"], fresh_openbao.env(**env))
        assert result.returncode == 74, result.stderr
        keys = fresh_openbao.client().secrets.transit.list_keys()["data"]["keys"]
        assert "customer-pii" not in keys
