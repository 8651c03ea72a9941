"""The package declares what it imports, ships what its tests read, and claims only the Pythons
its CI checks (issue 16 item 7)."""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NOT_SHIPPED = {"test", "bench"}  # extras for this repository's own tests and benchmarks


def imported_modules() -> set[str]:
    """Every third-party module named by an import under src/heimdall_kms."""
    found: set[str] = set()
    for path in (ROOT / "src" / "heimdall_kms").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {
        name
        for name in found
        if name.split(".")[0] not in sys.stdlib_module_names
        and name.split(".")[0] not in ("heimdall_kms", "__future__")
    }


def distributions_of(module: str) -> set[str]:
    """The installed distributions that provide ``module`` (namespace packages: by file)."""
    top = module.split(".", maxsplit=1)[0]
    candidates = metadata.packages_distributions().get(top, [])
    if len(candidates) <= 1:
        return {_normal(name) for name in candidates}
    path = module.replace(".", "/")
    owners = {
        _normal(name)
        for name in candidates
        if any(
            str(file).startswith(f"{path}/") or str(file) == f"{path}.py"
            for file in metadata.files(name) or []
        )
    }
    return owners or {_normal(name) for name in candidates}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> dict[str, Requirement]:
    requirements = [Requirement(text) for text in PROJECT["dependencies"]]
    for extra, texts in PROJECT["optional-dependencies"].items():
        if extra not in NOT_SHIPPED:
            requirements += [Requirement(text) for text in texts]
    return {_normal(r.name): r for r in requirements if _normal(r.name) != "heimdall-kms"}


class TestDependencies:
    def test_every_imported_module_is_a_declared_dependency(self) -> None:
        names = declared()
        missing = {
            module: sorted(owners)
            for module in sorted(imported_modules())
            if not (owners := distributions_of(module)) & names.keys()
        }
        assert not missing, f"imported but not declared (only transitive): {missing}"

    def test_hvac_is_capped_below_the_next_major(self) -> None:
        # providers/vault_http.py subclasses hvac's JSONAdapter and reads its attributes.
        (spec,) = [r.specifier for name, r in declared().items() if name == "hvac"]
        assert any(s.operator == "<" for s in spec), spec
        assert "3.0" not in spec and metadata.version("hvac") in spec


class TestSdist:
    def test_it_includes_every_top_level_directory_the_repository_tracks(self) -> None:
        if not (ROOT / ".git").exists():
            pytest.skip("not a git checkout (an unpacked sdist): no tracked files to compare")
        include = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
            "hatch"
        ]["build"]["targets"]["sdist"]["include"]
        tracked = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
        tops = {name.split("/")[0] for name in tracked if "/" in name} - {".ci"}
        assert tops <= set(include), tops - set(include)
        assert {"LICENSE", "SECURITY.md", "README.md", "CHANGELOG.md"} <= set(include)

    def test_the_licence_is_the_apache_2_0_text(self) -> None:
        text = (ROOT / "LICENSE").read_text(encoding="utf-8")
        assert PROJECT["license"] == "Apache-2.0"
        assert "Apache License\n                           Version 2.0, January 2004" in text
        assert "END OF TERMS AND CONDITIONS" in text


class TestPythons:
    def test_ci_checks_every_cpython_the_classifiers_claim(self) -> None:
        claimed = {
            c.rsplit(" ", 1)[1]
            for c in PROJECT["classifiers"]
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        }
        floor = PROJECT["requires-python"].removeprefix(">=")
        script = (ROOT / "scripts" / "other_pythons.sh").read_text(encoding="utf-8")
        (loop,) = re.findall(r"^for version in ([\d. ]+); do$", script, flags=re.M)
        assert claimed == {floor, *loop.split()}
        assert "bash scripts/other_pythons.sh" in (ROOT / "scripts" / "test.sh").read_text()
