"""AWS KMS on moto_server, native versioning (AWS's own rotation): a fresh key and alias per test.

``aws_aliases`` runs the same suite with one KMS key per version behind ``alias/<name>/v<n>``.

Failures are real where moto can produce them: a missing alias, a closed port, and bad
credentials under moto's opt-in IAM mode. moto has no per-operation policies a boto3 client can
read back and never throttles, so permission and throttling come from a botocore ``Stubber``
on a real client (the exact error answers AWS documents).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from botocore.stub import Stubber

from heimdall_kms import primitives
from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.aws.client import create_key_for_alias
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from tests.servers_aws import MotoServer, free_port, kms_client, start_moto


class Backend:
    name = "aws"
    binds_context = True  # the context is the KMS EncryptionContext, enforced by moto
    retires = False  # AWS cannot disable one backing version of a key: retire is refused
    versioning = AWSKeyVersioning.NATIVE

    def __init__(self) -> None:
        self.server: MotoServer = start_moto()
        self._admin = self.server.client()
        self._stubbers: list[Stubber] = []

    def _new_alias(self) -> str:
        alias = f"alias/contract-{secrets.token_hex(4)}"
        if self.versioning is AWSKeyVersioning.ALIASES:
            create_key_for_alias(self._admin, alias)
        else:  # a key as AWS users have one: CreateKey, then an alias
            key_id = self._admin.create_key()["KeyMetadata"]["KeyId"]
            self._admin.create_alias(AliasName=alias, TargetKeyId=key_id)
        return alias

    def make(self) -> KeyManagementService:
        return self._provider(self.server.client(), self._new_alias(), max_concurrency=8)

    def _provider(self, client: Any, alias: str, **options: Any) -> AWSKMSProvider:
        return AWSKMSProvider(client, alias, versioning=self.versioning, **options)

    def failing(self, how: str) -> Callable[[], object] | None:
        dek = primitives.new_dek()
        if how == "authentication":
            client = self.server.client(access_key="AKIAHEIMDALLBOGUS000", secret_key="wrong")
            provider = self._provider(client, self._new_alias())

            def refused() -> object:
                with self.server.enforcing_credentials():
                    return provider.wrap_many([dek], [{}])

            return refused
        if how == "permission":
            provider = self._stubbed("AccessDeniedException")
        elif how == "not_found":
            provider = self._provider(self.server.client(), "alias/contract-no-such-alias")
        elif how == "unavailable":
            closed = kms_client(
                f"http://127.0.0.1:{free_port()}", connect_timeout=1, read_timeout=1
            )
            provider = self._provider(closed, "alias/contract-unreachable")
        elif how == "throttled":
            provider = self._stubbed("ThrottlingException")
        else:
            return None
        return lambda: provider.wrap_many([dek], [{}])

    def _stubbed(self, code: str) -> AWSKMSProvider:
        client: Any = self.server.client()
        stubber = Stubber(client)
        alias = self._new_alias()
        if self.versioning is AWSKeyVersioning.NATIVE:
            # The one DescribeKey a native key costs, before the stubbed Encrypt.
            stubber.add_response(
                "describe_key",
                {"KeyMetadata": self._admin.describe_key(KeyId=alias)["KeyMetadata"]},
            )
            stubber.add_response("list_aliases", {"Aliases": [{"AliasName": alias}]})
            stubber.add_response("list_key_rotations", {"Rotations": [], "Truncated": False})
        stubber.add_client_error("encrypt", service_error_code=code, http_status_code=400)
        stubber.activate()
        self._stubbers.append(stubber)
        return self._provider(client, alias)

    def close(self) -> None:
        for stubber in self._stubbers:
            stubber.deactivate()
        self.server.stop()
