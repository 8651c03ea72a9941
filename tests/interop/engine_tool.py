"""The interop engine (``tests/interop/engine``, Rust): built with cargo, offline, on demand.

It implements the legacy engine's format with the engine's own primitive library (``ring``
AES-256-GCM, ``serde_json`` into four required strings, standard base64), independently of this
package and of pycryptodome. Built against Debian's packaged crates (``librust-ring-dev``,
``librust-serde-json-dev``, ``librust-base64-dev``, ``librust-serde-derive-dev``), which
``scripts/test.sh`` installs; without them or cargo the suite skips with the reason (and fails
under ``CI=true``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Engine", "build_engine"]

SOURCE = Path(__file__).resolve().parent / "engine"
REGISTRY = Path("/usr/share/cargo/registry")
CRATES = ("ring-0.16", "serde_json-1", "base64-0.13", "serde_derive-1")


@dataclass(frozen=True)
class Engine:
    binary: Path

    def _run(self, *args: str, lines: list[str]) -> list[Any]:
        stdin = "".join(json.dumps(line) + "\n" for line in lines)
        result = subprocess.run(
            [str(self.binary), *args], input=stdin, capture_output=True, text=True, check=True
        )
        return [json.loads(line) for line in result.stdout.splitlines()]

    def encrypt(self, key_hex: str, key_id: str, plaintexts: list[str]) -> list[str]:
        return [str(v) for v in self._run("encrypt", key_hex, key_id, lines=plaintexts)]

    def decrypt(self, key_hex: str, stored: list[str]) -> list[dict[str, str]]:
        return self._run("decrypt", key_hex, lines=stored)

    def is_encrypted(self, stored: list[str]) -> list[bool]:
        return [bool(v) for v in self._run("is-encrypted", lines=stored)]

    def hash(self, values: list[str]) -> list[str]:
        return [str(v) for v in self._run("hash", lines=values)]


def _unavailable(reason: str) -> None:
    message = f"interop engine not built: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def build_engine(target_dir: Path = SOURCE / "target") -> Engine:
    """Build the engine (cargo caches it in ``target_dir``, git-ignored) or skip/fail."""
    target_dir.mkdir(parents=True, exist_ok=True)
    cargo = shutil.which("cargo")
    if cargo is None:
        _unavailable("cargo is not installed")
    missing = [c for c in CRATES if not any(REGISTRY.glob(f"{c}*"))]
    if missing:
        _unavailable(
            f"Debian crates missing in {REGISTRY}: {', '.join(missing)} (apt-get install "
            "librust-ring-dev librust-serde-json-dev librust-base64-dev librust-serde-derive-dev)"
        )
    assert cargo is not None
    # Built from a copy, so that cargo writes its lock file there, never into the repository
    # (a lock file of a newer cargo would stop an older one).
    work = target_dir / "source"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(SOURCE, work, ignore=shutil.ignore_patterns("target", "Cargo.lock"))
    result = subprocess.run(
        [cargo, "build", "--release", "--offline", "--quiet", "--target-dir", str(target_dir)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"cargo build of the interop engine failed: {result.stderr[-2000:]}")
    return Engine(target_dir / "release" / "heimdall-engine-interop")
