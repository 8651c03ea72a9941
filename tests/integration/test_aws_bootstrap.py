"""``heimdall-kms aws bootstrap`` and the installed command on a key as AWS users have one.

Everything against moto_server with the installed ``heimdall-kms``: moto models CreateKey,
aliases, EnableKeyRotation, RotateKeyOnDemand and ListKeyRotations.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heimdall_kms.envelope import KmsV1Envelope, parse
from tests.legacy_data import legacy_envelope
from tests.servers import run_cli
from tests.servers_aws import MotoServer, start_moto

MASTER_HEX = "cd" * 32
PURPOSE = {"kms:EncryptionContext:heimdall-purpose": "data-key"}
# Written out here, independently of the code: what each role may do, and nothing more.
NATIVE_ACTIONS = {
    "app": {"kms:Encrypt", "kms:Decrypt", "kms:DescribeKey", "kms:ListKeyRotations"},
    "worker": {"kms:Decrypt", "kms:Encrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"}
    | {"kms:DescribeKey", "kms:ListKeyRotations"},
    "admin": {"kms:RotateKeyOnDemand", "kms:EnableKeyRotation", "kms:GetKeyRotationStatus"}
    | {"kms:ListKeyRotations", "kms:DescribeKey", "kms:CreateAlias", "kms:UpdateAlias"},
    "audit": {"kms:DescribeKey", "kms:ListKeyRotations", "kms:GetKeyRotationStatus"},
}
ALIASES_ACTIONS = {
    "app": {"kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"},
    "worker": {"kms:Decrypt", "kms:Encrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"}
    | {"kms:DescribeKey"},
    "admin": {"kms:CreateKey", "kms:TagResource", "kms:DescribeKey", "kms:CreateAlias"}
    | {"kms:UpdateAlias", "kms:DisableKey", "kms:ScheduleKeyDeletion"},
    "audit": {"kms:DescribeKey", "kms:ListKeyRotations", "kms:GetKeyRotationStatus"},
}
CRYPTO = {"kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"}
# The audit checkpoints' key: every role that writes audit events signs, the auditor verifies.
SIGNING = {"app": {"kms:Sign"}, "worker": {"kms:Sign"}, "admin": {"kms:Sign"}}
SIGNING["audit"] = {"kms:Verify"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def cli(
    args: list[str], env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, stdin, drop=("HMD_", "AWS_"))


def ok(result: subprocess.CompletedProcess[bytes]) -> Any:
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout) if result.stdout.startswith(b"{") else result.stdout.decode()


def key_count(server: MotoServer) -> int:
    return len(server.client().list_keys(Limit=1000)["Keys"])


def user_key(server: MotoServer) -> dict[str, str]:
    """A key made as Terraform or a user makes one: CreateKey, then an alias."""
    admin = server.client()
    meta = admin.create_key(Description="terraform: pii")["KeyMetadata"]
    alias = f"alias/tf-{secrets.token_hex(4)}"
    admin.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    alias_arn = meta["Arn"].replace(f"key/{meta['KeyId']}", alias)
    return {"key_id": meta["KeyId"], "key_arn": meta["Arn"], "alias": alias, "alias_arn": alias_arn}


def events(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


class TestBootstrap:
    def test_dry_run_creates_nothing_run_creates_second_run_is_a_no_op(
        self, moto: MotoServer, tmp_path: Path
    ) -> None:
        alias = f"alias/boot-{secrets.token_hex(4)}"
        log = tmp_path / "audit.log"
        env = moto.env(alias, HMD_AUDIT_LOG=str(log))
        keys = key_count(moto)
        dry = ok(cli(["aws", "bootstrap", "--dry-run", "--json"], env))
        assert dry["dry_run"] is True and key_count(moto) == keys and events(log) == []
        assert [s["change"] for s in dry["steps"]] == ["created", "created", "created"]
        calls = [c.split(" ", 1)[0] for s in dry["steps"] for c in s["calls"]]
        assert calls == [
            "CreateKey",
            "CreateAlias",
            "EnableKeyRotation",
            "CreateKey",
            "CreateAlias",
        ]
        assert dry["signing_key"] == f"{alias}-audit"
        assert '"KeySpec": "ECC_NIST_P256"' in dry["steps"][2]["calls"][0]
        text = ok(cli(["aws", "bootstrap", "--dry-run"], env))
        assert "would create" in text and "CreateKey {" in text
        assert "IAM policy of the app role" in text

        made = ok(cli(["aws", "bootstrap", "--json", "--actor", "ops"], env))
        assert key_count(moto) == keys + 2
        meta = moto.client().describe_key(KeyId=alias)["KeyMetadata"]
        assert made["key_arn"] == meta["Arn"]
        signing = moto.client().describe_key(KeyId=f"{alias}-audit")["KeyMetadata"]
        assert (signing["KeyUsage"], signing["KeySpec"]) == ("SIGN_VERIFY", "ECC_NIST_P256")
        assert made["signing_key_arn"] == signing["Arn"] != meta["Arn"]
        statement = made["policies"]["app"]["Statement"][-1]
        assert statement["Resource"] == signing["Arn"] and statement["Action"] == ["kms:Sign"]
        assert moto.client().get_key_rotation_status(KeyId=meta["KeyId"])["KeyRotationEnabled"]
        created = [e for e in events(log) if e["event_type"] == "key.create"]
        assert [e["result"] for e in created] == ["intent", "success"]
        assert created[1]["actor"] == "ops" and created[1]["key_version"] == 1

        again = ok(cli(["aws", "bootstrap", "--json"], env))
        assert {s["change"] for s in again["steps"]} == {"unchanged"}
        assert all(s["calls"] == [] for s in again["steps"])
        assert key_count(moto) == keys + 2 and len(events(log)) == 2

    def test_an_unwritable_audit_log_creates_nothing(
        self, moto: MotoServer, tmp_path: Path
    ) -> None:
        alias = f"alias/boot-{secrets.token_hex(4)}"
        env = moto.env(alias, HMD_AUDIT_LOG=str(tmp_path / "missing" / "audit.log"))
        keys = key_count(moto)
        result = cli(["aws", "bootstrap"], env)
        assert result.returncode == 74, result.stderr.decode()
        assert key_count(moto) == keys

    @pytest.mark.parametrize("versioning", ["native", "aliases"])
    def test_the_policies_are_json_with_only_the_listed_actions(
        self, moto: MotoServer, versioning: str
    ) -> None:
        names = user_key(moto)
        env = moto.env(names["alias"], HMD_AWS_KEY_VERSIONING=versioning)
        printed = ok(cli(["aws", "bootstrap", "--dry-run", "--json"], env))
        expected = NATIVE_ACTIONS if versioning == "native" else ALIASES_ACTIONS
        assert set(printed["policies"]) == set(expected)
        for role, document in printed["policies"].items():
            statements = document["Statement"]
            granted = {a for s in statements for a in s["Action"]}
            assert granted == expected[role] | {"kms:ListAliases"} | SIGNING[role], role
            assert all(s["Effect"] == "Allow" and "*" not in str(s["Action"]) for s in statements)
            for statement in statements:
                if CRYPTO & set(statement["Action"]):
                    assert PURPOSE.items() <= statement["Condition"]["StringEquals"].items()
                if statement["Resource"] == "*" and statement["Action"] != ["kms:ListAliases"]:
                    # Only a new key is "*": and then only with the tag that scopes it.
                    condition = statement["Condition"]["StringEquals"]
                    assert condition == {"aws:RequestTag/heimdall:alias": names["alias"]}
                if statement["Sid"] == "HeimdallAuditCheckpoints":
                    assert statement["Action"] == sorted(SIGNING[role])
                    assert statement["Condition"]["StringEquals"] == {
                        "kms:SigningAlgorithm": "ECDSA_SHA_256"
                    }
                    assert statement["Resource"].endswith("SIGNING-KEY-CREATED-ON-APPLY")
                if versioning == "native" and statement["Sid"] in (
                    "HeimdallKey",
                    "HeimdallDataKeys",
                ):
                    assert statement["Resource"] == names["key_arn"]

    @pytest.mark.parametrize("form", ["key_id", "key_arn", "alias", "alias_arn"])
    def test_a_user_made_key_is_adopted_natively(self, moto: MotoServer, form: str) -> None:
        names = user_key(moto)
        keys = key_count(moto)
        adopted = ok(cli(["aws", "bootstrap", "--json"], moto.env(names[form])))
        # An alias-named key gets <alias>-audit as its signing key; a key id or ARN names none.
        signs = form in ("alias", "alias_arn")
        assert key_count(moto) == keys + signs
        assert [s["change"] for s in adopted["steps"]] == ["unchanged", "updated"] + [
            "created"
        ] * signs
        assert adopted["signing_key"] == (f"{names['alias']}-audit" if signs else None)
        assert adopted["key_arn"] == names["key_arn"]
        status = moto.client().get_key_rotation_status(KeyId=names["key_id"])
        assert status["KeyRotationEnabled"]
        aliases = moto.client().list_aliases(KeyId=names["key_id"])["Aliases"]
        assert [a["AliasName"] for a in aliases] == [names["alias"]]

    def test_a_user_made_key_becomes_version_1_of_the_alias_scheme(self, moto: MotoServer) -> None:
        names = user_key(moto)
        env = moto.env(names["alias"], HMD_AWS_KEY_VERSIONING="aliases")
        adopted = ok(cli(["aws", "bootstrap", "--json"], env))
        assert [s["change"] for s in adopted["steps"]] == ["updated", "created"]
        v1 = moto.client().describe_key(KeyId=f"{names['alias']}/v1")["KeyMetadata"]["KeyId"]
        assert v1 == names["key_id"]
        again = ok(cli(["aws", "bootstrap", "--json"], env))["steps"]
        assert [s["change"] for s in again] == ["unchanged", "unchanged"]
        assert ok(cli(["keys", "--json"], env))["latest_version"] == 1

    def test_a_missing_key_id_is_refused_not_created(self, moto: MotoServer) -> None:
        keys = key_count(moto)
        result = cli(["aws", "bootstrap"], moto.env("1234abcd-12ab-34cd-56ef-1234567890ab"))
        err = result.stderr.decode()
        assert result.returncode == 4 and "only be created for an alias name" in err
        assert len(err.strip().splitlines()) == 1 and key_count(moto) == keys


def stored(db: Path) -> dict[int, KmsV1Envelope]:
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT id, ssn FROM customers ORDER BY id").fetchall()
    result = {}
    for row_id, value in rows:
        envelope = parse(value)
        assert isinstance(envelope, KmsV1Envelope)
        result[row_id] = envelope
    return result


class TestKeysAsUsersHaveThem:
    """The issue's check: a key made with boto3 and an alias, as a user would, used by key id,
    ARN, alias name and alias ARN for encrypt, decrypt, migrate, rotate, rewrap and full."""

    @pytest.mark.parametrize("form", ["key_id", "key_arn", "alias", "alias_arn"])
    def test_the_whole_lifecycle(self, moto: MotoServer, tmp_path: Path, form: str) -> None:
        names = user_key(moto)
        env = moto.env(names[form], HMD_AUDIT_LOG=str(tmp_path / "audit.log"))
        hybrid = {**env, "HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX}
        sealed = ok(cli(["encrypt", "--field", "ssn"], env, "123-45-6789"))
        assert (sealed["key_identifier"], sealed["key_version"]) == (names[form], 1)
        opened = cli(["decrypt", "--actor", "a", "--reason", "r"], env, json.dumps(sealed))
        assert ok(opened) == "123-45-6789"

        db = tmp_path / "app.db"
        plain = {i: f"{i:03d}-55-{i:04d}" for i in range(1, 11)}
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, ssn TEXT)")
            connection.executemany(
                "INSERT INTO customers VALUES (?, ?)",
                [(i, legacy_envelope(MASTER_HEX, text)) for i, text in plain.items()],
            )
        target = ["--database", f"sqlite:///{db}", "--table", "customers", "--column", "ssn"]
        assert ok(cli(["migrate", *target, "--json"], hybrid))["completed"] == 10
        migrated = stored(db)
        assert {e.key_version for e in migrated.values()} == {1}

        rotated = ok(cli(["rotate", "--json"], env))
        assert (rotated["old_version"], rotated["new_version"]) == (1, 2)
        rotations = moto.client().list_key_rotations(KeyId=names["key_id"])["Rotations"]
        assert len(rotations) == 1  # AWS's own rotation, no new key
        assert ok(cli(["reencrypt", *target, "--mode", "rewrap", "--json"], env))["completed"] == 10
        rewrapped = stored(db)
        for row_id, before in migrated.items():
            assert rewrapped[row_id].ciphertext == before.ciphertext
            assert rewrapped[row_id].key_version == 2

        assert ok(cli(["rotate", "--json"], env))["new_version"] == 3
        assert ok(cli(["reencrypt", *target, "--mode", "full", "--json"], env))["completed"] == 10
        fresh = stored(db)
        assert all(fresh[i].ciphertext != rewrapped[i].ciphertext for i in fresh)
        assert {e.key_version for e in fresh.values()} == {3}
        for row_id in (1, 10):
            value = json.dumps(fresh[row_id].to_dict())
            text = cli(["decrypt", "--actor", "a", "--reason", "r"], env, value)
            assert ok(text) == plain[row_id]
        old = cli(["decrypt", "--actor", "a", "--reason", "r"], env, json.dumps(sealed))
        assert ok(old) == "123-45-6789"  # AWS keeps every version for Decrypt

        refused = cli(["retire", "--below-version", "3", *target], env)
        assert (
            refused.returncode == 4 and "HMD_AWS_KEY_VERSIONING=aliases" in refused.stderr.decode()
        )
        assert moto.client().describe_key(KeyId=names["key_id"])["KeyMetadata"]["Enabled"]

        printed = ok(cli(["aws", "bootstrap", "--dry-run", "--json"], env))
        app = printed["policies"]["app"]["Statement"]
        signs = SIGNING["app"] if form in ("alias", "alias_arn") else set()
        assert {a for s in app for a in s["Action"]} == NATIVE_ACTIONS["app"] | {
            "kms:ListAliases"
        } | signs
        assert printed["key_arn"] == names["key_arn"]


class TestSigningKey:
    def test_a_named_signing_key_that_cannot_sign_is_refused(self, moto: MotoServer) -> None:
        names = user_key(moto)  # a symmetric ENCRYPT_DECRYPT key, named as the signing key
        env = moto.env(user_key(moto)["alias"], HMD_AUDIT_SIGNING_KEY=names["alias"])
        keys = key_count(moto)
        result = cli(["aws", "bootstrap"], env)
        err = result.stderr.decode()
        assert result.returncode == 4 and "SIGN_VERIFY" in err, err
        assert len(err.strip().splitlines()) == 1 and key_count(moto) == keys

    def test_an_existing_signing_key_is_adopted(self, moto: MotoServer) -> None:
        alias = f"alias/sign-{secrets.token_hex(4)}"
        made = moto.client().create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")
        moto.client().create_alias(AliasName=alias, TargetKeyId=made["KeyMetadata"]["KeyId"])
        env = moto.env(user_key(moto)["alias"], HMD_AUDIT_SIGNING_KEY=alias)
        keys = key_count(moto)
        printed = ok(cli(["aws", "bootstrap", "--json"], env))
        assert key_count(moto) == keys
        assert printed["steps"][-1]["change"] == "unchanged"
        assert printed["signing_key_arn"] == made["KeyMetadata"]["Arn"]

    def test_the_signing_policies_let_writers_sign_and_the_auditor_only_verify(
        self, moto: MotoServer, tmp_path: Path
    ) -> None:
        """The writers' role signs a checkpoint and the auditor's verifies it, through the
        signers the tool uses (moto does not enforce IAM: the actions are checked above)."""
        from heimdall_kms.audit.checkpoint import new_checkpoint
        from heimdall_kms.audit.signers import AWSSigner

        alias = f"alias/boot-{secrets.token_hex(4)}"
        ok(cli(["aws", "bootstrap", "--json"], moto.env(alias)))
        signer = AWSSigner(moto.client(), f"{alias}-audit")
        checkpoint = new_checkpoint("host:/log", 3, "ab" * 32, signer)
        assert signer.verify_many([(checkpoint.message(), checkpoint.signature)]) == [True]
