"""Fixtures that start real servers (SPEC §10)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


class _FreshServers:
    """Brand-new OpenBao dev servers, one per test, with their start and stop off the tests'
    clock: while a test runs, the server of the next test that wants one starts in the
    background, and a used server is stopped in the background. No server is handed out twice.
    The threads end with the last such test (unit tests count threads)."""

    def __init__(self, wanted_by: list[pytest.Item]) -> None:
        self._wanted_by = wanted_by
        self._work = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-openbao")
        self._spare: Future[OpenBao] | None = None

    def take(self, item: pytest.Item) -> OpenBao:
        spare, self._spare = self._spare, None
        server = None
        if spare is not None:
            try:
                server = spare.result()
            except Exception:  # it started under the previous test's environment and
                server = None  # could not use it: start one here instead
        if server is None or server.process.poll() is not None:
            server = start_openbao()
        if self._wanted_by and self._wanted_by[-1] is not item:
            self._spare = self._work.submit(start_openbao)
        return server

    def give_back(self, server: OpenBao, item: pytest.Item) -> None:
        self._work.submit(server.stop)
        if self._wanted_by and self._wanted_by[-1] is item:
            self._work.shutdown(wait=True)  # the last one: nothing is left running

    def close(self) -> None:
        if self._spare is not None:
            self._spare.add_done_callback(_stop_started)
        self._work.shutdown(wait=True)


def _stop_started(started: Future[OpenBao]) -> None:
    if started.exception() is None:
        started.result().stop()


@pytest.fixture(scope="session")
def _fresh_servers(request: pytest.FixtureRequest) -> Iterator[_FreshServers]:
    wanted_by = [item for item in request.session.items if "fresh_openbao" in item.fixturenames]
    servers = _FreshServers(wanted_by)
    yield servers
    servers.close()


@pytest.fixture
def fresh_openbao(
    _fresh_servers: _FreshServers, request: pytest.FixtureRequest
) -> Iterator[OpenBao]:
    """A server of the test's own, for tests that seal it, rotate or retire versions."""
    server = _fresh_servers.take(request.node)
    yield server
    _fresh_servers.give_back(server, request.node)


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
