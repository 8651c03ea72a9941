"""AWS KMS on moto_server: one server for the suite, a fresh alias (version 1 key) per test.

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

from heimdall_kms import crypto
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.aws import AWSKMSProvider, create_key_for_alias
from tests.servers_aws import MotoServer, free_port, kms_client, start_moto


class Backend:
    name = "aws"
    binds_context = True  # the context is the KMS EncryptionContext, enforced by moto

    def __init__(self) -> None:
        self.server: MotoServer = start_moto()
        self._admin = self.server.client()
        self._stubbers: list[Stubber] = []

    def _new_alias(self) -> str:
        alias = f"alias/contract-{secrets.token_hex(4)}"
        create_key_for_alias(self._admin, alias)
        return alias

    def make(self) -> KeyManagementService:
        return AWSKMSProvider(self.server.client(), self._new_alias(), max_concurrency=8)

    def failing(self, how: str) -> Callable[[], object] | None:
        dek = crypto.new_dek()
        if how == "authentication":
            client = self.server.client(access_key="AKIAHEIMDALLBOGUS000", secret_key="wrong")
            provider = AWSKMSProvider(client, self._new_alias())

            def refused() -> object:
                with self.server.enforcing_credentials():
                    return provider.wrap_many([dek], [{}])

            return refused
        if how == "permission":
            provider = self._stubbed("AccessDeniedException")
        elif how == "not_found":
            provider = AWSKMSProvider(self.server.client(), "alias/contract-no-such-alias")
        elif how == "unavailable":
            closed = kms_client(
                f"http://127.0.0.1:{free_port()}", connect_timeout=1, read_timeout=1
            )
            provider = AWSKMSProvider(closed, "alias/contract-unreachable")
        elif how == "throttled":
            provider = self._stubbed("ThrottlingException")
        else:
            return None
        return lambda: provider.wrap_many([dek], [{}])

    def _stubbed(self, code: str) -> AWSKMSProvider:
        client: Any = self.server.client()
        stubber = Stubber(client)
        stubber.add_client_error("encrypt", service_error_code=code, http_status_code=400)
        stubber.activate()
        self._stubbers.append(stubber)
        return AWSKMSProvider(client, self._new_alias())

    def close(self) -> None:
        for stubber in self._stubbers:
            stubber.deactivate()
        self.server.stop()
