"""Runs the contract suite once per provider backend (see backends/)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest

from tests.contract.backends import PROVIDER_MODULES, Backend


def _available() -> list[str]:
    found = []
    for name in PROVIDER_MODULES:
        try:
            importlib.import_module(f"tests.contract.backends.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tests.contract.backends.{name}":
                continue  # that provider's backend is not written yet
            raise
        found.append(name)
    return found


@pytest.fixture(scope="module", params=_available())
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    module = importlib.import_module(f"tests.contract.backends.{request.param}")
    instance: Backend = module.Backend()
    yield instance
    instance.close()
