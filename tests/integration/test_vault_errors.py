"""Vault errors name what failed: the operation, the address, the key and the mount — never the
token or anything else from the URL (issue 16 item 4). Real OpenBao, and a port nothing
listens on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import OpenBao, free_port

pytestmark = pytest.mark.vault

EXE = str(Path(sys.executable).with_name("heimdall-kms"))


def keys(env: dict[str, str]) -> str:
    """The one error line of `heimdall-kms keys` (a describe call)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_"))}
    result = subprocess.run(
        [EXE, "keys"],
        env={**base, "HMD_KMS_RETRY_ATTEMPTS": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    return line


class TestVaultErrorsNameWhatFailed:
    def test_unreachable_names_the_address_key_and_mount(self) -> None:
        port = free_port()
        line = keys(
            {
                "HMD_KMS_PROVIDER": "vault",
                "HMD_VAULT_ADDR": f"http://ops:pa55word@127.0.0.1:{port}/some/path",
                "HMD_VAULT_TOKEN": "s.SECRET-TOKEN",
                "HMD_KMS_KEY_ID": "pii-key",
                "HMD_VAULT_TRANSIT_MOUNT": "kms-transit",
            }
        )
        assert line == (
            f"heimdall-kms: error: cannot reach Vault at http://127.0.0.1:{port} for describe "
            "(key 'pii-key' on mount 'kms-transit'): ConnectionError"
        )

    @pytest.mark.parametrize(
        ("key", "mount"),
        [
            pytest.param("no-such-key", "transit", id="key"),
            pytest.param("k", "nomount", id="mount"),
        ],
    )
    def test_not_found_names_the_key_mount_and_address(
        self, openbao: OpenBao, key: str, mount: str
    ) -> None:
        env = openbao.env(HMD_KMS_KEY_ID=key, HMD_VAULT_TRANSIT_MOUNT=mount)
        line = keys(env)
        assert line == (
            f"heimdall-kms: error: Vault describe (key {key!r} on mount {mount!r}, "
            f"{openbao.addr}): no such transit key or mount (HTTP 404)"
        )
        assert openbao.root_token not in line
