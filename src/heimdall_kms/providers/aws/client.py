"""The boto3 KMS client the AWS provider is built from, and the one way its calls are made.

:func:`build_client` makes a client from the settings (the standard credential chain, the
timeouts, the pool size); :func:`caller` wraps it as ``call(operation, **params)``: one request
under the client's total deadline with botocore's errors translated (:mod:`.errors`). The
key-versioning schemes (:mod:`.native`, :mod:`.aliases`) and the bootstrap take that ``call``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import BotoCoreError, NoRegionError

from heimdall_kms.errors import ConfigurationError, KMSUnavailableError
from heimdall_kms.providers.aws import aliases
from heimdall_kms.providers.aws.errors import NO_CREDENTIALS, TRANSPORT, translated
from heimdall_kms.providers.aws.native import Call
from heimdall_kms.providers.credential_outage import caused_by
from heimdall_kms.providers.deadline import deadline, watch_botocore

if TYPE_CHECKING:
    from heimdall_kms.providers.aws.settings import AWSSettings

__all__ = ["KMSClient", "bounded", "build_client", "caller", "create_key_for_alias", "deadline_of"]

# A boto3 KMS client. boto3 ships no type information (mypy_boto3_kms is not a dependency).
KMSClient = Any


def build_client(aws: AWSSettings) -> KMSClient:
    """A KMS client from the standard credential chain (env, profile, SSO, IRSA, IMDS).

    ``HMD_AWS_TIMEOUT`` is its connect and read timeout, and the total deadline of each call
    (:func:`caller`, the provider), botocore's own retries included: an answer that trickles
    in is cut there.

    Raises:
        ConfigurationError: no region is configured, or the AWS profile does not exist.
    """
    config = Config(
        retries={"mode": "standard"},  # AWS_MAX_ATTEMPTS still applies
        connect_timeout=aws.timeout_seconds,
        read_timeout=aws.timeout_seconds,
        max_pool_connections=max(10, aws.max_concurrency),
        user_agent_extra="heimdall-kms",
    )
    try:
        session = boto3.session.Session()
        client = session.client(
            "kms", region_name=aws.region, endpoint_url=aws.endpoint_url, config=config
        )
    except NoRegionError:
        raise ConfigurationError(
            "AWS_REGION: not set (also read: HMD_AWS_REGION, AWS_DEFAULT_REGION, the profile)"
        ) from None
    except BotoCoreError as exc:
        if isinstance(exc, NO_CREDENTIALS) and caused_by(exc, TRANSPORT):
            # The credential endpoint (IMDS, the container endpoint) did not answer: transient.
            raise KMSUnavailableError(
                f"AWS credentials: the credential endpoint is unreachable ({type(exc).__name__})"
            ) from None
        raise ConfigurationError(f"AWS configuration: {type(exc).__name__}") from None
    watch_botocore(client)  # HMD_AWS_TIMEOUT is also the total deadline of each call
    return client


def create_key_for_alias(client: KMSClient, alias: str) -> str:
    """Make ``alias`` a versioned key of the alias scheme; the latest key's id (see
    :func:`heimdall_kms.providers.aws.aliases.create_key_for_alias`).

    Raises:
        ConfigurationError: ``alias`` is not an ``alias/NAME``. KMSError: AWS refused.
    """
    return aliases.create_key_for_alias(caller(client), alias)


def caller(client: KMSClient) -> Call:
    """``call(operation, **params)``: one AWS request under the client's total deadline, with
    the one error translation."""

    seconds = deadline_of(client)

    def call(operation: str, **params: Any) -> dict[str, Any]:
        with bounded(operation, seconds):
            return dict(getattr(client, xform_name(operation))(**params))

    return call


def deadline_of(client: KMSClient) -> float:
    """The total deadline of one call: the client's read timeout (``build_client`` sets both
    to ``HMD_AWS_TIMEOUT``)."""
    return float(client.meta.config.read_timeout)


@contextmanager
def bounded(operation: str, seconds: float) -> Iterator[None]:
    """One AWS request under ``seconds`` of total deadline, its errors translated."""
    with deadline(seconds, f"AWS KMS {operation}"), translated(operation):
        yield
