"""heimdall_kms.testing.FakeKMS, the in-memory KMS users and benchmarks import: held to the
same contract as the real providers, so that a test passing on it means something."""

from __future__ import annotations

from collections.abc import Callable

from heimdall_kms.providers import KeyManagementService
from heimdall_kms.testing import FakeKMS


class Backend:
    name = "local"  # what the fake writes into envelopes by default
    binds_context = False

    def make(self) -> KeyManagementService:
        return FakeKMS("contract")

    def failing(self, how: str) -> Callable[[], object] | None:
        if how == "unavailable":
            closed = FakeKMS("contract")
            closed.close()
            return closed.describe
        return None  # in memory: no credentials, no permissions, no quotas, no other key

    def close(self) -> None:
        return None
