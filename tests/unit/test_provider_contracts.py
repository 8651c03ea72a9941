"""The two provider contracts of providers/base.py: the data plane apart from key admin, the
one retire range check, and the admin side found behind a data-plane reference."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from heimdall_kms.errors import ConfigurationError, InvalidInputError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.base import KeyAdmin, WrappedKey, check_retire_bound, key_admin
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring

SRC = Path(__file__).resolve().parents[2] / "src" / "heimdall_kms"


class _DataPlaneOnly:
    """A data-plane wrapper with no admin side (what a bare ``KeyWrapper`` may be)."""

    name = ProviderName.LOCAL
    key_identifier = "k"


class TestRetireBound:
    @pytest.mark.parametrize("below", [1, 2, 3])
    def test_inside_the_range_passes(self, below: int) -> None:
        """1..latest is accepted."""
        check_retire_bound(below, 3)

    @pytest.mark.parametrize("below", [0, -1, 4])
    def test_outside_the_range_is_refused_without_cli_words(self, below: int) -> None:
        """Outside 1..latest is an input error whose message names no CLI flag."""
        with pytest.raises(InvalidInputError) as caught:
            check_retire_bound(below, 3)
        assert "--" not in str(caught.value)
        assert "latest version 3" in str(caught.value)

    def test_no_provider_writes_its_own_range_check(self) -> None:
        """The wording lives in base.py alone; CLI vocabulary stays in cli/."""
        offenders = [
            str(path.relative_to(SRC))
            for folder in ("providers", "testing")
            for path in (SRC / folder).rglob("*.py")
            if "below-version must" in path.read_text(encoding="utf-8")
            or "below_version must" in path.read_text(encoding="utf-8")
        ]
        assert offenders == []


class TestKeyAdmin:
    def test_a_provider_has_the_admin_side(self, tmp_path: Path) -> None:
        """A provider class implements both contracts."""
        keyring = LocalKeyring(tmp_path / "ring.json")
        keyring.ensure_key("k")
        provider = LocalDevProvider(keyring, "k")
        assert isinstance(provider, KeyAdmin)
        assert key_admin(provider) is provider

    def test_a_bare_wrapper_is_refused(self) -> None:
        """A job handed only the data plane fails closed, naming the key."""
        with pytest.raises(ConfigurationError, match="admin side"):
            key_admin(_DataPlaneOnly())  # type: ignore[arg-type]


class TestDataPlaneConsumers:
    @pytest.mark.parametrize("module", ["sealing.py", "opening.py", "service.py"])
    def test_they_name_only_the_data_plane_contract(self, module: str) -> None:
        """Sealing, opening and Crypto never name the admin side or the union."""
        tree = ast.parse((SRC / module).read_text(encoding="utf-8"))
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        }
        assert not {"KeyAdmin", "KeyManagementService"} & (names | imported)


class TestWrappedKeyMade:
    def test_equals_the_constructor(self) -> None:
        made = WrappedKey.made("vault:v3:abc=", 3)
        assert made == WrappedKey("vault:v3:abc=", 3)
        assert (made.ciphertext, made.key_version, repr(made)) == (
            "vault:v3:abc=",
            3,
            repr(WrappedKey("vault:v3:abc=", 3)),
        )
        assert hash(made) == hash(WrappedKey("vault:v3:abc=", 3))

    def test_is_frozen_like_the_constructor(self) -> None:
        made = WrappedKey.made("vault:v1:abc=", 1)
        with pytest.raises(AttributeError):
            made.key_version = 2  # type: ignore[misc]
