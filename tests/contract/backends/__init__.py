"""One module per provider, each defining ``Backend``: how the contract suite gets a provider.

A backend builds a fresh provider on a fresh key for each test, and, for the error-translation
tests, providers whose calls fail in each way: bad credentials, missing permission, a missing
key, an unreachable service, throttling. A way that does not exist for a provider (the local
provider has no network) returns ``None`` and the test is skipped with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from heimdall_kms.providers import KeyManagementService

PROVIDER_MODULES = ["local", "fake", "vault", "aws", "aws_aliases", "gcp", "azure"]


class Backend(Protocol):
    name: str
    binds_context: bool  # does the KMS itself refuse an unwrap under another context?
    # A backend may say ``retires = False``: its KMS cannot make one version unusable (AWS's
    # own rotation), so ``retire`` must be refused instead (read with getattr, default True).

    def make(self) -> KeyManagementService: ...

    def failing(self, how: str) -> Callable[[], object] | None:
        """A call that fails in the way ``how`` names, or None if that cannot happen.

        ``how`` is one of: authentication, permission, not_found, unavailable, throttled.
        """

    def close(self) -> None: ...
