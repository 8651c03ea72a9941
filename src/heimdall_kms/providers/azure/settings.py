"""Azure Key Vault's settings (``HMD_AZURE_*``), read by :func:`read_settings`. Imports no
Azure library: :mod:`heimdall_kms.config` reads them at start-up whether or not the ``azure``
extra is installed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heimdall_kms.settings_env import Env, existing_file

__all__ = ["AzureSettings", "read_settings"]


@dataclass(frozen=True, slots=True)
class AzureSettings:
    """Azure Key Vault. Credentials come from DefaultAzureCredential."""

    ca_bundle: Path | None = None  # HMD_AZURE_CA_BUNDLE: a private CA (tests, proxies)
    verify_challenge_resource: bool = True  # HMD_AZURE_VERIFY_CHALLENGE_RESOURCE
    max_concurrency: int = 8  # HMD_AZURE_MAX_CONCURRENCY: Key Vault has no batch call
    # HMD_AZURE_DISABLE_INSTANCE_DISCOVERY: for an AZURE_AUTHORITY_HOST that
    # login.microsoftonline.com does not know (Azure Stack Hub, a private cloud, the tests).
    disable_instance_discovery: bool = False
    # HMD_AZURE_TIMEOUT: connect timeout and read timeout of one HTTP attempt (azure-core's
    # own default is 300 s each; docs/providers/azure.md gives the bound with the SDK's retries).
    timeout_seconds: float = 10.0


def read_settings(env: Env) -> AzureSettings:
    """The Azure settings.

    Raises:
        ConfigurationError: a value is malformed, or the CA bundle is not a file.
    """
    return AzureSettings(
        ca_bundle=existing_file("HMD_AZURE_CA_BUNDLE", env.get("HMD_AZURE_CA_BUNDLE")),
        verify_challenge_resource=env.flag("HMD_AZURE_VERIFY_CHALLENGE_RESOURCE", default=True),
        max_concurrency=env.integer("HMD_AZURE_MAX_CONCURRENCY", 8, minimum=1),
        disable_instance_discovery=env.flag("HMD_AZURE_DISABLE_INSTANCE_DISCOVERY", default=False),
        timeout_seconds=env.number("HMD_AZURE_TIMEOUT", 10.0),
    )
