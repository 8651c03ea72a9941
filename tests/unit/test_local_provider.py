"""``LocalDevProvider`` over a real ``LocalKeyring`` file in tmp_path. NOT FOR PRODUCTION."""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from heimdall_kms import primitives
from heimdall_kms.composition import load_provider
from heimdall_kms.config import ProviderName, Settings
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyVersionRetiredError,
)
from heimdall_kms.providers import WrappedKey
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from tests.unit.conftest import KEY_NAME, keyring_master_hexes

START = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CTX = {"field": "ssn", "record": "r1"}


class StepClock:
    """A clock that moves one day forward each time it is read."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        current = self.now
        self.now += timedelta(days=1)
        return current


def make_provider(path: Path, clock: StepClock | None = None) -> LocalDevProvider:
    keyring = LocalKeyring(path, clock=clock or StepClock())
    keyring.ensure_key(KEY_NAME)
    return LocalDevProvider(keyring, KEY_NAME)


@pytest.fixture
def provider(keyring_path: Path) -> LocalDevProvider:
    return make_provider(keyring_path)


def wrap(provider: LocalDevProvider, count: int = 1) -> tuple[list[bytearray], list[WrappedKey]]:
    deks = [primitives.new_dek() for _ in range(count)]
    originals = [bytearray(dek) for dek in deks]
    wrapped = provider.wrap_many(deks, [CTX] * count)
    return originals, wrapped


def unwrap(provider: LocalDevProvider, items: list[str]) -> list[bytearray | HeimdallKMSError]:
    return provider.unwrap_many(items, [CTX] * len(items))


# -- the keyring file ------------------------------------------------------------------------------


def test_keyring_file_is_created_0600(keyring_path: Path) -> None:
    assert not keyring_path.exists()
    assert LocalKeyring(keyring_path).ensure_key(KEY_NAME) is True
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    document = json.loads(keyring_path.read_text(encoding="utf-8"))
    assert document["format"] == "heimdall-local-keyring/1"
    assert "NOT FOR PRODUCTION" in document["warning"]
    assert list(document["keys"][KEY_NAME]["versions"]) == ["1"]
    lock = keyring_path.with_name(keyring_path.name + ".lock")
    assert stat.S_IMODE(lock.stat().st_mode) & 0o077 == 0


def test_ensure_key_is_idempotent(keyring_path: Path) -> None:
    keyring = LocalKeyring(keyring_path)
    assert keyring.ensure_key(KEY_NAME) is True
    before = keyring_path.read_bytes()
    assert keyring.ensure_key(KEY_NAME) is False
    assert keyring_path.read_bytes() == before
    assert keyring.ensure_key("second-key") is True
    assert len(keyring_master_hexes(keyring_path)) == 2


def test_keyring_stays_0600_after_rotation(provider: LocalDevProvider, keyring_path: Path) -> None:
    provider.rotate()
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_refuses_a_file_others_can_read(keyring_path: Path, mode: int) -> None:
    LocalKeyring(keyring_path).ensure_key(KEY_NAME)
    os.chmod(keyring_path, mode)
    with pytest.raises(ConfigurationError) as info:
        LocalKeyring(keyring_path).ensure_key(KEY_NAME)
    message = str(info.value)
    assert message.startswith("HMD_LOCAL_KEYRING")
    assert "chmod 600" in message
    for master in keyring_master_hexes(keyring_path):
        assert master not in message


def test_provider_refuses_a_file_that_became_readable(
    provider: LocalDevProvider, keyring_path: Path
) -> None:
    os.chmod(keyring_path, 0o644)
    with pytest.raises(ConfigurationError):
        wrap(provider)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("not json at all", id="text"),
        pytest.param("[1, 2, 3]", id="json-array"),
        pytest.param('{"format": "something-else/1", "keys": {}}', id="other-format"),
        pytest.param('{"keys": {}}', id="no-format"),
    ],
)
def test_refuses_a_file_that_is_not_a_keyring(keyring_path: Path, content: str) -> None:
    keyring_path.write_text(content, encoding="utf-8")
    os.chmod(keyring_path, 0o600)
    with pytest.raises(ConfigurationError) as info:
        LocalKeyring(keyring_path).ensure_key(KEY_NAME)
    assert str(info.value).startswith("HMD_LOCAL_KEYRING")
    assert "not a heimdall keyring" in str(info.value)
    assert keyring_path.read_text(encoding="utf-8") == content  # left alone


def test_refuses_a_binary_file(keyring_path: Path) -> None:
    keyring_path.write_bytes(b"\xff\xfe\x00garbage")
    os.chmod(keyring_path, 0o600)
    with pytest.raises(ConfigurationError):
        LocalKeyring(keyring_path).ensure_key(KEY_NAME)


def test_keyring_in_a_new_directory(tmp_path: Path) -> None:
    path = tmp_path / "not-yet" / "keyring.json"
    assert LocalKeyring(path).ensure_key(KEY_NAME) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unknown_key_name(keyring_path: Path) -> None:
    LocalKeyring(keyring_path).ensure_key(KEY_NAME)
    other = LocalDevProvider(LocalKeyring(keyring_path), "no-such-key")
    with pytest.raises(KeyNotFoundError):
        wrap(other)
    with pytest.raises(KeyNotFoundError):
        other.describe()
    with pytest.raises(KeyNotFoundError):
        other.rotate()


# -- from_settings ---------------------------------------------------------------------------------


def test_from_settings_warns(
    keyring_path: Path, local_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        provider = load_provider(Settings.from_env(local_env))
    assert isinstance(provider, LocalDevProvider)
    assert provider.name is ProviderName.LOCAL
    assert provider.key_identifier == KEY_NAME
    assert "NOT FOR PRODUCTION" in caplog.text
    for master in keyring_master_hexes(keyring_path):
        assert master not in caplog.text


def test_from_settings_never_creates_the_keyring(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "keyring.json"
    env = {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(missing)}
    with pytest.raises(ConfigurationError) as info:
        LocalDevProvider.from_settings(Settings.from_env(env))
    assert str(info.value).startswith(f"HMD_LOCAL_KEYRING: {missing} does not exist")
    assert not missing.parent.exists()


def test_from_settings_uses_the_configured_key_name(
    keyring_path: Path, local_env: dict[str, str]
) -> None:
    LocalKeyring(keyring_path).ensure_key("dev-key")
    provider = LocalDevProvider.from_settings(
        Settings.from_env({**local_env, "HMD_KMS_KEY_ID": "dev-key"})
    )
    assert provider.key_identifier == "dev-key"
    assert provider.describe().key_identifier == "dev-key"


def test_from_settings_refuses_a_readable_file(
    keyring_path: Path, local_env: dict[str, str]
) -> None:
    keyring_path.write_text("{}", encoding="utf-8")
    os.chmod(keyring_path, 0o644)
    with pytest.raises(ConfigurationError):
        LocalDevProvider.from_settings(Settings.from_env(local_env))


def test_from_settings_without_keyring() -> None:
    with pytest.raises(ConfigurationError) as info:
        LocalDevProvider.from_settings(Settings())
    assert str(info.value).startswith("HMD_LOCAL_KEYRING")


# -- wrap / unwrap ---------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(provider: LocalDevProvider) -> None:
    originals, wrapped = wrap(provider, 3)
    assert [w.key_version for w in wrapped] == [1, 1, 1]
    assert all(w.ciphertext.startswith("local:v1:") for w in wrapped)
    assert len({w.ciphertext for w in wrapped}) == 3
    results = unwrap(provider, [w.ciphertext for w in wrapped])
    assert results == originals
    assert all(isinstance(r, bytearray) and len(r) == 32 for r in results)


def test_wrapping_twice_gives_different_wrapped_keys(provider: LocalDevProvider) -> None:
    dek = primitives.new_dek()
    first, second = provider.wrap_many([dek, dek], [CTX, CTX])
    assert first.ciphertext != second.ciphertext


def test_wrapped_key_holds_no_dek_and_repr_hides_it(provider: LocalDevProvider) -> None:
    originals, (wrapped,) = wrap(provider)
    assert originals[0].hex() not in wrapped.ciphertext
    assert wrapped.ciphertext not in repr(wrapped)
    assert "key_version=1" in repr(wrapped)


def test_empty_batches(provider: LocalDevProvider) -> None:
    assert provider.wrap_many([], []) == []
    assert provider.unwrap_many([], []) == []
    assert provider.rewrap_many([], []) == []


# -- rotation --------------------------------------------------------------------------------------


def test_rotate_creates_version_2_and_new_wraps_use_it(provider: LocalDevProvider) -> None:
    old_deks, old = wrap(provider)
    info = provider.rotate()
    assert info.latest_version == 2
    assert [v.version for v in info.versions] == [1, 2]
    new_deks, new = wrap(provider)
    assert new[0].key_version == 2
    assert new[0].ciphertext.startswith("local:v2:")
    assert unwrap(provider, [old[0].ciphertext, new[0].ciphertext]) == old_deks + new_deks


def test_rotation_adds_a_new_master_key(provider: LocalDevProvider, keyring_path: Path) -> None:
    provider.rotate()
    provider.rotate()
    masters = keyring_master_hexes(keyring_path)
    assert len(masters) == 3
    assert len(set(masters)) == 3


def test_two_instances_on_one_file_see_each_other(keyring_path: Path) -> None:
    first = make_provider(keyring_path)
    second = make_provider(keyring_path)
    _, (old,) = wrap(first)
    first.rotate()
    assert second.describe().latest_version == 2
    deks, (wrapped,) = wrap(second)
    assert wrapped.key_version == 2
    assert unwrap(first, [wrapped.ciphertext]) == deks
    second.retire(2)
    (result,) = unwrap(first, [old.ciphertext])
    assert isinstance(result, KeyVersionRetiredError)
    assert first.describe().min_decryption_version == 2


# -- retirement ------------------------------------------------------------------------------------


def test_retire_makes_older_versions_fail_per_item(provider: LocalDevProvider) -> None:
    v1_deks, v1 = wrap(provider, 2)
    provider.rotate()
    v2_deks, v2 = wrap(provider)
    info = provider.retire(2)
    assert info.min_decryption_version == 2
    assert [v.version for v in info.versions] == [2]
    results = unwrap(provider, [v1[0].ciphertext, v2[0].ciphertext, v1[1].ciphertext])
    assert isinstance(results[0], KeyVersionRetiredError)
    assert results[1] == v2_deks[0]
    assert isinstance(results[2], KeyVersionRetiredError)
    assert v1_deks[0].hex() not in str(results[0])


def test_retire_never_lowers_the_minimum(provider: LocalDevProvider) -> None:
    provider.rotate()
    provider.rotate()
    provider.retire(3)
    assert provider.retire(2).min_decryption_version == 3


def test_retire_the_latest_version_keeps_it_usable(provider: LocalDevProvider) -> None:
    provider.rotate()
    provider.retire(2)
    deks, (wrapped,) = wrap(provider)
    assert unwrap(provider, [wrapped.ciphertext]) == deks


@pytest.mark.parametrize("below", [0, -1, 3, 100])
def test_retire_out_of_range(provider: LocalDevProvider, keyring_path: Path, below: int) -> None:
    provider.rotate()
    before = keyring_path.read_bytes()
    with pytest.raises(InvalidInputError):
        provider.retire(below)
    assert keyring_path.read_bytes() == before
    assert provider.describe().min_decryption_version == 1


def test_rewrap_of_a_retired_version_fails_per_item(provider: LocalDevProvider) -> None:
    _, old = wrap(provider)
    provider.rotate()
    provider.retire(2)
    (result,) = provider.rewrap_many([old[0].ciphertext], [CTX])
    assert isinstance(result, KeyVersionRetiredError)


@pytest.mark.parametrize("version", [1, 9], ids=["retired", "missing"])
def test_a_damaged_wrap_is_damage_whatever_its_version(
    provider: LocalDevProvider, version: int
) -> None:
    """Damage is reported as damage (IntegrityError) before a version is looked up, so a
    corrupted value is not counted as retired or missing."""
    provider.rotate()
    provider.retire(2)
    (result,) = provider.unwrap_many([f"local:v{version}:not base64!"], [CTX])
    assert isinstance(result, IntegrityError)


# -- rewrap ----------------------------------------------------------------------------------------


def test_rewrap_many_moves_to_the_latest_version(provider: LocalDevProvider) -> None:
    deks, old = wrap(provider, 2)
    provider.rotate()
    provider.rotate()
    results = provider.rewrap_many([w.ciphertext for w in old], [CTX, CTX])
    assert all(isinstance(r, WrappedKey) and r.key_version == 3 for r in results)
    rewrapped = [r.ciphertext for r in results if isinstance(r, WrappedKey)]
    assert all(c.startswith("local:v3:") for c in rewrapped)
    assert unwrap(provider, rewrapped) == deks
    provider.retire(3)
    assert unwrap(provider, rewrapped) == deks


def test_rewrap_many_reports_bad_items_in_place(provider: LocalDevProvider) -> None:
    _, (good,) = wrap(provider)
    provider.rotate()
    results = provider.rewrap_many(["garbage", good.ciphertext], [CTX, CTX])
    assert isinstance(results[0], IntegrityError)
    assert isinstance(results[1], WrappedKey) and results[1].key_version == 2


# -- damaged wrapped keys --------------------------------------------------------------------------


def _flip_a_payload_char(wrapped: str) -> str:
    prefix, _, blob = wrapped.rpartition(":")
    body = blob.rstrip("=")
    index = len(body) // 2
    replacement = "A" if body[index] != "A" else "B"
    return f"{prefix}:{body[:index]}{replacement}{body[index + 1 :]}{blob[len(body) :]}"


def test_damaged_wrapped_keys_fail_per_item(provider: LocalDevProvider) -> None:
    deks, wrapped = wrap(provider, 2)
    good = wrapped[0].ciphertext
    damaged = [
        _flip_a_payload_char(good),
        good[:-8],
        good.replace("local:", "vault:", 1),
        "local:v1:",
        "local:v1:@@@@",
        "local:v1:AAAA",
        "",
    ]
    results = unwrap(provider, [*damaged, wrapped[1].ciphertext])
    for result in results[:-1]:
        assert isinstance(result, IntegrityError), result
    assert results[-1] == deks[1]


def test_wrapped_key_for_a_missing_version(provider: LocalDevProvider) -> None:
    _, (wrapped,) = wrap(provider)
    (result,) = unwrap(provider, [wrapped.ciphertext.replace("local:v1:", "local:v7:", 1)])
    assert isinstance(result, KeyNotFoundError)


def test_wrapped_key_moved_to_another_version_fails(provider: LocalDevProvider) -> None:
    _, (wrapped,) = wrap(provider)
    provider.rotate()
    (result,) = unwrap(provider, [wrapped.ciphertext.replace("local:v1:", "local:v2:", 1)])
    assert isinstance(result, IntegrityError)


def test_wrapped_key_from_another_key_name_fails(keyring_path: Path) -> None:
    first = make_provider(keyring_path)
    keyring = LocalKeyring(keyring_path)
    keyring.ensure_key("other")
    other = LocalDevProvider(keyring, "other")
    _, (wrapped,) = wrap(first)
    (result,) = unwrap(other, [wrapped.ciphertext])
    assert isinstance(result, IntegrityError)


# -- describe and health ---------------------------------------------------------------------------


def test_describe_lists_versions_with_creation_times(keyring_path: Path) -> None:
    clock = StepClock()
    provider = make_provider(keyring_path, clock)
    provider.rotate()
    provider.rotate()
    info = provider.describe()
    assert info.provider is ProviderName.LOCAL
    assert info.key_identifier == KEY_NAME
    assert info.latest_version == 3
    assert info.min_decryption_version == 1
    assert [v.version for v in info.versions] == [1, 2, 3]
    assert [v.created_at for v in info.versions] == [
        START,
        START + timedelta(days=1),
        START + timedelta(days=2),
    ]
    assert info.latest.version == 3
    assert info.latest.created_at == START + timedelta(days=2)


def test_describe_after_retire_lists_only_usable_versions(keyring_path: Path) -> None:
    provider = make_provider(keyring_path, StepClock())
    provider.rotate()
    provider.rotate()
    info = provider.retire(2)
    assert [v.version for v in info.versions] == [2, 3]
    assert info.versions[0].created_at == START + timedelta(days=1)


def test_describe_holds_no_key_material(provider: LocalDevProvider, keyring_path: Path) -> None:
    text = repr(provider.describe())
    for master in keyring_master_hexes(keyring_path):
        assert master not in text


def test_health(provider: LocalDevProvider) -> None:
    provider.health()
    provider.rotate()
    provider.retire(2)
    provider.health()
    provider.close()


def test_health_fails_on_a_broken_keyring(provider: LocalDevProvider, keyring_path: Path) -> None:
    os.chmod(keyring_path, 0o644)
    with pytest.raises(ConfigurationError):
        provider.health()
