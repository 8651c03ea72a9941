"""The README's commands work as written: its opening, and its Vault block run end to end against
a real OpenBao dev server (the block itself, with a free port and without its install lines,
which the test environment has already done)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port

pytestmark = pytest.mark.vault

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


class TestReadme:
    def test_it_opens_with_the_two_set_up_commands(self) -> None:
        text = README.read_text(encoding="utf-8")
        assert text.startswith(
            "# heimdall-kms\n\n```sh\n"
            "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/heimdall-kms demo\n"
            "bash scripts/test.sh\n```\n"
        )

    def test_the_vault_block_encrypts_and_decrypts_through_openbao(self, tmp_path: Path) -> None:
        (block,) = [b for b in BLOCKS if "bao server -dev" in b]
        lines = [
            line
            for line in block.splitlines()
            if not line.startswith((". .venv/bin/activate", "pip install"))
        ]
        assert len(lines) == len(block.splitlines()) - 2  # only the install lines are left out
        script = "\n".join(lines).replace("127.0.0.1:8200", f"127.0.0.1:{free_port()}")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "VAULT_", "BAO_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run(
            ["bash", "-e", "-c", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "123-45-6789" in result.stdout
        assert "audit.log: intact, " in result.stdout
        log = (tmp_path / "audit.log").read_text(encoding="utf-8")
        assert '"event_type":"crypto.encrypt"' in log and '"event_type":"crypto.decrypt"' in log
        envelope = (tmp_path / "ssn.json").read_text(encoding="utf-8")
        assert '"provider":"vault"' in envelope.replace(" ", "") and "vault:v1:" in envelope
        assert "123-45-6789" not in envelope
