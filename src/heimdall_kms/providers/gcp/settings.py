"""GCP Cloud KMS's settings (``HMD_GCP_*``), read by :func:`read_settings`. Imports no Google
library: :mod:`heimdall_kms.config` reads them at start-up whether or not the ``gcp`` extra is
installed."""

from __future__ import annotations

from dataclasses import dataclass

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import GCPTransport
from heimdall_kms.settings_env import Env

__all__ = ["GCPSettings", "read_settings"]


@dataclass(frozen=True, slots=True)
class GCPSettings:
    """GCP Cloud KMS. Credentials come from Application Default Credentials."""

    endpoint: str | None = None  # HMD_GCP_KMS_ENDPOINT, e.g. a private endpoint
    transport: GCPTransport = GCPTransport.GRPC  # HMD_GCP_TRANSPORT: grpc | rest
    anonymous: bool = False  # HMD_GCP_CREDENTIALS=anonymous: only for a local test server
    max_concurrency: int = 10  # HMD_GCP_MAX_CONCURRENCY: Cloud KMS has no batch call
    timeout_seconds: float = 30.0  # HMD_GCP_TIMEOUT: one KMS call, retries included


def read_settings(env: Env) -> GCPSettings:
    """The GCP settings.

    Raises:
        ConfigurationError: a value is malformed, or a plain http:// endpoint would carry
            Google credentials.
    """
    transport = GCPTransport(_choice(env, "HMD_GCP_TRANSPORT", ("grpc", "rest")))
    anonymous = _choice(env, "HMD_GCP_CREDENTIALS", ("default", "anonymous")) == "anonymous"
    endpoint = env.get("HMD_GCP_KMS_ENDPOINT")
    if endpoint is not None and endpoint.startswith("http://") and not anonymous:
        # Google credentials are bearer tokens: never send them over plain HTTP.
        raise ConfigurationError(
            "HMD_GCP_KMS_ENDPOINT: a plain http:// endpoint is allowed only with "
            "HMD_GCP_CREDENTIALS=anonymous (a local test server)"
        )
    return GCPSettings(
        endpoint=endpoint,
        transport=transport,
        anonymous=anonymous,
        max_concurrency=env.integer("HMD_GCP_MAX_CONCURRENCY", 10, minimum=1),
        timeout_seconds=env.number("HMD_GCP_TIMEOUT", 30.0),
    )


def _choice(env: Env, name: str, choices: tuple[str, str]) -> str:
    """One of ``choices`` (any case); the first is the default."""
    value = (env.get(name) or choices[0]).lower()
    if value not in choices:
        raise ConfigurationError(f"{name}: expected {' | '.join(choices)}, got {value!r}")
    return value
