"""AWS keys as users have them (native versioning) and one key resolution per process.

Against moto_server, which models RotateKeyOnDemand, ListKeyRotations and EnableKeyRotation.
A botocore ``Stubber`` stands in only for what moto cannot produce: a rotation AWS accepted but
does not list yet (moto lists it at once).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from heimdall_kms import primitives
from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.errors import (
    ConfigurationError,
    KeyVersionRetiredError,
    KMSError,
    RefusedError,
)
from heimdall_kms.providers.aws.client import caller, create_key_for_alias
from heimdall_kms.providers.aws.keys import ReferenceKind, parse_key_reference
from heimdall_kms.providers.aws.native import NativeKey
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from tests.servers_aws import MotoServer, start_moto

CTX = {"table": "customers", "field": "ssn", "record": "r1"}
FORMS = ("key_id", "key_arn", "alias", "alias_arn")


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def user_key(server: MotoServer) -> dict[str, str]:
    """A key made the way Terraform or the console makes one: CreateKey, then an alias."""
    admin = server.client()
    meta = admin.create_key(Description="made by terraform")["KeyMetadata"]
    alias = f"alias/user-{secrets.token_hex(4)}"
    admin.create_alias(AliasName=alias, TargetKeyId=meta["KeyId"])
    alias_arn = meta["Arn"].replace(f"key/{meta['KeyId']}", alias)
    return {"key_id": meta["KeyId"], "key_arn": meta["Arn"], "alias": alias, "alias_arn": alias_arn}


def counting(server: MotoServer, *operations: str) -> tuple[Any, dict[str, int]]:
    client = server.client()
    counts = dict.fromkeys(operations, 0)
    for operation in operations:

        def seen(_op: str = operation, **_: object) -> None:
            counts[_op] += 1

        client.meta.events.register(f"before-call.kms.{operation}", seen)
    return client, counts


class TestKeyReference:
    @pytest.mark.parametrize(
        ("text", "kind"),
        [
            ("1234abcd-12ab-34cd-56ef-1234567890ab", ReferenceKind.KEY_ID),
            ("mrk-1234abcd12ab34cd56ef1234567890ab", ReferenceKind.KEY_ID),
            (
                "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                ReferenceKind.KEY_ARN,
            ),
            ("alias/heimdall-pii", ReferenceKind.ALIAS),
            ("arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/pii", ReferenceKind.ALIAS_ARN),
        ],
    )
    def test_the_four_forms(self, text: str, kind: ReferenceKind) -> None:
        assert parse_key_reference(text).kind is kind

    @pytest.mark.parametrize(
        "text",
        ["alias/aws/ebs", "alias/pii/v2", "key/1234", "heimdall-pii", "arn:aws:kms:x:1:key/y"],
    )
    def test_anything_else_names_the_variable(self, text: str) -> None:
        with pytest.raises(ConfigurationError, match="HMD_KMS_KEY_ID"):
            parse_key_reference(text)


class TestNativeKey:
    @pytest.mark.parametrize("form", FORMS)
    def test_aws_rotation_is_the_version(self, moto: MotoServer, form: str) -> None:
        names = user_key(moto)
        kms = AWSKMSProvider(moto.client(), names[form])
        first = kms.describe()
        assert (first.latest_version, first.min_decryption_version) == (1, 1)
        assert first.key_identifier == names[form]
        dek = primitives.new_dek()
        (old,) = kms.wrap_many([dek], [CTX])
        assert old.key_version == 1 and old.ciphertext.startswith("aws:v1:")
        rotated = kms.rotate()
        assert [v.version for v in rotated.versions] == [1, 2]
        assert all(v.created_at is not None for v in rotated.versions)
        assert len(moto.client().list_key_rotations(KeyId=names["key_id"])["Rotations"]) == 1
        (new,) = kms.wrap_many([primitives.new_dek()], [CTX])
        assert new.key_version == 2
        (rewrapped,) = kms.rewrap_many([old.ciphertext], [CTX])
        assert not isinstance(rewrapped, Exception) and rewrapped.key_version == 2
        assert kms.unwrap_many([old.ciphertext, rewrapped.ciphertext], [CTX] * 2) == [dek, dek]
        # One key throughout: no key was created, no alias added.
        aliases = moto.client().list_aliases(KeyId=names["key_id"])["Aliases"]
        assert [a["AliasName"] for a in aliases] == [names["alias"]]

    def test_retire_is_refused_with_the_reason_and_the_alternative(self, moto: MotoServer) -> None:
        names = user_key(moto)
        kms = AWSKMSProvider(moto.client(), names["alias"])
        kms.rotate()
        with pytest.raises(RefusedError) as refused:
            kms.retire(2)
        message = str(refused.value)
        assert "cannot disable one of them" in message
        assert "HMD_AWS_KEY_VERSIONING=aliases" in message and "new key" in message
        meta = moto.client().describe_key(KeyId=names["key_id"])["KeyMetadata"]
        assert meta["KeyState"] == "Enabled"

    def test_an_alias_moved_to_another_key_is_reported(self, moto: MotoServer) -> None:
        names = user_key(moto)
        kms = AWSKMSProvider(moto.client(), names["alias"])
        kms.wrap_many([primitives.new_dek()], [CTX])
        other = moto.client().create_key()["KeyMetadata"]["KeyId"]
        moto.client().update_alias(AliasName=names["alias"], TargetKeyId=other)
        with pytest.raises(KMSError, match="now names another KMS key"):
            kms.describe()

    @pytest.mark.parametrize("form", ["alias", "alias_arn"])
    def test_an_alias_of_the_per_version_scheme_is_refused(
        self, moto: MotoServer, form: str
    ) -> None:
        alias = f"alias/versioned-{secrets.token_hex(4)}"
        key_id = create_key_for_alias(moto.client(), alias)
        arn = moto.client().describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        name = alias if form == "alias" else arn.replace(f"key/{key_id}", alias)
        client, counts = counting(moto, "Encrypt")
        with pytest.raises(ConfigurationError, match="HMD_AWS_KEY_VERSIONING=aliases"):
            AWSKMSProvider(client, name).wrap_many([primitives.new_dek()], [CTX])
        assert counts == {"Encrypt": 0}

    def test_not_a_symmetric_encryption_key(self, moto: MotoServer) -> None:
        meta = moto.client().create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
        kms = AWSKMSProvider(moto.client(), meta["KeyMetadata"]["KeyId"])
        with pytest.raises(ConfigurationError, match="symmetric"):
            kms.wrap_many([primitives.new_dek()], [CTX])

    def test_the_wrap_version_is_reread_after_its_ttl(self, moto: MotoServer) -> None:
        names = user_key(moto)
        now = [0.0]
        key = NativeKey(
            caller(moto.client()), parse_key_reference(names["alias"]), clock=lambda: now[0]
        )
        assert key.wrap_version() == 1
        AWSKMSProvider(moto.client(), names["key_arn"]).rotate()  # another process
        now[0] = 59.0
        assert key.wrap_version() == 1  # older than the material: a later rewrap moves it on
        now[0] = 60.0
        assert key.wrap_version() == 2

    def test_a_rotation_aws_does_not_list_yet_is_waited_for_then_reported(
        self, moto: MotoServer
    ) -> None:
        names = user_key(moto)
        client = moto.client()
        stubber = Stubber(client)
        meta = moto.client().describe_key(KeyId=names["key_id"])["KeyMetadata"]
        stubber.add_response("describe_key", {"KeyMetadata": meta})
        empty = {"Rotations": [], "Truncated": False}
        stubber.add_response("list_key_rotations", empty)
        stubber.add_response("rotate_key_on_demand", {"KeyId": names["key_id"]})
        for _ in range(4):
            stubber.add_response("list_key_rotations", empty)
        now, slept = [0.0], []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            now[0] += seconds

        key = NativeKey(
            caller(client),
            parse_key_reference(names["key_id"]),
            rotate_wait=3.0,
            clock=lambda: now[0],
            sleep=sleep,
        )
        with stubber, pytest.raises(KMSError, match="does not list it after 3 s"):
            key.rotate()
        assert slept == [0.5, 1.0, 2.0]


class TestOneResolutionPerProcess:
    """A decrypt costs a Decrypt, not a DescribeKey as well (their quotas differ 5-fold)."""

    @pytest.mark.parametrize("versioning", list(AWSKeyVersioning))
    def test_single_value_decrypts_resolve_the_key_once(
        self, moto: MotoServer, versioning: AWSKeyVersioning
    ) -> None:
        if versioning is AWSKeyVersioning.NATIVE:
            alias = user_key(moto)["alias"]
        else:
            alias = f"alias/once-{secrets.token_hex(4)}"
            create_key_for_alias(moto.client(), alias)
        writer = AWSKMSProvider(moto.client(), alias, versioning=versioning)
        wrapped = writer.wrap_many([primitives.new_dek() for _ in range(20)], [CTX] * 20)
        client, counts = counting(moto, "DescribeKey", "Decrypt")
        reader = AWSKMSProvider(client, alias, versioning=versioning)
        for item in wrapped:  # the facade's decrypt of one value is one unwrap_many call
            (dek,) = reader.unwrap_many([item.ciphertext], [CTX])
            assert isinstance(dek, bytearray)
        assert counts == {"DescribeKey": 1, "Decrypt": 20}

    def test_a_version_retired_here_is_refused_without_asking_aws(self, moto: MotoServer) -> None:
        alias = f"alias/once-{secrets.token_hex(4)}"
        create_key_for_alias(moto.client(), alias)
        client, counts = counting(moto, "Decrypt")
        kms = AWSKMSProvider(client, alias, versioning=AWSKeyVersioning.ALIASES)
        (old,) = kms.wrap_many([primitives.new_dek()], [CTX])
        assert isinstance(kms.unwrap_many([old.ciphertext], [CTX])[0], bytearray)  # cached
        kms.rotate()
        kms.retire(2)
        (outcome,) = kms.unwrap_many([old.ciphertext], [CTX])
        assert isinstance(outcome, KeyVersionRetiredError)
        assert counts == {"Decrypt": 1}  # moto would still decrypt: the refusal is ours

    def test_describing_a_native_key_reads_it_once(self, moto: MotoServer) -> None:
        names = user_key(moto)
        client, counts = counting(moto, "DescribeKey", "ListAliases", "ListKeyRotations")
        AWSKMSProvider(client, names["alias"]).describe()
        assert counts == {"DescribeKey": 1, "ListAliases": 1, "ListKeyRotations": 1}
