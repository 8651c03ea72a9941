"""Fixtures that start real servers (SPEC §10)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.dbtables import BACKENDS, UserTable
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


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The machine's PostgreSQL. CI fails without it; a developer's run may skip."""
    url = os.environ.get("HMD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        message = f"PostgreSQL at {url} is not reachable: {exc}".splitlines()[0]
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture(params=BACKENDS)
def table(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UserTable]:
    """A fresh user table (``id``, ``ssn``) on SQLite and on PostgreSQL text, jsonb and json."""
    url = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    created = UserTable.create(request.param, tmp_path, url)
    yield created
    created.drop()
