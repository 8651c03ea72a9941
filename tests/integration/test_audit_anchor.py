"""Signed checkpoints and the off-host anchor (issue 24): real OpenBao Transit signing, AWS KMS
``Sign`` on moto, GCP ``asymmetricSign`` and Azure ``sign`` on the wire-level fakes, the local
dev keyring, and PostgreSQL anchors created with the documented SQL.

Every scenario writes events with anchoring on through the facade (as an application would),
damages what a host root could damage (the log, its checkpoint files) and runs
``heimdall-kms audit verify --anchor``: in this process (the CLI's ``main``, with the
environment the installed command would get), and as the installed command for one scenario
per signer (an installed run costs a second or more of imports).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.cloud import kms_v1

import heimdall_kms
from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result
from heimdall_kms.audit.anchor import anchor_sql
from heimdall_kms.audit.chain import GENESIS, seal_line
from heimdall_kms.audit.checkpoint import (
    Checkpoint,
    Signer,
    checkpoints_path,
    parse_checkpoint,
)
from heimdall_kms.audit.cloud_signers import AzureSigner, GCPSigner
from heimdall_kms.audit.signers import AWSSigner, LocalSigner, VaultSigner
from heimdall_kms.cli import main
from heimdall_kms.metrics import default_metrics
from heimdall_kms.providers.local import LocalKeyring
from tests.contract.backends.azure import ADMIN as AZURE_ADMIN
from tests.contract.backends.azure import key_client as azure_client
from tests.contract.backends.gcp import LOCATION as GCP_LOCATION
from tests.contract.backends.gcp import create_signing_key
from tests.contract.backends.gcp import rest_client as gcp_client
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    CRYPTO_SERVICE_ENCRYPTION_USER,
    FakeKeyVaultServer,
    start_fake_key_vault,
)
from tests.fakes.azure_kv_http import READ as AZURE_READ
from tests.fakes.azure_kv_http import SIGN as AZURE_SIGN
from tests.fakes.azure_kv_http import VERIFY as AZURE_VERIFY
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.servers import TRANSIT_KEY, OpenBao, run_cli
from tests.servers_aws import MotoServer, start_moto

SIGNING_KEY = f"{TRANSIT_KEY}-audit"


@dataclass
class Anchor:
    table: str
    writer_url: str
    reader_url: str
    admin_url: str

    def rows(self) -> int:
        with psycopg.connect(self.admin_url) as connection:
            found = connection.execute(f"SELECT count(*) FROM {self.table}").fetchone()
        return int(found[0]) if found else 0


@pytest.fixture
def anchor(postgres_url: str) -> Iterator[Anchor]:
    """A table and its two roles, made by exactly the SQL docs/audit.md gives."""
    name = f"anchor_{secrets.token_hex(4)}"
    writer, reader = f"{name}_writer", f"{name}_reader"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(anchor_sql(name, writer, reader).encode())
    base = postgres_url.split("://", 1)[1].split("@", 1)[1]
    yield Anchor(
        name, f"postgresql://{writer}@{base}", f"postgresql://{reader}@{base}", postgres_url
    )
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(f"DROP TABLE {name}")
        connection.execute(f"DROP ROLE {writer}")
        connection.execute(f"DROP ROLE {reader}")


@dataclass
class Backend:
    """Where the signing key lives: the writer's and the verifier's settings, and a signer
    with another key (a forger's)."""

    name: str
    writer: dict[str, str]
    verifier: dict[str, str]
    other: Signer
    rotate: Callable[[], None] | None  # None: the KMS does not rotate such keys


def _local(tmp: Path) -> Backend:
    keyring = tmp / "keyring.json"
    LocalKeyring(keyring).ensure_key(TRANSIT_KEY)
    env = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(keyring),
        "HMD_AUDIT_SIGNING_KEY": SIGNING_KEY,
    }
    forger = LocalKeyring(tmp / "forger.json")
    ring = LocalKeyring(keyring)

    def rotate() -> None:
        ring.update_key(SIGNING_KEY, ring.add_version)

    return Backend("local", env, dict(env), LocalSigner(forger, SIGNING_KEY), rotate)


def _vault(server: OpenBao) -> Backend:
    root = server.client()
    keys = root.secrets.transit.list_keys()["data"]["keys"]
    for name in (SIGNING_KEY, "forger-audit"):
        if name not in keys:
            root.secrets.transit.create_key(name, key_type="ed25519")
    # The verifier holds what the bootstrap's audit role has: verify, and read key metadata.
    root.sys.create_or_update_policy(
        "anchor-verify-only",
        f'path "transit/verify/{SIGNING_KEY}" {{ capabilities = ["update"] }}\n'
        f'path "transit/keys/{TRANSIT_KEY}" {{ capabilities = ["read"] }}',
    )
    token = root.auth.token.create(policies=["anchor-verify-only"], ttl="1h")["auth"]
    writer = server.env(HMD_AUDIT_SIGNING_KEY=SIGNING_KEY)
    verifier = server.env(HMD_AUDIT_SIGNING_KEY=SIGNING_KEY, HMD_VAULT_TOKEN=token["client_token"])

    def rotate() -> None:
        root.secrets.transit.rotate_key(SIGNING_KEY)

    return Backend("vault", writer, verifier, VaultSigner(root, "forger-audit"), rotate)


def _aws(server: MotoServer) -> Backend:
    client = server.client()
    encryption = client.create_key()["KeyMetadata"]["KeyId"]

    def signing_key() -> str:
        made = client.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
        return str(made["KeyMetadata"]["KeyId"])

    env = server.env(encryption, HMD_AUDIT_SIGNING_KEY=signing_key())
    # AWS asymmetric keys do not rotate: a new key is a new HMD_AUDIT_SIGNING_KEY, or the alias
    # re-pointed (TestAWSSigningKeyRotation).
    return Backend("aws", env, dict(env), AWSSigner(client, signing_key()), None)


def _gcp(server: FakeKMSServer) -> Backend:
    """The fake Cloud KMS (anonymous: its IAM for these roles is tested in
    test_cloud_signers.py): an ENCRYPT_DECRYPT key, and EC_SIGN_P256_SHA256 signing keys."""
    admin = gcp_client(server.url)
    ring = admin.create_key_ring(
        request={"parent": GCP_LOCATION, "key_ring_id": f"a{secrets.token_hex(4)}"}
    ).name
    master = admin.create_crypto_key(
        request={
            "parent": ring,
            "crypto_key_id": "pii",
            "crypto_key": {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT},
        }
    ).name

    key = create_signing_key(admin, ring, "pii-audit")
    env = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "gcp",
        "HMD_KMS_KEY_ID": str(master),
        "HMD_GCP_KMS_ENDPOINT": server.url,
        "HMD_GCP_TRANSPORT": "rest",
        "HMD_GCP_CREDENTIALS": "anonymous",
        "HMD_AUDIT_SIGNING_KEY": key,
    }

    def rotate() -> None:  # a new version: the signer signs with the newest enabled one
        admin.create_crypto_key_version(request={"parent": key, "crypto_key_version": {}})

    forger = GCPSigner(admin, create_signing_key(admin, ring, "forger-audit"))
    return Backend("gcp", env, dict(env), forger, rotate)


def _azure(server: FakeKeyVaultServer) -> Backend:
    """The fake Key Vault with the principals `azure bootstrap` prints: the writer may wrap,
    unwrap, read and sign; the auditor only read and verify."""
    writer = ("anchor-writer", "w-" + secrets.token_hex(8))
    auditor = ("anchor-auditor", "a-" + secrets.token_hex(8))
    server.vault.add_principal(*AZURE_ADMIN, CRYPTO_OFFICER)
    server.vault.add_principal(*writer, CRYPTO_SERVICE_ENCRYPTION_USER | {AZURE_SIGN})
    server.vault.add_principal(*auditor, frozenset({AZURE_READ, AZURE_VERIFY}))
    admin = azure_client(server)
    name = f"pii-{secrets.token_hex(3)}"
    admin.create_rsa_key(name, size=2048)
    for key in (f"{name}-audit", f"{name}-forger"):
        admin.create_ec_key(key, curve="P-256", key_operations=["sign", "verify"])

    def env(principal: tuple[str, str]) -> dict[str, str]:
        return {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "azure",
            "HMD_KMS_KEY_ID": server.key_url(name),
            "HMD_AZURE_CA_BUNDLE": str(server.ca_pem),
            "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
            "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "true",
            "HMD_AUDIT_SIGNING_KEY": f"{name}-audit",
            "AZURE_TENANT_ID": server.vault.tenant,
            "AZURE_CLIENT_ID": principal[0],
            "AZURE_CLIENT_SECRET": principal[1],
            "AZURE_AUTHORITY_HOST": server.url,
            "REQUESTS_CA_BUNDLE": str(server.ca_pem),
        }

    def rotate() -> None:
        admin.rotate_key(f"{name}-audit")

    forger = AzureSigner(admin, f"{name}-forger")
    return Backend("azure", env(writer), env(auditor), forger, rotate)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake_gcp() -> Iterator[FakeKMSServer]:
    server = start_fake_kms()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fake_azure() -> Iterator[FakeKeyVaultServer]:
    server = start_fake_key_vault()
    yield server
    server.stop()


@pytest.fixture(params=["local", "vault", "aws", "gcp", "azure"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "local":
        return _local(tmp_path)
    if request.param in ("aws", "azure"):
        made = (
            _aws(request.getfixturevalue("moto"))
            if request.param == "aws"
            else _azure(request.getfixturevalue("fake_azure"))
        )
        for name, value in made.writer.items():
            # boto3 and DefaultAzureCredential read their credentials from the process.
            if name.startswith(("AWS_", "AZURE_", "REQUESTS_")):
                monkeypatch.setenv(name, value)
        return made
    if request.param == "gcp":
        return _gcp(request.getfixturevalue("fake_gcp"))
    return _vault(request.getfixturevalue("openbao"))


@dataclass
class World:
    backend: Backend
    anchor: Anchor
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **self.backend.writer,
            "HMD_AUDIT_LOG": str(self.log),
            "HMD_AUDIT_ANCHOR": self.anchor.writer_url,
            "HMD_AUDIT_ANCHOR_TABLE": self.anchor.table,
            "HMD_AUDIT_CHECKPOINT_LINES": "1000",
            **extra,
        }

    def write(self, count: int, **extra: str) -> None:
        """One application run: ``count`` encrypts, then close (the closing checkpoint)."""
        with heimdall_kms.from_env(self.env(**extra)) as crypto:
            for number in range(count):
                crypto.encrypt(f"value {number}", context={"field": "ssn"}, actor="app")

    def verifier_env(self, **extra: str) -> dict[str, str]:
        return {
            **self.backend.verifier,
            "HMD_AUDIT_LOG": str(self.log),
            "HMD_AUDIT_ANCHOR_TABLE": self.anchor.table,
            "HMD_AUDIT_LOG_ID": self.env()["HMD_AUDIT_LOG_ID"],
            **extra,
        }

    def verify(
        self, *, installed: bool = False, **extra: str
    ) -> subprocess.CompletedProcess[bytes]:
        """``audit verify --anchor`` as the verifier: in this process, or ``installed``."""
        args = ["audit", "verify", str(self.log), "--anchor", self.anchor.reader_url, "--json"]
        return (run_cli if installed else run_in_process)(args, self.verifier_env(**extra))

    def compliance(self) -> dict[str, dict[str, object]]:
        """The compliance report's anchor evidence and its log-protection control."""
        args = ["compliance", "report", "--anchor", self.anchor.reader_url, "--json"]
        done = run_in_process(args, self.verifier_env())
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout)
        (control,) = [
            r for r in document["controls"] if r["control"].startswith("PCI DSS v4.0 10.3")
        ]
        return {"evidence": document["evidence"]["audit_anchor"], "control": control}

    def report(
        self, *, installed: bool = False, **extra: str
    ) -> tuple[int, dict[str, object], str]:
        done = self.verify(installed=installed, **extra)
        stdout = done.stdout.decode()
        return done.returncode, json.loads(stdout) if stdout else {}, done.stderr.decode()

    def remove_log(self) -> None:
        for path in (self.log, self.log.with_name(self.log.name + ".head"), self.sidecar):
            path.unlink()

    @property
    def sidecar(self) -> Path:
        return checkpoints_path(self.log)


def run_in_process(args: Sequence[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """The CLI's ``main`` in this process, with the environment :func:`run_cli` gives the
    installed command (this process's without HMD_* and VAULT_*, plus ``env``), restored
    afterwards; its exit code and output as a finished process's."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("HMD_", "VAULT_"))]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    return subprocess.CompletedProcess(
        list(args), code, out.getvalue().encode(), err.getvalue().encode()
    )


def _world(backend: Backend, anchor: Anchor, tmp_path: Path) -> World:
    made = World(backend, anchor, tmp_path / "audit.log")
    # One log id for writer and verifier (both default to <host>:<path>; fixed for the test).
    made.backend.writer["HMD_AUDIT_LOG_ID"] = f"test:{secrets.token_hex(4)}"
    return made


@pytest.fixture
def world(backend: Backend, anchor: Anchor, tmp_path: Path) -> World:
    return _world(backend, anchor, tmp_path)


class TestAnchoredVerify:
    def test_the_untouched_log_of_two_runs_verifies(self, world: World) -> None:
        world.write(4)
        world.write(3)
        code, report, stderr = world.report(installed=True)
        assert code == 0, stderr
        assert report["result"] == "intact" and report["lines"] == 7
        assert report["checkpoints"] == report["anchored_checkpoints"] == 2
        assert report["last_signed_checkpoint"]["seq"] == 7  # type: ignore[index]
        assert world.anchor.rows() == 2

    def test_rotating_the_signing_key_keeps_old_checkpoints_verifiable(self, world: World) -> None:
        if world.backend.rotate is None:
            pytest.skip(f"{world.backend.name} keys do not rotate: see TestAWSSigningKeyRotation")
        world.write(2)
        world.backend.rotate()
        world.write(2)
        versions = [
            parse_checkpoint(line).signature.split(":")[1]
            for line in world.sidecar.read_text().splitlines()
        ]
        assert versions[0] != versions[-1]  # signed by two versions of the key
        code, report, stderr = world.report()
        assert code == 0, stderr
        assert report["checkpoints"] == 2 and report["result"] == "intact"

    def test_a_deleted_and_restarted_log_fails_naming_the_missing_range(self, world: World) -> None:
        world.write(7)
        world.remove_log()
        world.write(3)  # the tool starts a fresh, perfectly valid chain
        plain = run_in_process(["audit", "verify", str(world.log)], {})
        assert plain.returncode == 0, plain.stderr  # the chain alone cannot tell
        code, report, stderr = world.report()
        assert code == 5 and report["result"] == "tampered"
        assert "seq 1..7" in stderr and "deleted and restarted" in stderr

    def test_a_deleted_log_fails(self, world: World) -> None:
        world.write(5)
        world.remove_log()
        code, _, stderr = world.report()
        assert code == 5 and "seq 1..5 " in stderr and "missing" in stderr and "deleted" in stderr

    def test_a_consistently_rewritten_chain_fails(self, world: World) -> None:
        world.write(6)
        lines = [json.loads(line) for line in world.log.read_text().splitlines()]
        prev, rewritten = GENESIS, []
        for seq, event in enumerate(lines, start=1):
            body = {k: v for k, v in event.items() if k not in ("seq", "prev_hash", "hash")}
            body["actor"] = "someone-else"
            line, prev = seal_line(body, seq, prev)
            rewritten.append(line)
        world.log.write_text("".join(rewritten))
        head = world.log.with_name(world.log.name + ".head")
        head.write_text(json.dumps({"seq": len(lines), "hash": prev}).ljust(127) + "\n")
        world.sidecar.unlink()
        assert run_in_process(["audit", "verify", str(world.log)], {}).returncode == 0
        code, _, stderr = world.report()
        assert code == 5 and "seq 1..6" in stderr and "rewritten" in stderr

    def test_a_truncated_tail_fails(self, world: World) -> None:
        world.write(6)
        kept = world.log.read_text().splitlines(keepends=True)[:4]
        world.log.write_text("".join(kept))
        last = json.loads(kept[-1])
        head = world.log.with_name(world.log.name + ".head")
        head.write_text(json.dumps({"seq": 4, "hash": last["hash"]}).ljust(127) + "\n")
        world.sidecar.unlink()
        assert run_in_process(["audit", "verify", str(world.log)], {}).returncode == 0
        code, _, stderr = world.report()
        assert code == 5 and "seq 5..6" in stderr and "the log ends at seq 4" in stderr

    def test_a_signature_by_another_key_fails(self, world: World) -> None:
        world.write(3)
        genuine = parse_checkpoint(world.sidecar.read_text().splitlines()[-1])
        forged = replace(genuine, signature=world.backend.other.sign(genuine.message()))
        with world.sidecar.open("a") as handle:
            handle.write(forged.to_json() + "\n")
        code, report, stderr = world.report()
        assert code == 5 and "does not verify" in stderr
        assert report["result"] == "tampered"

    def test_a_killed_writer_is_a_crash_not_tampering(self, world: World) -> None:
        script = (
            "import heimdall_kms, os, sys, time\n"
            "c = heimdall_kms.from_env(os.environ)\n"
            "c.encrypt_many([(f'v{i}', {'field': 'ssn'}) for i in range(5)], actor='app')\n"
            "side = sys.argv[1]\n"
            "while not os.path.exists(side) or not open(side).read().endswith('\\n'):\n"
            "    time.sleep(0.02)\n"
            "c.encrypt('v5', context={'field': 'ssn'}, actor='app')\n"
            "c.encrypt('v6', context={'field': 'ssn'}, actor='app')\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n"
        )
        env = {**_inherited(), **world.env(HMD_AUDIT_CHECKPOINT_LINES="5")}
        child = subprocess.Popen(
            [sys.executable, "-c", script, str(world.sidecar)], env=env, stdout=subprocess.PIPE
        )
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        time.sleep(0.3)  # the anchor thread inserts the checkpoint it has
        child.send_signal(signal.SIGKILL)
        child.wait()
        code, report, stderr = world.report()
        assert code == 3, stderr  # not 5: nothing the anchor recorded is missing
        assert report["result"] == "unsigned_tail"
        assert report["unsigned_tail"] == {"from_seq": 6, "to_seq": 7}
        assert "a crash" in stderr and "tamper" not in stderr

    def test_a_head_checkpoint_left_behind_by_a_kill_is_still_a_crash(self, world: World) -> None:
        world.write(4)  # signed and anchored up to seq 4 (the closing checkpoint)
        sink = FileAuditSink(world.log)  # two unsigned lines, as from a writer later killed
        sink.emit([AuditEvent(EventType.DECRYPT, "app", f"r{n}", Result.SUCCESS) for n in (5, 6)])
        sink.close()
        fifth = json.loads(world.log.read_text().splitlines()[4])["hash"]
        head = world.log.with_name(world.log.name + ".head")
        head.write_text(json.dumps({"seq": 5, "hash": fifth}).ljust(127) + "\n")  # the kill
        assert run_in_process(["audit", "verify", str(world.log)], {}).returncode == 3
        code, report, stderr = world.report()
        assert code == 3, stderr
        assert report["result"] == "unsigned_tail"
        assert report["unsigned_tail"] == {"from_seq": 5, "to_seq": 6}
        assert any("after the checkpoint at seq 5" in note for note in report["notes"])


@dataclass
class AWSRotation:
    """Three AWS signing keys on moto: ``a`` before the rotation, ``b`` after it, ``c`` a key a
    host root made on its own; ``alias`` the writers sign with (it names ``a`` first)."""

    world: World
    client: Any
    alias: str
    arns: dict[str, str]

    def rotate(self, how: str) -> dict[str, str]:
        """Rotate from ``a`` to ``b`` as ``how`` says; the signing key setting from then on."""
        if how == "alias re-pointed":
            self.client.update_alias(AliasName=self.alias, TargetKeyId=self.arns["b"])
            return {}
        return {"HMD_AUDIT_SIGNING_KEY": self.arns["b"]}

    def signed(self) -> list[tuple[Checkpoint, str]]:
        """Each checkpoint of the log's sidecar and the ARN its signature records."""
        found = [parse_checkpoint(line) for line in self.world.sidecar.read_text().splitlines()]
        return [
            (c, c.signature.removeprefix("aws:ECDSA_SHA_256:").rsplit(":", 1)[0]) for c in found
        ]


@pytest.fixture
def aws_rotation(
    moto: MotoServer, anchor: Anchor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AWSRotation:
    client = moto.client()
    arns = {
        name: str(
            client.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["Arn"]
        )
        for name in "abc"
    }
    alias = f"alias/pii-{secrets.token_hex(4)}-audit"
    client.create_alias(AliasName=alias, TargetKeyId=arns["a"])
    env = moto.env(client.create_key()["KeyMetadata"]["KeyId"], HMD_AUDIT_SIGNING_KEY=alias)
    for name, value in env.items():
        if name.startswith("AWS_"):  # boto3 reads its credentials from the process
            monkeypatch.setenv(name, value)
    backend = Backend("aws", env, dict(env), AWSSigner(client, arns["c"]), None)
    return AWSRotation(_world(backend, anchor, tmp_path), client, alias, arns)


@pytest.mark.parametrize("how", ["alias re-pointed", "setting changed"])
class TestAWSSigningKeyRotation:
    """AWS asymmetric keys do not rotate: a rotation is a new key, and the verifier trusts the
    old one only when HMD_AUDIT_PREVIOUS_SIGNING_KEYS lists its ARN."""

    def _rotated(self, rotation: AWSRotation, how: str) -> dict[str, str]:
        rotation.world.write(5, HMD_AUDIT_CHECKPOINT_LINES="2")  # signed by a
        after = rotation.rotate(how)
        rotation.world.write(3, HMD_AUDIT_CHECKPOINT_LINES="2", **after)  # signed by b
        return after

    def test_old_checkpoints_verify_with_the_old_key_listed(
        self, aws_rotation: AWSRotation, how: str
    ) -> None:
        after = self._rotated(aws_rotation, how)
        arns = {arn for _, arn in aws_rotation.signed()}
        assert arns == {aws_rotation.arns["a"], aws_rotation.arns["b"]}
        listed = {"HMD_AUDIT_PREVIOUS_SIGNING_KEYS": aws_rotation.arns["a"], **after}
        code, report, stderr = aws_rotation.world.report(**listed)
        assert code == 0, stderr
        assert report["result"] == "intact" and report["lines"] == 8
        assert report["checkpoints"] == len(aws_rotation.signed())

    def test_without_the_old_key_listed_verify_fails_naming_the_range(
        self, aws_rotation: AWSRotation, how: str
    ) -> None:
        after = self._rotated(aws_rotation, how)
        by_a = [c for c, arn in aws_rotation.signed() if arn == aws_rotation.arns["a"]]
        code, report, stderr = aws_rotation.world.report(**after)
        assert code == 5 and report["result"] == "tampered"
        first, last = min(c.seq for c in by_a), max(c.seq for c in by_a)
        assert f"seq {first}..{last}: {len(by_a)} checkpoint(s)" in stderr
        assert aws_rotation.arns["a"] in stderr and "HMD_AUDIT_PREVIOUS_SIGNING_KEYS" in stderr
        assert min(c.time for c in by_a) in stderr

    @pytest.mark.parametrize("relabelled", [False, True], ids=["c", "c-as-a"])
    def test_a_checkpoint_signed_by_an_unlisted_key_fails(
        self, aws_rotation: AWSRotation, how: str, relabelled: bool
    ) -> None:
        """Key c signs a checkpoint (recording its own ARN, or a's): neither verifies."""
        after = self._rotated(aws_rotation, how)
        genuine, _ = aws_rotation.signed()[-1]
        signature = aws_rotation.world.backend.other.sign(genuine.message())
        if relabelled:
            signature = signature.replace(aws_rotation.arns["c"], aws_rotation.arns["a"])
        with aws_rotation.world.sidecar.open("a") as handle:
            handle.write(replace(genuine, signature=signature).to_json() + "\n")
        listed = {"HMD_AUDIT_PREVIOUS_SIGNING_KEYS": aws_rotation.arns["a"], **after}
        code, report, stderr = aws_rotation.world.report(**listed)
        assert code == 5 and report["result"] == "tampered"
        named = aws_rotation.arns["a" if relabelled else "c"]
        assert f"seq {genuine.seq}..{genuine.seq}: 1 checkpoint(s)" in stderr and named in stderr
        assert len(report["problems"]) == 1  # type: ignore[arg-type]


class TestAWSSignaturesWrittenBeforeTheyNamedTheirKey:
    """``aws:ECDSA_SHA_256:<signature>`` (no key ARN), the form checkpoints had before
    rotation was supported, still verifies — with the configured key only."""

    def test_the_configured_keys_old_form_verifies_and_another_keys_does_not(
        self, moto: MotoServer
    ) -> None:
        client = moto.client()
        a, c = (
            str(
                client.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"][
                    "Arn"
                ]
            )
            for _ in range(2)
        )
        message = b"seq=7 hash=abc"

        def unnamed(signer: AWSSigner) -> str:
            return "aws:ECDSA_SHA_256:" + signer.sign(message).rsplit(":", 1)[1]

        verifier = AWSSigner(client, a, previous=[c])  # even a listed key is not asked for it
        assert verifier.verify_many(
            [
                (message, unnamed(AWSSigner(client, a))),
                (b"seq=7 hash=abd", unnamed(AWSSigner(client, a))),
                (message, unnamed(AWSSigner(client, c))),
                (message, "aws:ECDSA_SHA_256:not base64!"),
            ]
        ) == [True, False, False, False]


class TestVerifyingALogInUse:
    def test_a_busy_writer_is_never_reported_as_tampering(
        self, anchor: Anchor, tmp_path: Path
    ) -> None:
        world = _world(_local(tmp_path), anchor, tmp_path)  # a race on this host: any signer
        script = (
            "import heimdall_kms, os\n"
            "c = heimdall_kms.from_env(os.environ)\n"
            "while True:\n"
            "    c.encrypt('v', context={'field': 'ssn'}, actor='app')\n"
        )
        env = {**_inherited(), **world.env(HMD_AUDIT_CHECKPOINT_LINES="1")}
        child = subprocess.Popen([sys.executable, "-c", script], env=env)
        try:
            while not world.sidecar.exists():
                time.sleep(0.05)
            codes = [world.report()[0] for _ in range(4)]
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert set(codes) <= {0, 3}, codes  # intact, or an unsigned tail: never 5


def _inherited() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}


class TestComplianceEvidence:
    def test_the_report_claims_log_protection_only_when_the_anchor_vouches(
        self, world: World
    ) -> None:
        world.write(4)
        intact = world.compliance()
        assert intact["evidence"]["holds"] is True and intact["control"]["supported"] is True
        assert intact["evidence"]["result"] == "intact"
        kept = world.log.read_text().splitlines(keepends=True)[:2]
        world.log.write_text("".join(kept))
        world.log.with_name(world.log.name + ".head").unlink()
        cut = world.compliance()
        assert cut["evidence"]["holds"] is False and cut["control"]["supported"] is False
        assert cut["evidence"]["result"] == "tampered"


class TestDrills:
    def test_a_compromise_drill_signs_and_checks_its_own_log(
        self, openbao: OpenBao, anchor: Anchor, tmp_path: Path
    ) -> None:
        backend = _vault(openbao)
        env = {
            **backend.writer,
            "HMD_AUDIT_ANCHOR": anchor.writer_url,
            "HMD_AUDIT_ANCHOR_TABLE": anchor.table,
        }
        workdir = tmp_path / "drill"
        args = ["drill", "compromise", "--workdir", str(workdir), "--records", "20", "--json"]
        done = run_cli(args, env, timeout=300)
        assert done.returncode == 0, done.stderr
        steps = {s["name"]: s for s in json.loads(done.stdout)["steps"]}
        checked = steps["verify audit chain"]
        assert checked["ok"] is True and checked["details"]["signed_checkpoints"] >= 1
        log = workdir / "audit.log"
        last = parse_checkpoint(checkpoints_path(log).read_text().splitlines()[-1])
        assert last.signature.startswith("vault:v") and anchor.rows() >= 1
        # The drill's log is anchored too: removing it afterwards shows.
        verifier = {
            **backend.verifier,
            "HMD_AUDIT_ANCHOR_TABLE": anchor.table,
            "HMD_AUDIT_LOG_ID": last.log_id,
        }
        log.unlink()
        verify = ["audit", "verify", str(log), "--anchor", anchor.reader_url]
        assert run_cli(verify, verifier).returncode == 5


class TestAnchorRoles:
    """The docs' SQL makes a writer role that may only INSERT and a reader that may only read."""

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE {t} SET seq = 0",
            "DELETE FROM {t}",
            "TRUNCATE {t}",
            "SELECT * FROM {t}",
            "ALTER TABLE {t} ADD COLUMN x int",
            "DROP TABLE {t}",
        ],
    )
    def test_the_writer_may_only_insert(self, anchor: Anchor, statement: str) -> None:
        with psycopg.connect(anchor.writer_url, autocommit=True) as connection:
            connection.execute(
                f"INSERT INTO {anchor.table} (log_id, seq, hash, signed_at, checkpoint) "
                "VALUES ('l', 1, 'h', now(), '{{}}')"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement.format(t=anchor.table).encode())

    @pytest.mark.parametrize(
        "statement",
        [
            "INSERT INTO {t} (log_id, seq, hash, signed_at, checkpoint) "
            "VALUES ('l', 1, 'h', now(), 'x')",
            "UPDATE {t} SET seq = 0",
            "DELETE FROM {t}",
        ],
    )
    def test_the_reader_may_only_read(self, anchor: Anchor, statement: str) -> None:
        with psycopg.connect(anchor.reader_url, autocommit=True) as connection:
            connection.execute(f"SELECT count(*) FROM {anchor.table}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement.format(t=anchor.table).encode())

    def test_the_documented_sql_is_the_one_tested(self) -> None:
        doc = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
        assert f"```sql\n{anchor_sql()}```" in doc.read_text(encoding="utf-8")


class TestAnchorNeverBlocks:
    def test_an_unanswering_anchor_costs_no_operation_time(self, tmp_path: Path) -> None:
        backend = _local(tmp_path)  # the anchor's path is the same whatever signs
        listener, stop = _silent_server()
        log = tmp_path / "audit.log"
        env = {
            **backend.writer,
            "HMD_AUDIT_LOG": str(log),
            "HMD_AUDIT_ANCHOR": f"postgresql://w@127.0.0.1:{listener}/test",
            "HMD_AUDIT_CHECKPOINT_LINES": "2",
        }
        failures = default_metrics().audit_checkpoint_failures.labels("anchor")
        before = failures._value.get()
        try:
            started = time.monotonic()
            with heimdall_kms.from_env(env) as crypto:
                slowest = max(
                    _timed(lambda: crypto.encrypt("v", context={"field": "f"})) for _ in range(6)
                )
            total = time.monotonic() - started
        finally:
            stop()
        assert slowest < 0.5  # no operation waits for the anchor
        assert total < 15  # close waits a bounded time for it
        assert checkpoints_path(log).read_text().count("\n") >= 1  # kept on the host
        assert failures._value.get() > before  # and counted


def _timed(call: Callable[[], object]) -> float:
    start = time.monotonic()
    call()
    return time.monotonic() - start


def _silent_server() -> tuple[int, Callable[[], None]]:
    """A TCP port that accepts connections and never answers (a hung anchor)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()

    return server.getsockname()[1], stop
