"""AWS KMS's settings (``HMD_AWS_*`` and the standard ``AWS_*`` ones), read by
:func:`read_settings`. Imports no boto3: :mod:`heimdall_kms.config` reads them at start-up
whether or not the ``aws`` extra is installed."""

from __future__ import annotations

from dataclasses import dataclass

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import AWSKeyVersioning
from heimdall_kms.settings_env import Env

__all__ = ["AWSSettings", "read_settings"]


@dataclass(frozen=True, slots=True)
class AWSSettings:
    """AWS KMS. Credentials come from boto3's standard chain (env, profile, IMDS, IRSA)."""

    region: str | None = None  # HMD_AWS_REGION, else AWS_REGION / AWS_DEFAULT_REGION
    endpoint_url: str | None = None  # AWS_ENDPOINT_URL_KMS (else AWS_ENDPOINT_URL)
    max_concurrency: int = 16  # HMD_AWS_MAX_CONCURRENCY: KMS has no batch call
    timeout_seconds: float = 10.0  # HMD_AWS_TIMEOUT: connect and read timeout per request
    key_versioning: AWSKeyVersioning = AWSKeyVersioning.NATIVE  # HMD_AWS_KEY_VERSIONING


def read_settings(env: Env) -> AWSSettings:
    """The AWS settings.

    Raises:
        ConfigurationError: a value is malformed.
    """
    endpoint = env.get("AWS_ENDPOINT_URL_KMS", "AWS_ENDPOINT_URL")
    if endpoint is not None and not endpoint.startswith(("http://", "https://")):
        raise ConfigurationError("AWS_ENDPOINT_URL_KMS: expected an http:// or https:// URL")
    return AWSSettings(
        region=env.get("HMD_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        endpoint_url=endpoint,
        max_concurrency=env.integer("HMD_AWS_MAX_CONCURRENCY", 16, minimum=1),
        timeout_seconds=env.number("HMD_AWS_TIMEOUT", 10.0),
        key_versioning=_key_versioning(env.get("HMD_AWS_KEY_VERSIONING")),
    )


def _key_versioning(raw: str | None) -> AWSKeyVersioning:
    try:
        return AWSKeyVersioning((raw or "native").lower())
    except ValueError:
        raise ConfigurationError(
            f"HMD_AWS_KEY_VERSIONING: expected native | aliases, got {raw!r}"
        ) from None
