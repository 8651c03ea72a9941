"""The AWS KMS provider against moto_server, and the installed command end to end.

moto does the real cryptography and enforces the EncryptionContext, models key states in
DescribeKey, but still serves Decrypt on a disabled or pending-deletion key. What only AWS
answers (DisabledException, KMSInvalidStateException, IncorrectKeyException) comes from a
botocore ``Stubber`` on a real client; our own code is never mocked.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from heimdall_kms import primitives
from heimdall_kms.composition import load_provider
from heimdall_kms.config import AWSKeyVersioning, Settings
from heimdall_kms.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    PermissionDeniedError,
)
from heimdall_kms.providers.aws.client import create_key_for_alias
from heimdall_kms.providers.aws.provider import AWSKMSProvider, kms_encryption_context
from tests.servers import run_cli
from tests.servers_aws import MotoServer, start_moto

CTX = {"table": "customers", "field": "ssn", "record": "r1"}


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def aliased(client: Any, alias: str, **options: Any) -> AWSKMSProvider:
    """The opt-in alias-per-version scheme (HMD_AWS_KEY_VERSIONING=aliases)."""
    return AWSKMSProvider(client, alias, versioning=AWSKeyVersioning.ALIASES, **options)


def new_alias(server: MotoServer) -> str:
    alias = f"alias/it-{secrets.token_hex(4)}"
    create_key_for_alias(server.client(), alias)
    return alias


def blob_of(wrapped: str) -> bytes:
    return base64.b64decode(wrapped.split(":", 2)[2])


def key_state(server: MotoServer, name: str) -> str:
    return str(server.client().describe_key(KeyId=name)["KeyMetadata"]["KeyState"])


# -- versions ---------------------------------------------------------------------------------


def test_a_version_is_a_key_behind_the_alias(moto: MotoServer) -> None:
    alias = new_alias(moto)
    kms = aliased(moto.client(), alias)
    assert kms.describe().latest_version == 1
    info = kms.rotate()
    assert (info.latest_version, info.min_decryption_version) == (2, 1)
    assert [v.version for v in info.versions] == [1, 2]
    assert all(v.created_at is not None and v.created_at.tzinfo is UTC for v in info.versions)
    admin = moto.client()
    v2 = admin.describe_key(KeyId=f"{alias}/v2")["KeyMetadata"]["KeyId"]
    assert admin.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == v2
    tags = {t["TagKey"]: t["TagValue"] for t in admin.list_resource_tags(KeyId=v2)["Tags"]}
    assert tags == {"heimdall:alias": alias, "heimdall:version": "2"}
    assert create_key_for_alias(admin, alias) == v2  # bootstrap again changes nothing
    assert kms.describe().latest_version == 2


def test_bootstrap_adopts_an_existing_alias_as_version_1(moto: MotoServer) -> None:
    admin = moto.client()
    alias = f"alias/it-adopt-{secrets.token_hex(4)}"
    key_id = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName=alias, TargetKeyId=key_id)
    with pytest.raises(KMSError, match="bootstrap"):
        aliased(admin, alias).describe()
    assert create_key_for_alias(admin, alias) == key_id
    assert admin.describe_key(KeyId=f"{alias}/v1")["KeyMetadata"]["KeyId"] == key_id
    assert aliased(admin, alias).describe().latest_version == 1


def test_a_rotation_by_another_process_is_picked_up(moto: MotoServer) -> None:
    alias = new_alias(moto)
    app = aliased(moto.client(), alias)
    (before,) = app.wrap_many([primitives.new_dek()], [CTX])
    aliased(moto.client(), alias).rotate()
    (after,) = app.wrap_many([primitives.new_dek()], [CTX])
    assert (before.key_version, after.key_version) == (1, 2)
    assert after.ciphertext.startswith("aws:v2:")


def test_an_unfinished_rotation_is_completed_not_repeated(moto: MotoServer) -> None:
    alias = new_alias(moto)
    admin = moto.client()
    # A rotation that created key 2 and its version alias, then stopped before the switch.
    orphan = admin.create_key()["KeyMetadata"]["KeyId"]
    admin.create_alias(AliasName=f"{alias}/v2", TargetKeyId=orphan)
    kms = aliased(admin, alias)
    assert [v.version for v in kms.describe().versions] == [1]
    assert kms.rotate().latest_version == 2
    assert admin.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == orphan


def test_retire_disables_older_keys_and_never_deletes(moto: MotoServer) -> None:
    alias = new_alias(moto)
    kms = aliased(moto.client(), alias)
    deks = [primitives.new_dek()]
    (old,) = kms.wrap_many(deks, [CTX])
    kms.rotate()
    kms.rotate()
    with pytest.raises(InvalidInputError):
        kms.retire(4)
    with pytest.raises(InvalidInputError):
        kms.retire(0)
    info = kms.retire(3)
    assert (info.min_decryption_version, [v.version for v in info.versions]) == (3, [3])
    assert key_state(moto, f"{alias}/v1") == "Disabled"  # reversible, not PendingDeletion
    assert key_state(moto, f"{alias}/v2") == "Disabled"
    assert key_state(moto, f"{alias}/v3") == "Enabled"
    # moto would still decrypt with a disabled key: the refusal is ours, made before any call.
    client = moto.client()
    decrypts: list[str] = []
    client.meta.events.register("before-call.kms.Decrypt", lambda **_: decrypts.append("x"))
    (outcome,) = aliased(client, alias).unwrap_many([old.ciphertext], [CTX])
    assert isinstance(outcome, KeyVersionRetiredError)
    assert decrypts == []
    assert kms.retire(3).min_decryption_version == 3  # idempotent


def test_pending_deletion_and_deleted_versions(moto: MotoServer) -> None:
    alias = new_alias(moto)
    kms = aliased(moto.client(), alias)
    (old,) = kms.wrap_many([primitives.new_dek()], [CTX])
    kms.rotate()
    admin = moto.client()
    v1 = admin.describe_key(KeyId=f"{alias}/v1")["KeyMetadata"]["KeyId"]
    admin.schedule_key_deletion(KeyId=v1, PendingWindowInDays=7)  # AWS takes no alias here
    (outcome,) = kms.unwrap_many([old.ciphertext], [CTX])
    assert isinstance(outcome, KeyVersionRetiredError)
    assert kms.describe().min_decryption_version == 2
    # A version that has no key at all (never created, or deleted after its window).
    (missing,) = kms.unwrap_many(["aws:v9:" + old.ciphertext.split(":", 2)[2]], [CTX])
    assert isinstance(missing, KeyNotFoundError)


# -- AWS-only key-state answers, via Stubber --------------------------------------------------


def stubbed(moto: MotoServer) -> tuple[Any, Stubber]:
    client = moto.client()
    return client, Stubber(client)


def test_disabled_and_invalid_state_answers_are_per_item(moto: MotoServer) -> None:
    alias = new_alias(moto)
    deks = [primitives.new_dek() for _ in range(4)]
    wrapped = aliased(moto.client(), alias).wrap_many(deks, [CTX] * 4)
    meta = moto.client().describe_key(KeyId=f"{alias}/v1")["KeyMetadata"]
    client, stubber = stubbed(moto)
    # Between our DescribeKey (Enabled) and each Decrypt, the key changed state in AWS.
    stubber.add_response(
        "describe_key",
        {"KeyMetadata": {"KeyId": meta["KeyId"], "KeyState": "Enabled"}},
        {"KeyId": f"{alias}/v1"},
    )
    expected = {"KeyId": meta["KeyId"], "EncryptionContext": kms_encryption_context(CTX)}
    for code in ("DisabledException", "KMSInvalidStateException", "IncorrectKeyException"):
        stubber.add_client_error(
            "decrypt",
            service_error_code=code,
            service_message=f"secret-looking detail {deks[0].hex()}",
            expected_params={**expected, "CiphertextBlob": blob_of(wrapped[0].ciphertext)},
        )
        if code == "KMSInvalidStateException":
            # Which state forbids it decides: pending deletion is a retired version.
            stubber.add_response(
                "describe_key",
                {"KeyMetadata": {"KeyId": meta["KeyId"], "KeyState": "PendingDeletion"}},
                {"KeyId": meta["KeyId"]},
            )
    stubber.add_response(
        "decrypt",
        {"KeyId": meta["Arn"], "Plaintext": bytes(deks[3])},
        {**expected, "CiphertextBlob": blob_of(wrapped[3].ciphertext)},
    )
    kms = aliased(client, alias, max_concurrency=1)
    with stubber:
        outcomes = kms.unwrap_many([wrapped[0].ciphertext] * 3 + [wrapped[3].ciphertext], [CTX] * 4)
        stubber.assert_no_pending_responses()
    assert isinstance(outcomes[0], KeyVersionRetiredError)
    assert isinstance(outcomes[1], KeyVersionRetiredError)
    assert isinstance(outcomes[2], IntegrityError)
    assert outcomes[3] == deks[3]
    for outcome in outcomes[:3]:
        assert deks[0].hex() not in str(outcome)  # built from the code, not AWS's message


def test_an_invalid_state_that_is_not_retirement_is_not_reported_as_retired(
    moto: MotoServer,
) -> None:
    alias = new_alias(moto)
    (wrapped,) = aliased(moto.client(), alias).wrap_many([primitives.new_dek()], [CTX])
    meta = moto.client().describe_key(KeyId=f"{alias}/v1")["KeyMetadata"]
    client, stubber = stubbed(moto)
    stubber.add_response(
        "describe_key",
        {"KeyMetadata": {"KeyId": meta["KeyId"], "KeyState": "Enabled"}},
        {"KeyId": f"{alias}/v1"},
    )
    stubber.add_client_error("decrypt", service_error_code="KMSInvalidStateException")
    # The key's state says why: material never imported is no retirement.
    stubber.add_response(
        "describe_key",
        {"KeyMetadata": {"KeyId": meta["KeyId"], "KeyState": "PendingImport"}},
        {"KeyId": meta["KeyId"]},
    )
    kms = aliased(client, alias, max_concurrency=1)
    with stubber, pytest.raises(KMSError) as caught:
        kms.unwrap_many([wrapped.ciphertext], [CTX])
    assert not isinstance(caught.value, KeyVersionRetiredError)
    assert "PendingImport" in str(caught.value)
    assert "not retired" in str(caught.value)


def test_whole_call_failures_raise(moto: MotoServer) -> None:
    alias = new_alias(moto)
    client, stubber = stubbed(moto)
    stubber.add_client_error("encrypt", service_error_code="DisabledException")
    stubber.add_client_error("encrypt", service_error_code="AccessDeniedException")
    kms = aliased(client, alias)
    with stubber:
        with pytest.raises(KeyVersionRetiredError) as disabled:
            kms.wrap_many([primitives.new_dek()], [CTX])
        with pytest.raises(PermissionDeniedError) as denied:
            kms.wrap_many([primitives.new_dek()], [CTX])
    for caught in (disabled, denied):
        assert caught.value.__cause__ is None
        assert "AWS KMS Encrypt" in str(caught.value)


# -- context binding and concurrency ----------------------------------------------------------


def test_the_context_is_bound_at_kms(moto: MotoServer) -> None:
    alias = new_alias(moto)
    kms = aliased(moto.client(), alias)
    dek = primitives.new_dek()
    (wrapped,) = kms.wrap_many([dek], [CTX])
    raw = moto.client()
    answer = raw.decrypt(
        CiphertextBlob=blob_of(wrapped.ciphertext), EncryptionContext=kms_encryption_context(CTX)
    )
    assert answer["Plaintext"] == bytes(dek)
    for context in ({}, CTX, kms_encryption_context({**CTX, "record": "r2"})):
        with pytest.raises(ClientError) as refused:
            raw.decrypt(CiphertextBlob=blob_of(wrapped.ciphertext), EncryptionContext=context)
        assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"
    (moved,) = kms.unwrap_many([wrapped.ciphertext], [{**CTX, "record": "r2"}])
    assert isinstance(moved, IntegrityError)
    # ReEncrypt carries the binding over to the new version.
    kms.rotate()
    (rewrapped,) = kms.rewrap_many([wrapped.ciphertext], [CTX])
    assert not isinstance(rewrapped, Exception)
    assert rewrapped.key_version == 2
    with pytest.raises(ClientError):
        raw.decrypt(CiphertextBlob=blob_of(rewrapped.ciphertext))
    assert kms.unwrap_many([rewrapped.ciphertext], [CTX]) == [dek]


def test_concurrency_is_bounded_and_keeps_order(moto: MotoServer) -> None:
    alias = new_alias(moto)
    client = moto.client()
    lock = threading.Lock()
    active = {"now": 0, "max": 0}
    threads: set[str] = set()

    def sent(**_: object) -> None:
        with lock:
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            threads.add(threading.current_thread().name)

    def done(**_: object) -> None:
        with lock:
            active["now"] -= 1

    client.meta.events.register("before-send.kms.Encrypt", sent)
    client.meta.events.register("after-call.kms.Encrypt", done)
    kms = aliased(client, alias, max_concurrency=6)
    contexts = [{**CTX, "record": str(i)} for i in range(120)]
    deks = [primitives.new_dek() for _ in range(120)]
    wrapped = kms.wrap_many(deks, contexts)
    assert 1 < active["max"] <= 6
    assert len(threads) > 1 and all(name.startswith("heimdall-aws") for name in threads)
    texts = [w.ciphertext for w in wrapped]
    texts[7] = "aws:v1:bm90IGEgY2lwaGVydGV4dA=="  # not a KMS ciphertext
    texts[50] = "not even our form"
    outcomes = kms.unwrap_many(texts, contexts)
    assert isinstance(outcomes[7], IntegrityError) and isinstance(outcomes[50], IntegrityError)
    assert [o for i, o in enumerate(outcomes) if i not in (7, 50)] == [
        d for i, d in enumerate(deks) if i not in (7, 50)
    ]


# -- configuration ----------------------------------------------------------------------------


def test_from_settings_uses_the_standard_chain_and_aws_endpoint_url_kms(
    moto: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    alias = new_alias(moto)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    env = moto.env(alias, HMD_AWS_KEY_VERSIONING="aliases")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, env[name])  # boto3 reads credentials itself: the chain
    settings = Settings.from_env(env)
    assert settings.aws is not None and settings.aws.endpoint_url == moto.endpoint
    kms = AWSKMSProvider.from_settings(settings)
    assert kms.describe().latest_version == 1
    kms.health()
    kms.close()
    loaded = load_provider(settings)  # the way the CLI builds it
    assert loaded.describe().latest_version == 1
    loaded.close()
    no_region = {k: v for k, v in env.items() if k != "AWS_DEFAULT_REGION"}
    with pytest.raises(ConfigurationError, match="AWS_REGION"):
        AWSKMSProvider.from_settings(Settings.from_env(no_region))
    for key_id in ("1234abcd-12ab-34cd-56ef-1234567890ab", f"{alias}/v1", "alias/aws/ebs"):
        with pytest.raises(ConfigurationError, match="HMD_KMS_KEY_ID"):
            AWSKMSProvider.from_settings(Settings.from_env({**env, "HMD_KMS_KEY_ID": key_id}))
    native = {**env, "HMD_AWS_KEY_VERSIONING": "native"}
    # Native versioning takes every form AWS users name a key by, and nothing else.
    for key_id in (f"{alias}/v1", "alias/aws/ebs", "key/1234", "arn:aws:kms:us-east-1:1:key/x"):
        with pytest.raises(ConfigurationError, match="HMD_KMS_KEY_ID"):
            AWSKMSProvider.from_settings(Settings.from_env({**native, "HMD_KMS_KEY_ID": key_id}))
    with pytest.raises(ConfigurationError, match="HMD_AWS_KEY_VERSIONING"):
        Settings.from_env({**env, "HMD_AWS_KEY_VERSIONING": "per-alias"})


def test_a_missing_alias_is_not_created(moto: MotoServer) -> None:
    kms = aliased(moto.client(), "alias/it-never-created")
    with pytest.raises(KeyNotFoundError):
        kms.describe()
    with pytest.raises(KeyNotFoundError):
        kms.wrap_many([primitives.new_dek()], [CTX])
    with pytest.raises(ClientError):
        moto.client().describe_key(KeyId="alias/it-never-created")


# -- the installed command (the key's whole life: test_cloud_lifecycle.py) -------------------


def cli(
    args: list[str], env: dict[str, str], stdin: str | bytes = ""
) -> subprocess.CompletedProcess[bytes]:
    return run_cli(args, env, stdin, drop=("HMD_", "AWS_"))


def test_cli_bad_credentials_are_one_line(moto: MotoServer, tmp_path: Path) -> None:
    alias = new_alias(moto)
    env = moto.env(alias, HMD_AUDIT_LOG=str(tmp_path / "audit.log"))
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret-" + secrets.token_hex(8)
    with moto.enforcing_credentials():  # moto's IAM mode: unknown keys are refused
        result = cli(["encrypt", "--field", "ssn"], env, "123-45-6789")
    err = result.stderr.decode()
    assert result.returncode == 77, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert env["AWS_SECRET_ACCESS_KEY"] not in err
    # The server accepts any credentials again afterwards.
    assert aliased(moto.client(), alias).describe().latest_version == 1
