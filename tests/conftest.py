"""Fixtures that start real servers (SPEC §10)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import OpenBao, start_openbao


@pytest.fixture(scope="session")
def openbao() -> Iterator[OpenBao]:
    """One OpenBao dev server for the session. Tests must not seal it or break its key."""
    server = start_openbao()
    yield server
    server.stop()


@pytest.fixture
def fresh_openbao() -> Iterator[OpenBao]:
    """A server of the test's own, for tests that seal it, rotate or retire versions."""
    server = start_openbao()
    yield server
    server.stop()
