"""Provider selection: a fixed table from name to module, imported only when chosen.

There is no registry to mutate (tink deprecated its ``register_kms_client`` for good reason).
A provider whose SDK extra is missing fails with a :class:`ConfigurationError` that names the
``pip install`` to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, cast

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.base import (
    KeyAdmin,
    KeyContext,
    KeyInfo,
    KeyManagementService,
    KeyVersion,
    KeyWrapper,
    WrappedKey,
)

if TYPE_CHECKING:
    from heimdall_kms.config import Settings

__all__ = [
    "KeyAdmin",
    "KeyContext",
    "KeyInfo",
    "KeyManagementService",
    "KeyVersion",
    "KeyWrapper",
    "WrappedKey",
    "needs_extra",
    "open_provider",
]

_PROVIDERS: dict[ProviderName, tuple[str, str, str]] = {
    ProviderName.VAULT: ("heimdall_kms.providers.vault.transit", "VaultTransitProvider", "vault"),
    ProviderName.LOCAL: ("heimdall_kms.providers.local.provider", "LocalDevProvider", ""),
    ProviderName.AWS: ("heimdall_kms.providers.aws.provider", "AWSKMSProvider", "aws"),
    ProviderName.GCP: ("heimdall_kms.providers.gcp.provider", "GCPKMSProvider", "gcp"),
    ProviderName.AZURE: ("heimdall_kms.providers.azure.provider", "AzureKeyVaultProvider", "azure"),
}
# The SDK modules each provider module needs; used only to name the missing extra.
_SDK_MODULES = frozenset({"hvac", "boto3", "botocore", "google", "azure"})


@contextmanager
def needs_extra(extra: str, who: str) -> Iterator[None]:
    """Turn the import of a missing KMS SDK into the error that names the extra to install.

    Raises:
        ConfigurationError: a module of ``hvac``, ``boto3``, ``google`` or ``azure`` is missing.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in _SDK_MODULES:
            raise ConfigurationError(f"{who} needs: pip install 'heimdall-kms[{extra}]'") from None
        raise


class _ProviderFactory(Protocol):
    @classmethod
    def from_settings(cls, settings: Settings) -> KeyManagementService: ...


def open_provider(settings: Settings) -> KeyManagementService:
    """The configured provider itself, with nothing around it: the composition root
    (:func:`heimdall_kms.composition.load_provider`) adds tracing, retries and the breaker.

    Raises:
        ConfigurationError: no provider configured, not available in this release, or its
            SDK extra is not installed.
        KMSError: logging in to the KMS failed.
    """
    if settings.provider is None:
        raise ConfigurationError("HMD_KMS_PROVIDER: not set")
    module_name, class_name, extra = _PROVIDERS[settings.provider]
    try:
        with needs_extra(extra, f"HMD_KMS_PROVIDER={settings.provider.value}"):
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise ConfigurationError(
                f"HMD_KMS_PROVIDER: {settings.provider.value} is not available in this release"
            ) from None
        raise
    factory = cast(type[_ProviderFactory], getattr(module, class_name))
    return factory.from_settings(settings)
