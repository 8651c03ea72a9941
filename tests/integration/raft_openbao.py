"""An OpenBao server on integrated (raft) storage, for fault tests that kill it and start it
again: unlike a dev server it keeps its keys on disk, starts sealed, and is unsealed with the
key its initialisation gave."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import requests

from heimdall_kms.testing import TRANSIT_KEY, free_port
from heimdall_kms.testing.openbao import bao_binary

_CONFIG = """storage "raft" {{
  path = "{data}"
  node_id = "heimdall-test"
}}
listener "tcp" {{
  address = "127.0.0.1:{port}"
  cluster_address = "127.0.0.1:{cluster}"
  tls_disable = true
}}
api_addr = "http://127.0.0.1:{port}"
cluster_addr = "http://127.0.0.1:{cluster}"
disable_mlock = true
"""


@dataclass
class RaftOpenBao:
    folder: Path
    port: int
    root_token: str = ""
    unseal_key: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.root_token)

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "vault",
            "HMD_KMS_KEY_ID": TRANSIT_KEY,
            "HMD_VAULT_ADDR": self.addr,
            "HMD_VAULT_TOKEN": self.root_token,
            **overrides,
        }

    def start(self) -> None:
        """Start the server (sealed) and unseal it; initialise it the first time."""
        config = self.folder / "bao.hcl"
        if not config.exists():
            (self.folder / "data").mkdir(parents=True)
            config.write_text(
                _CONFIG.format(data=self.folder / "data", port=self.port, cluster=free_port())
            )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with (self.folder / "bao.log").open("ab") as log:
            self.process = subprocess.Popen(
                [bao_binary(), "server", f"-config={config}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._wait(lambda health: "sealed" in health)
        client = hvac.Client(url=self.addr)
        if not client.sys.is_initialized():
            answer = client.sys.initialize(secret_shares=1, secret_threshold=1)
            self.root_token, self.unseal_key = answer["root_token"], answer["keys"][0]
        client.sys.submit_unseal_key(self.unseal_key)
        self._wait(lambda health: health.get("sealed") is False and not health.get("standby"))

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush beyond what raft already committed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    def _wait(self, ready: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "bao exited"
            try:
                health = requests.get(
                    f"{self.addr}/v1/sys/health",
                    params={"standbyok": "true", "sealedcode": "200", "uninitcode": "200"},
                    timeout=1,
                ).json()
            except requests.RequestException:
                time.sleep(0.1)
                continue
            if ready(health):
                return
            time.sleep(0.1)
        raise RuntimeError("OpenBao on raft did not become ready in time")


def start_raft_openbao(folder: Path) -> RaftOpenBao:
    """A raft-backed OpenBao, initialised and unsealed, with Transit and ``heimdall-pii``."""
    server = RaftOpenBao(folder, free_port())
    server.start()
    root = server.client()
    root.sys.enable_secrets_engine("transit", path="transit")
    root.secrets.transit.create_key(TRANSIT_KEY, mount_point="transit")
    return server
