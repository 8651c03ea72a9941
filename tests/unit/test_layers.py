"""The lower layers import nothing of the upper ones (issue 20): the envelope formats, the
primitives module and the provider contract never reach settings, the facade, the jobs, the CLI
or the admin API, neither directly nor through another module of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from heimdall_kms import config, kinds

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "heimdall_kms"
UPPER = ("config", "service", "jobs", "cli", "admin")


def _path_of(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str) -> set[str]:
    """The package's modules that ``module`` names in any import statement (also inside a
    function or under ``TYPE_CHECKING``: a type-only import is still a dependency)."""
    path = _path_of(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(path.read_text(encoding="utf-8"), package)


def _imports_in(source: str, package: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if _path_of(submodule) else base)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _closure(roots: list[str]) -> dict[str, str]:
    """Every package module reachable from ``roots``, each with the module that imports it."""
    seen: dict[str, str] = {root: root for root in roots}
    todo = list(roots)
    while todo:
        current = todo.pop()
        for name in _imported(current):
            if name not in seen and name != PACKAGE:
                seen[name] = current
                todo.append(name)
    return seen


def _upper(name: str) -> bool:
    return any(name == f"{PACKAGE}.{u}" or name.startswith(f"{PACKAGE}.{u}.") for u in UPPER)


def _modules_under(package: str) -> list[str]:
    root = SRC.joinpath(*package.split("."))
    return sorted(
        ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for path in root.rglob("*.py")
    )


def _primitives() -> list[str]:
    # crypto.py may be renamed primitives.py; whichever exists is held to the rule.
    names = [f"{PACKAGE}.{n}" for n in ("crypto", "primitives") if _path_of(f"{PACKAGE}.{n}")]
    assert names, "neither heimdall_kms/crypto.py nor heimdall_kms/primitives.py exists"
    return names


LOWER = {
    "envelope": lambda: _modules_under(f"{PACKAGE}.envelope"),
    "primitives": _primitives,
    "provider contract": lambda: [f"{PACKAGE}.providers.base"],
    "shared kinds": lambda: [f"{PACKAGE}.kinds"],
}


class TestImportLayers:
    @pytest.mark.parametrize("layer", sorted(LOWER))
    def test_lower_layer_reaches_no_upper_module(self, layer: str) -> None:
        """No import chain from the layer ends in config, service, jobs, cli or admin."""
        reached = _closure(LOWER[layer]())
        offenders = sorted(f"{by} imports {name}" for name, by in reached.items() if _upper(name))
        assert offenders == []

    def test_kinds_imports_nothing_of_the_package(self) -> None:
        """The shared enums are dependency-free: stdlib only."""
        assert _imported(f"{PACKAGE}.kinds") == set()

    @pytest.mark.parametrize("layer", sorted(LOWER))
    def test_importing_the_layer_loads_no_upper_module(self, layer: str) -> None:
        """At run time too, package ``__init__`` files included."""
        modules = LOWER[layer]()
        code = (
            "import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(' '.join(sorted(m for m in sys.modules if m.startswith('{PACKAGE}.'))))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert out.returncode == 0, out.stderr
        assert [m for m in out.stdout.split() if _upper(m)] == []


class TestTheWalker:
    def test_it_sees_a_known_dependency(self) -> None:
        """The facade reaches config, so a walk that found nothing there would be blind."""
        assert f"{PACKAGE}.config" in _closure([f"{PACKAGE}.service"])

    def test_it_resolves_submodules_relative_and_deferred_imports(self) -> None:
        """``from pkg import module``, ``from .. import x`` and an import inside a function or
        under TYPE_CHECKING all count."""
        source = (
            "from typing import TYPE_CHECKING\n"
            "from heimdall_kms import errors\n"
            "from ..config import Settings\n"
            "if TYPE_CHECKING:\n    from heimdall_kms.service import Crypto\n"
            "def f():\n    import heimdall_kms.jobs.migrate\n"
        )
        assert _imports_in(source, f"{PACKAGE}.providers") == {
            f"{PACKAGE}.errors",
            f"{PACKAGE}.config",
            f"{PACKAGE}.service",
            f"{PACKAGE}.jobs.migrate",
        }


class TestConfigReexports:
    @pytest.mark.parametrize(
        "name",
        ["AWSKeyVersioning", "EncryptionMode", "ProviderName", "VaultAuthMethod", "WriteFormat"],
    )
    def test_config_names_the_same_enum(self, name: str) -> None:
        """Code importing an enum from config keeps working, with the very same class."""
        assert getattr(config, name) is getattr(kinds, name)
        assert name in config.__all__
