"""The local provider: a keyring file per test."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from heimdall_kms import primitives
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring


class Backend:
    name = "local"
    binds_context = False

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="contract-local-"))
        self._count = 0

    def make(self) -> KeyManagementService:
        self._count += 1
        keyring = LocalKeyring(self._dir / f"k{self._count}.json")
        keyring.ensure_key("contract")
        return LocalDevProvider(keyring, "contract")

    def failing(self, how: str) -> Callable[[], object] | None:
        if how == "not_found":
            keyring = LocalKeyring(self._dir / "other.json")
            keyring.ensure_key("other")  # the file exists; the key asked for does not
            provider = LocalDevProvider(keyring, "missing")
            return lambda: provider.wrap_many([primitives.new_dek()], [{}])
        return None  # no network, no credentials, no quotas

    def close(self) -> None:
        return None
