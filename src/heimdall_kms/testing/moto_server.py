"""moto in server mode (``moto_server``, from ``moto[server]``) as a local AWS KMS.

:func:`start_moto` starts one server on a free loopback port and waits until it answers;
talk to it with real boto3 clients over HTTP (:func:`kms_client`, :meth:`MotoServer.env`) and
stop it with :meth:`MotoServer.stop`. What moto does not model (disabled keys still decrypt;
no IAM unless switched on, and then with an error body a JSON-protocol client cannot parse)
needs a botocore ``Stubber`` in the test that cares, never a mock of heimdall's own code.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from heimdall_kms.testing.processes import free_port, installed_binary, stop_process, wait_ready

__all__ = [
    "ACCESS_KEY",
    "REGION",
    "SECRET_KEY",
    "MotoServer",
    "kms_client",
    "moto_binary",
    "start_moto",
]

REGION = "us-east-1"
ACCESS_KEY = "testing"  # moto accepts any credentials unless IAM checks are switched on
SECRET_KEY = "testing"  # noqa: S105 - moto's documented dummy credentials


def moto_binary() -> str:
    return installed_binary("moto_server", "moto[server]")


def kms_client(
    endpoint: str,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    **config: Any,
) -> Any:
    """A real boto3 KMS client for ``endpoint`` with explicit credentials (no env, no profile)."""
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
    )
    options = {"retries": {"max_attempts": 1}, "max_pool_connections": 32, **config}
    return session.client("kms", endpoint_url=endpoint, config=Config(**options))


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, **kwargs: Any) -> Any:
        return kms_client(self.endpoint, **kwargs)

    def env(self, alias: str, **overrides: str) -> dict[str, str]:
        """HMD_* and AWS_* settings for the aws provider on this server (kms mode)."""
        return {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "aws",
            "HMD_KMS_KEY_ID": alias,
            "AWS_ENDPOINT_URL_KMS": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            **overrides,
        }

    @contextmanager
    def enforcing_credentials(self) -> Iterator[None]:
        """moto's opt-in IAM mode for the duration of the block: every request must then be
        signed with credentials of a user moto's IAM knows (none here, so all are refused)."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def _post(self, path: str, data: bytes) -> None:
        # moto reads the raw body; a form content type (urllib's default) would hide it.
        request = urllib.request.Request(  # noqa: S310 - the server's own http endpoint
            self.endpoint + path,
            data=data,
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            response.read()

    def stop(self) -> None:
        stop_process(self.process)


def start_moto(timeout: float = 30.0) -> MotoServer:
    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="moto-")) / "moto.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the installed moto_server, fixed arguments
            [moto_binary(), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    endpoint = f"http://127.0.0.1:{port}"
    wait_ready(
        process,
        partial(_answers, endpoint),
        name="moto_server",
        log_path=log_path,
        deadline=time.monotonic() + timeout,
        late="did not answer",
    )
    return MotoServer(endpoint, process, log_path)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as response:  # noqa: S310
            response.read()
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False
    return True
