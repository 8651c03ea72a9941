"""Every provider's calls are bounded by its documented timeout setting.

The endpoint is a real local TCP server that accepts connections and never answers (what a
black-holed load balancer or a stuck proxy does). Each provider is built from the environment,
as the command builds it, with its timeout setting at 1 s, and ``wrap_many`` must fail with
``KMSUnavailableError`` well before the SDKs' own defaults (azure-core's is 300 s per read).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heimdall_kms import primitives
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError, KMSUnavailableError
from heimdall_kms.providers import KeyManagementService

BOUND = 20.0  # seconds: a few attempts of 1 s each plus the SDKs' backoff, not minutes


class Silent:
    """Accepts every connection and holds it open without reading or writing."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def _azure(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "HMD_KMS_PROVIDER": "azure",
        "HMD_KMS_KEY_ID": f"https://127.0.0.1:{port}/keys/pii",
        "HMD_AZURE_TIMEOUT": "1",
        "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
    }


def _gcp(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "HMD_KMS_PROVIDER": "gcp",
        "HMD_KMS_KEY_ID": "projects/p/locations/l/keyRings/r/cryptoKeys/k",
        "HMD_GCP_KMS_ENDPOINT": f"http://127.0.0.1:{port}",
        "HMD_GCP_TRANSPORT": "rest",
        "HMD_GCP_CREDENTIALS": "anonymous",
        "HMD_GCP_TIMEOUT": "1",
    }


def _aws(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "HMD_KMS_PROVIDER": "aws",
        "HMD_KMS_KEY_ID": "alias/heimdall-pii",
        "HMD_AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_KMS": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "HMD_AWS_TIMEOUT": "1",
    }


def _vault(port: int, tmp_path: Path) -> dict[str, str]:
    return {
        "HMD_KMS_PROVIDER": "vault",
        "HMD_KMS_KEY_ID": "heimdall-pii",
        "HMD_VAULT_ADDR": f"http://127.0.0.1:{port}",
        "HMD_VAULT_TOKEN": "s.not-a-real-token",
        "HMD_VAULT_TIMEOUT": "1",
    }


def _build(settings: Settings) -> KeyManagementService:
    name = settings.provider.value if settings.provider else ""
    if name == "azure":
        from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider

        return AzureKeyVaultProvider.from_settings(settings)
    if name == "gcp":
        from heimdall_kms.providers.gcp.provider import GCPKMSProvider

        return GCPKMSProvider.from_settings(settings)
    if name == "aws":
        from heimdall_kms.providers.aws.provider import AWSKMSProvider

        return AWSKMSProvider.from_settings(settings)
    from heimdall_kms.providers.vault.transit import VaultTransitProvider

    return VaultTransitProvider.from_settings(settings)


class TestTimeouts:
    @pytest.mark.parametrize(
        "env", [_azure, _gcp, _aws, _vault], ids=["azure", "gcp", "aws", "vault"]
    )
    def test_wrap_many_against_a_silent_endpoint_fails_within_the_bound(
        self,
        silent: Silent,
        tmp_path: Path,
        env: Callable[[int, Path], dict[str, str]],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        variables = {"HMD_ENCRYPTION_MODE": "kms", **env(silent.port, tmp_path)}
        for name, value in variables.items():
            monkeypatch.setenv(name, value)  # the SDKs' credential chains read os.environ
        outcome: list[BaseException | None] = []

        def attempt() -> None:
            try:
                kms = _build(Settings.from_env(variables))
                kms.wrap_many([primitives.new_dek()], [{}])
            except HeimdallKMSError as exc:
                outcome.append(exc)
            else:
                outcome.append(None)

        started = time.monotonic()
        worker = threading.Thread(target=attempt, daemon=True)
        worker.start()
        worker.join(BOUND)
        elapsed = time.monotonic() - started
        assert not worker.is_alive(), f"wrap_many still waiting after {BOUND} s"
        assert isinstance(outcome[0], KMSUnavailableError), outcome
        assert elapsed < BOUND
