"""The cloud KMSs a lifecycle scenario runs on, as the installed command sees them.

Each :class:`Cloud` is one backend of ``test_cloud_lifecycle.py``: GCP over REST and over gRPC
(the wire-level fake), AWS with its own rotation and with one key per version behind aliases
(moto's server), Azure Key Vault (the wire-level fake, an app identity that may only wrap and
unwrap, an admin identity for the key lifecycle). The settings builders are shared with the
provider test modules.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from google.cloud import kms_v1

from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.providers.aws.client import create_key_for_alias
from tests.contract.backends.azure import ADMIN
from tests.contract.backends.gcp import LOCATION, create_key
from tests.fakes.azure_kv_http import (
    CRYPTO_OFFICER,
    CRYPTO_SERVICE_ENCRYPTION_USER,
    FakeKeyVaultServer,
    start_fake_key_vault,
)
from tests.fakes.gcp_kms_http import FakeKMSServer
from tests.servers import run_cli
from tests.servers_aws import MotoServer

# The application's service principal on the Azure fake (Crypto Service Encryption User).
AZURE_APP = ("heimdall-app", "app-secret-" + "9f" * 8)


@dataclass(frozen=True)
class Cloud:
    """One KMS key as the command line uses it, and how to look at it from outside."""

    name: str  # the provider, as envelopes record it
    env: dict[str, str]  # the application's settings: kms mode, an audit log
    admin_env: dict[str, str]  # who rotates, retires and re-encrypts
    key_identifier: str  # what envelopes record as the key
    drop: tuple[str, ...]  # environment prefixes the command must not inherit
    version_enabled: Callable[[int], bool]  # the KMS's own view of one key version
    retires: bool = True  # False: the KMS cannot disable one version (AWS's own rotation)

    def run(
        self, args: list[str], env: dict[str, str], stdin: str | bytes = ""
    ) -> subprocess.CompletedProcess[bytes]:
        return run_cli(args, env, stdin, drop=self.drop)


def gcp_env(
    server: FakeKMSServer, key: str, transport: str = "rest", **extra: str
) -> dict[str, str]:
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "gcp",
        "HMD_KMS_KEY_ID": key,
        "HMD_GCP_KMS_ENDPOINT": server.url if transport == "rest" else server.grpc_url,
        "HMD_GCP_TRANSPORT": transport,
        "HMD_GCP_CREDENTIALS": "anonymous",
        **extra,
    }


def azure_env(server: FakeKeyVaultServer, key: str, tmp_path: Path) -> dict[str, str]:
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "azure",
        "HMD_KMS_KEY_ID": server.key_url(key),
        "HMD_AZURE_CA_BUNDLE": str(server.ca_pem),
        "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
        "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "true",
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        # DefaultAzureCredential -> EnvironmentCredential -> the fake's Entra ID endpoint.
        "AZURE_TENANT_ID": server.vault.tenant,
        "AZURE_CLIENT_ID": AZURE_APP[0],
        "AZURE_CLIENT_SECRET": AZURE_APP[1],
        "AZURE_AUTHORITY_HOST": server.url,
        # The credential's own HTTPS client trusts the standard variable, not HMD_AZURE_CA_BUNDLE.
        "REQUESTS_CA_BUNDLE": str(server.ca_pem),
    }


def gcp_cloud(
    server: FakeKMSServer, admin: kms_v1.KeyManagementServiceClient, transport: str, tmp: Path
) -> Cloud:
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": f"r-{secrets.token_hex(4)}", "key_ring": {}}
    )
    key = create_key(admin, str(ring.name))
    env = gcp_env(server, key, transport, HMD_AUDIT_LOG=str(tmp / "audit.log"))
    return Cloud(
        name="gcp",
        env=env,
        admin_env=env,
        key_identifier=key,
        drop=("HMD_", "GOOGLE_"),
        version_enabled=lambda n: server.kms.version_state(key, n) == "ENABLED",
    )


def aws_cloud(server: MotoServer, versioning: AWSKeyVersioning, tmp: Path) -> Cloud:
    admin = server.client()
    alias = f"alias/it-{secrets.token_hex(4)}"
    if versioning is AWSKeyVersioning.ALIASES:
        create_key_for_alias(admin, alias)
    else:  # a key as AWS users have one: CreateKey, then an alias
        key_id = admin.create_key()["KeyMetadata"]["KeyId"]
        admin.create_alias(AliasName=alias, TargetKeyId=key_id)

    def enabled(number: int) -> bool:
        if versioning is not AWSKeyVersioning.ALIASES:
            return True  # one key; AWS keeps every rotation's material usable
        state = admin.describe_key(KeyId=f"{alias}/v{number}")["KeyMetadata"]["KeyState"]
        return bool(state == "Enabled")

    env = server.env(
        alias, HMD_AUDIT_LOG=str(tmp / "audit.log"), HMD_AWS_KEY_VERSIONING=versioning.value
    )
    return Cloud(
        name="aws",
        env=env,
        admin_env=env,
        key_identifier=alias,
        drop=("HMD_", "AWS_"),
        version_enabled=enabled,
        retires=versioning is AWSKeyVersioning.ALIASES,
    )


def start_azure() -> FakeKeyVaultServer:
    """The Key Vault fake with the admin (key lifecycle) and the app (wrap, unwrap) principals."""
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.add_principal(*AZURE_APP, CRYPTO_SERVICE_ENCRYPTION_USER)
    fake.vault.retry_after = "0"
    return fake


def azure_cloud(server: FakeKeyVaultServer, tmp: Path) -> Cloud:
    key = f"k-{secrets.token_hex(4)}"
    server.vault.create_key(key)
    env = azure_env(server, key, tmp)
    return Cloud(
        name="azure",
        env=env,
        admin_env=env | {"AZURE_CLIENT_ID": ADMIN[0], "AZURE_CLIENT_SECRET": ADMIN[1]},
        key_identifier=server.key_url(key),
        drop=("HMD_", "AZURE_"),
        version_enabled=lambda n: server.vault.versions(key)[n - 1][1],
    )
