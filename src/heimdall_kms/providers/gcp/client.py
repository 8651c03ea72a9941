"""The Cloud KMS client the GCP provider is built from, and the CryptoKey name it is for.

:func:`build_client` makes a ``KeyManagementServiceClient`` from the settings (Application
Default Credentials, or none for a local test server; the endpoint; gRPC or REST);
:func:`check_key_name` checks what ``HMD_KMS_KEY_ID`` names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import google.auth
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.cloud import kms_v1

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import GCPTransport

if TYPE_CHECKING:
    from heimdall_kms.providers.gcp.settings import GCPSettings

__all__ = ["build_client", "check_key_name"]

_KEY_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+")
_SCOPE = "https://www.googleapis.com/auth/cloudkms"


def check_key_name(key_name: str) -> str:
    """Return the CryptoKey resource name, or raise naming ``HMD_KMS_KEY_ID``.

    Raises:
        ConfigurationError: not of the form projects/P/locations/L/keyRings/R/cryptoKeys/K.
    """
    if not _KEY_NAME.fullmatch(key_name):
        raise ConfigurationError(
            "HMD_KMS_KEY_ID: expected a CryptoKey resource name "
            "projects/P/locations/L/keyRings/R/cryptoKeys/K"
        )
    return key_name


def build_client(gcp: GCPSettings) -> kms_v1.KeyManagementServiceClient:
    """A Cloud KMS client for the settings: Application Default Credentials (or none, for a
    local test server), the endpoint and the transport.

    Raises:
        ConfigurationError: no Application Default Credentials can be found.
    """
    endpoint = gcp.endpoint
    if gcp.transport is GCPTransport.GRPC and endpoint is not None:
        if endpoint.startswith("http://"):
            return _plaintext_grpc_client(endpoint.removeprefix("http://"))
        endpoint = endpoint.removeprefix("https://")  # gRPC takes host[:port]; TLS is implied
    options = ClientOptions(api_endpoint=endpoint) if endpoint else None
    return kms_v1.KeyManagementServiceClient(
        credentials=_credentials(gcp), transport=gcp.transport.value, client_options=options
    )


def _plaintext_grpc_client(address: str) -> kms_v1.KeyManagementServiceClient:
    # A plaintext gRPC endpoint (a local test server; settings.py allows it only with
    # anonymous credentials): the client would otherwise insist on TLS.
    import grpc  # noqa: PLC0415 - only this test-server path needs grpc directly.
    from google.cloud.kms_v1.services.key_management_service.transports import (  # noqa: PLC0415
        KeyManagementServiceGrpcTransport,
    )

    channel = grpc.insecure_channel(address)
    return kms_v1.KeyManagementServiceClient(
        transport=KeyManagementServiceGrpcTransport(channel=channel)
    )


def _credentials(gcp: GCPSettings) -> Credentials:
    if gcp.anonymous:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
    try:
        credentials, _project = google.auth.default(scopes=[_SCOPE])
    except auth_exceptions.DefaultCredentialsError:
        raise ConfigurationError(
            "GOOGLE_APPLICATION_CREDENTIALS: no Application Default Credentials found (attach "
            "a service account, use Workload Identity, or run gcloud auth "
            "application-default login)"
        ) from None
    return credentials
