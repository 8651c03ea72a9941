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
from heimdall_kms.providers.resilient import CircuitBreaker, ResilientProvider, RetryPolicy

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
    "load_provider",
    "needs_extra",
]

_PROVIDERS: dict[ProviderName, tuple[str, str, str]] = {
    ProviderName.VAULT: ("heimdall_kms.providers.vault.transit", "VaultTransitProvider", "vault"),
    ProviderName.LOCAL: ("heimdall_kms.providers.local.provider", "LocalDevProvider", ""),
    ProviderName.AWS: ("heimdall_kms.providers.aws", "AWSKMSProvider", "aws"),
    ProviderName.GCP: ("heimdall_kms.providers.gcp", "GCPKMSProvider", "gcp"),
    ProviderName.AZURE: ("heimdall_kms.providers.azure", "AzureKeyVaultProvider", "azure"),
}
# The SDK modules each provider module needs; used only to name the missing extra.
_SDK_RETRIES = frozenset({ProviderName.AWS, ProviderName.GCP, ProviderName.AZURE})
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


def load_provider(settings: Settings, *, background: bool = False) -> KeyManagementService:
    """Build the configured provider.

    ``background``: for a background job, which paces and retries its own calls (see
    :mod:`heimdall_kms.jobs.metered`): one attempt per call here, so that no retry sends a
    request the job has not paced. The circuit breaker stays.

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
    # Inside the retry layer: each attempt is one KMS call and one span (when tracing is on).
    # Imported here: telemetry.tracing builds on providers.base, so importing it at the top
    # would make `import heimdall_kms.telemetry.tracing` (done first) a circular import.
    from heimdall_kms.telemetry.tracing import traced  # noqa: PLC0415

    provider = traced(factory.from_settings(settings))
    if settings.provider is ProviderName.LOCAL:
        return provider  # a file on this host: nothing to retry, no network to break
    options = settings.resilience
    # botocore, google-api-core and azure-core already retry each request with backoff; doing it
    # again around the whole batch would multiply the attempts. They keep the breaker.
    attempts = 1 if background or settings.provider in _SDK_RETRIES else options.retry_attempts
    return ResilientProvider(
        provider,
        retry=RetryPolicy(attempts, options.retry_max_seconds),
        breaker=CircuitBreaker(options.breaker_threshold, options.breaker_cooldown_seconds),
    )
