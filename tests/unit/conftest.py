"""Shared helpers for the unit tests: env dicts for the local provider and a legacy sealer.

Legacy envelopes are built here with pycryptodome (a second, independent AES-GCM
implementation), exactly as SPEC §4.1 describes the existing engine's output, so the tests do
not check heimdall_kms's crypto against itself.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.service import Crypto

# Recognisable secrets: any of them showing up in a message, repr or audit event is a leak.
MASTER_HEX = "ab" * 32
OLD_LEGACY_HEX = "cd" * 32
VAULT_TOKEN = "s.SECRETTOKEN"
KEY_NAME = "heimdall-pii"


@dataclass(frozen=True)
class Facade:
    """A ``Crypto`` as a test uses it, with the in-memory audit sink it writes to."""

    crypto: Crypto
    audit: MemoryAuditSink


def keyring_master_hexes(path: Path) -> list[str]:
    """Every master key (hex) stored in a local keyring file."""
    document = json.loads(path.read_text(encoding="utf-8"))
    return [entry["key"] for key in document["keys"].values() for entry in key["versions"].values()]


def secret_forms(key_hexes: Iterable[str]) -> list[str]:
    """The ways key material could leak into text: hex (both cases) and base64."""
    forms: list[str] = []
    for key_hex in key_hexes:
        raw = bytes.fromhex(key_hex)
        forms += [key_hex.lower(), key_hex.upper(), base64.b64encode(raw).decode("ascii")]
    return forms


def assert_no_leak(text: str, secrets: Iterable[str]) -> None:
    for secret in secrets:
        assert secret not in text, "secret material leaked"


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    return tmp_path / "keyring.json"


@pytest.fixture
def local_env(keyring_path: Path) -> dict[str, str]:
    """kms mode on the local provider, keyring (created, as `local init` does) in tmp_path."""
    LocalKeyring(keyring_path).ensure_key(KEY_NAME)
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(keyring_path),
    }


@pytest.fixture
def hybrid_env(local_env: dict[str, str]) -> dict[str, str]:
    return {**local_env, "HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX}


@pytest.fixture
def legacy_env() -> dict[str, str]:
    return {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX}
