"""Every rule of ``Settings.from_env`` (SPEC §2).

Each error must be a ConfigurationError whose message is one line, starts with the name of the
variable at fault, and never repeats a secret value, even when secrets are set in the same
environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from heimdall_kms.config import (
    DEFAULT_LEGACY_KEY_ID,
    EncryptionMode,
    ProviderName,
    Secret,
    Settings,
    VaultAuthMethod,
    WriteFormat,
)
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from tests.unit.conftest import MASTER_HEX, OLD_LEGACY_HEX, VAULT_TOKEN

SECRET_ID = "SECRETID-0f1e2d3c"
SHORT_KEY = "ab" * 31 + "a"  # 63 characters of key material
LONG_KEY = "ab" * 33
NON_HEX_KEY = "zz" + "ab" * 31
_SECRET_VARS = ("HMD_PII_MASTER_KEY", "HMD_VAULT_TOKEN", "VAULT_TOKEN", "HMD_VAULT_SECRET_ID")

LOCAL = {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": "/tmp/unused-keyring.json"}
LEGACY = {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX}
HYBRID = {**LOCAL, "HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX}
VAULT = {
    "HMD_KMS_PROVIDER": "vault",
    "HMD_VAULT_ADDR": "https://vault.example:8200/",
    "HMD_VAULT_TOKEN": VAULT_TOKEN,
}


def _secrets_in(env: dict[str, str]) -> list[str]:
    found = [MASTER_HEX, OLD_LEGACY_HEX, VAULT_TOKEN, SECRET_ID]
    found += [env[name] for name in _SECRET_VARS if env.get(name)]
    for entry in env.get("HMD_PII_LEGACY_KEYS", "").split(","):
        found.append(entry.rpartition(":")[2].strip())
    # A prefix of a key is a leak too; 16 characters is plenty to recognise one.
    return [part for secret in found if len(secret) >= 8 for part in (secret, secret[:16])]


def expect_error(env: dict[str, str], variable: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    assert message.startswith(variable), message
    for secret in _secrets_in(env):
        assert secret not in message, f"secret leaked into: {message!r}"
        assert secret not in repr(info.value)
    return message


def assert_repr_clean(settings: Settings, env: dict[str, str]) -> None:
    for text in (repr(settings), str(settings)):
        for secret in _secrets_in(env):
            assert secret not in text


# -- defaults --------------------------------------------------------------------------------------


def test_defaults_from_env() -> None:
    settings = Settings.from_env(LOCAL)
    assert settings.mode is EncryptionMode.KMS
    assert settings.hybrid_write is WriteFormat.KMS_V1
    assert settings.legacy_key_id == DEFAULT_LEGACY_KEY_ID == "default-key-v1"
    assert settings.legacy_keys == {}
    assert settings.key_rotation_days == 90
    assert settings.audit_log == "stderr"
    assert settings.provider is ProviderName.LOCAL
    assert settings.kms_key_id == "heimdall-pii"
    assert settings.local_keyring == Path("/tmp/unused-keyring.json")
    assert settings.vault is None
    assert settings.database_url is None


def test_dataclass_defaults_match_the_spec() -> None:
    settings = Settings()
    assert settings.mode is EncryptionMode.KMS
    assert settings.legacy_key_id == "default-key-v1"
    assert settings.key_rotation_days == 90
    assert settings.audit_log == "stderr"


def test_empty_values_count_as_unset() -> None:
    env = {
        **LOCAL,
        "HMD_ENCRYPTION_MODE": "",
        "HMD_AUDIT_LOG": "  ",
        "HMD_KEY_ROTATION_DAYS": "",
        "HMD_PII_MASTER_KEY": "",
        "HMD_PII_KEY_ID": "",
    }
    settings = Settings.from_env(env)
    assert settings.mode is EncryptionMode.KMS
    assert settings.audit_log == "stderr"
    assert settings.key_rotation_days == 90
    assert settings.legacy_key_id == "default-key-v1"


def test_enum_values_are_case_insensitive() -> None:
    settings = Settings.from_env({**HYBRID, "HMD_ENCRYPTION_MODE": "HYBRID"})
    assert settings.mode is EncryptionMode.HYBRID
    settings = Settings.from_env({**LOCAL, "HMD_KMS_PROVIDER": "Local"})
    assert settings.provider is ProviderName.LOCAL


def test_database_url_is_passed_through() -> None:
    settings = Settings.from_env({**LOCAL, "HMD_DATABASE_URL": "sqlite:///x.db"})
    assert settings.database_url == "sqlite:///x.db"


def test_the_default_mode_is_kms_and_needs_a_provider() -> None:
    expect_error({}, "HMD_KMS_PROVIDER")


# -- modes -----------------------------------------------------------------------------------------


def test_legacy_mode_reads_the_master_key() -> None:
    settings = Settings.from_env(LEGACY)
    assert settings.mode is EncryptionMode.LEGACY
    assert settings.provider is None
    assert settings.legacy_keys["default-key-v1"].reveal() == bytes.fromhex(MASTER_HEX)
    assert_repr_clean(settings, LEGACY)


def test_legacy_mode_with_own_key_id() -> None:
    settings = Settings.from_env({**LEGACY, "HMD_PII_KEY_ID": "pii-2023"})
    assert settings.legacy_key_id == "pii-2023"
    assert set(settings.legacy_keys) == {"pii-2023"}


def test_legacy_mode_accepts_uppercase_hex_and_surrounding_blanks() -> None:
    settings = Settings.from_env({**LEGACY, "HMD_PII_MASTER_KEY": f"  {MASTER_HEX.upper()}\n"})
    assert settings.legacy_keys["default-key-v1"].reveal() == bytes.fromhex(MASTER_HEX)


def test_legacy_mode_needs_no_provider_nor_keyring() -> None:
    settings = Settings.from_env({**LEGACY, "HMD_KMS_PROVIDER": "local"})
    assert settings.local_keyring is None
    assert settings.vault is None
    settings = Settings.from_env({**LEGACY, "HMD_KMS_PROVIDER": "vault"})
    assert settings.vault is None  # Vault settings are only read when the KMS is used.


def test_hybrid_mode() -> None:
    settings = Settings.from_env(HYBRID)
    assert settings.mode is EncryptionMode.HYBRID
    assert settings.hybrid_write is WriteFormat.KMS_V1
    assert settings.provider is ProviderName.LOCAL
    assert set(settings.legacy_keys) == {"default-key-v1"}
    assert_repr_clean(settings, HYBRID)


def test_hybrid_rollback_switch_writes_legacy() -> None:
    env = {**HYBRID, "HMD_HYBRID_WRITE_FORMAT": "legacy"}
    settings = Settings.from_env(env)
    assert settings.hybrid_write is WriteFormat.LEGACY
    assert_repr_clean(settings, env)


def test_kms_mode() -> None:
    settings = Settings.from_env({**LOCAL, "HMD_ENCRYPTION_MODE": "kms"})
    assert settings.mode is EncryptionMode.KMS
    assert settings.legacy_keys == {}


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param({"HMD_ENCRYPTION_MODE": "legacy"}, "HMD_PII_MASTER_KEY", id="legacy-no-key"),
        pytest.param(
            {
                "HMD_ENCRYPTION_MODE": "legacy",
                "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}",
            },
            "HMD_PII_MASTER_KEY",
            id="legacy-only-older-keys",
        ),
        pytest.param(
            {**LEGACY, "HMD_PII_KEY_ID": "other-id", "HMD_PII_MASTER_KEY": ""},
            "HMD_PII_MASTER_KEY",
            id="legacy-empty-key",
        ),
        pytest.param(
            {"HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX},
            "HMD_KMS_PROVIDER",
            id="hybrid-no-provider",
        ),
        pytest.param({"HMD_ENCRYPTION_MODE": "kms"}, "HMD_KMS_PROVIDER", id="kms-no-provider"),
        pytest.param(
            {**LOCAL, "HMD_PII_MASTER_KEY": MASTER_HEX},
            "HMD_PII_MASTER_KEY",
            id="kms-default-refuses-master-key",
        ),
        pytest.param(
            {**LOCAL, "HMD_ENCRYPTION_MODE": "kms", "HMD_PII_MASTER_KEY": MASTER_HEX},
            "HMD_PII_MASTER_KEY",
            id="kms-refuses-master-key",
        ),
        pytest.param(
            {**LOCAL, "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}"},
            "HMD_PII_LEGACY_KEYS",
            id="kms-refuses-legacy-keys",
        ),
        pytest.param(
            {**LOCAL, "HMD_HYBRID_WRITE_FORMAT": "legacy"},
            "HMD_HYBRID_WRITE_FORMAT",
            id="write-legacy-in-kms",
        ),
        pytest.param(
            {**LEGACY, "HMD_HYBRID_WRITE_FORMAT": "legacy"},
            "HMD_HYBRID_WRITE_FORMAT",
            id="write-legacy-in-legacy",
        ),
        pytest.param(
            {**LOCAL, "HMD_ENCRYPTION_MODE": "hybrid", "HMD_HYBRID_WRITE_FORMAT": "legacy"},
            "HMD_PII_MASTER_KEY",
            id="write-legacy-needs-master-key",
        ),
        pytest.param(
            {
                **LOCAL,
                "HMD_ENCRYPTION_MODE": "hybrid",
                "HMD_HYBRID_WRITE_FORMAT": "legacy",
                "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}",
            },
            "HMD_PII_MASTER_KEY",
            id="write-legacy-older-keys-are-not-enough",
        ),
    ],
)
def test_mode_requirements(env: dict[str, str], variable: str) -> None:
    expect_error(env, variable)


def test_kms_refusal_message_explains_the_way_out() -> None:
    message = expect_error({**LOCAL, "HMD_PII_MASTER_KEY": MASTER_HEX}, "HMD_PII_MASTER_KEY")
    assert "hybrid" in message


# -- HMD_PII_LEGACY_KEYS ---------------------------------------------------------------------------


def test_legacy_keys_are_parsed() -> None:
    third = "ef" * 32
    env = {
        **LEGACY,
        "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}, old-2 : {third} ",
    }
    settings = Settings.from_env(env)
    assert settings.legacy_keys == {
        "default-key-v1": Secret(bytes.fromhex(MASTER_HEX)),
        "old-1": Secret(bytes.fromhex(OLD_LEGACY_HEX)),
        "old-2": Secret(bytes.fromhex(third)),
    }
    assert_repr_clean(settings, env)


def test_legacy_key_id_may_contain_a_colon() -> None:
    settings = Settings.from_env({**LEGACY, "HMD_PII_LEGACY_KEYS": f"tenant:a:{OLD_LEGACY_HEX}"})
    assert settings.legacy_keys["tenant:a"].reveal() == bytes.fromhex(OLD_LEGACY_HEX)


def test_legacy_keys_in_hybrid_mode() -> None:
    settings = Settings.from_env({**HYBRID, "HMD_PII_LEGACY_KEYS": f"old-1:{OLD_LEGACY_HEX}"})
    assert set(settings.legacy_keys) == {"default-key-v1", "old-1"}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(OLD_LEGACY_HEX, id="key-without-id"),
        pytest.param(f":{OLD_LEGACY_HEX}", id="empty-id"),
        pytest.param(f"  :{OLD_LEGACY_HEX}", id="blank-id"),
        pytest.param("old-1:", id="empty-key"),
        pytest.param("old-1:" + "cd" * 31 + "c", id="key-63-chars"),
        pytest.param("old-1:" + "cd" * 33, id="key-66-chars"),
        pytest.param("old-1:" + "zz" + "cd" * 31, id="key-not-hex"),
        pytest.param(f"old-1:0x{OLD_LEGACY_HEX[:62]}", id="key-0x-prefix"),
        pytest.param(f"old-1:{OLD_LEGACY_HEX},", id="trailing-comma"),
        pytest.param(f"old-1:{OLD_LEGACY_HEX},,old-2:{'ef' * 32}", id="empty-entry"),
        pytest.param(f"old-1:{OLD_LEGACY_HEX},old-2", id="second-entry-no-colon"),
    ],
)
def test_bad_legacy_key_entries(value: str) -> None:
    expect_error({**LEGACY, "HMD_PII_LEGACY_KEYS": value}, "HMD_PII_LEGACY_KEYS")


def test_bad_legacy_key_entry_names_its_position() -> None:
    value = f"old-1:{OLD_LEGACY_HEX},old-2:tooshort"
    message = expect_error({**LEGACY, "HMD_PII_LEGACY_KEYS": value}, "HMD_PII_LEGACY_KEYS")
    assert "entry 2" in message


def test_duplicate_legacy_key_ids() -> None:
    value = f"old-1:{OLD_LEGACY_HEX},old-1:{'ef' * 32}"
    message = expect_error({**LEGACY, "HMD_PII_LEGACY_KEYS": value}, "HMD_PII_LEGACY_KEYS")
    assert "old-1" in message


def test_legacy_key_id_colliding_with_the_primary() -> None:
    value = f"default-key-v1:{OLD_LEGACY_HEX}"
    expect_error({**LEGACY, "HMD_PII_LEGACY_KEYS": value}, "HMD_PII_LEGACY_KEYS")
    value = f"pii-2023:{OLD_LEGACY_HEX}"
    env = {**LEGACY, "HMD_PII_KEY_ID": "pii-2023", "HMD_PII_LEGACY_KEYS": value}
    expect_error(env, "HMD_PII_LEGACY_KEYS")


# -- HMD_PII_MASTER_KEY ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "detail"),
    [
        pytest.param(SHORT_KEY, "got 63", id="63-chars"),
        pytest.param(MASTER_HEX[:62], "got 62", id="62-chars"),
        pytest.param(LONG_KEY, "got 66", id="66-chars"),
        pytest.param(NON_HEX_KEY, "non-hex", id="non-hex"),
        pytest.param("0x" + MASTER_HEX[:62], "non-hex", id="0x-prefix"),
        pytest.param(MASTER_HEX[:32] + " " + MASTER_HEX[:31], "non-hex", id="inner-space"),
    ],
)
@pytest.mark.parametrize("base", [LEGACY, HYBRID], ids=["legacy", "hybrid"])
def test_bad_master_key(base: dict[str, str], key: str, detail: str) -> None:
    message = expect_error({**base, "HMD_PII_MASTER_KEY": key}, "HMD_PII_MASTER_KEY")
    assert detail in message
    assert key not in message
    assert key[:12] not in message


def test_bad_master_key_in_kms_mode_is_still_named() -> None:
    expect_error({**LOCAL, "HMD_PII_MASTER_KEY": SHORT_KEY}, "HMD_PII_MASTER_KEY")


# -- enums -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "base"),
    [
        ("HMD_ENCRYPTION_MODE", "kms_only", LOCAL),
        ("HMD_ENCRYPTION_MODE", "env", LEGACY),
        ("HMD_KMS_PROVIDER", "vaultt", {}),
        ("HMD_KMS_PROVIDER", "hsm", HYBRID),
        ("HMD_HYBRID_WRITE_FORMAT", "kms_v2", HYBRID),
        ("HMD_VAULT_AUTH_METHOD", "ldap", VAULT),
    ],
)
def test_bad_enum_values(variable: str, value: str, base: dict[str, str]) -> None:
    message = expect_error({**base, variable: value}, variable)
    assert repr(value) in message  # not a secret: saying what was read helps.


def test_bad_mode_lists_the_choices() -> None:
    message = expect_error({**LOCAL, "HMD_ENCRYPTION_MODE": "bogus"}, "HMD_ENCRYPTION_MODE")
    for choice in ("legacy", "hybrid", "kms"):
        assert choice in message


# -- provider key id -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure"])
def test_cloud_providers_need_a_key_id(provider: str) -> None:
    expect_error({"HMD_KMS_PROVIDER": provider}, "HMD_KMS_KEY_ID")
    settings = Settings.from_env({"HMD_KMS_PROVIDER": provider, "HMD_KMS_KEY_ID": "k-1"})
    assert settings.kms_key_id == "k-1"
    assert settings.provider == provider


def test_explicit_kms_key_id_for_local() -> None:
    settings = Settings.from_env({**LOCAL, "HMD_KMS_KEY_ID": "dev-key"})
    assert settings.kms_key_id == "dev-key"


# -- Vault -----------------------------------------------------------------------------------------


def test_vault_settings() -> None:
    settings = Settings.from_env(VAULT)
    vault = settings.vault
    assert vault is not None
    assert vault.addr == "https://vault.example:8200"
    assert vault.auth_method is VaultAuthMethod.TOKEN
    assert vault.token is not None
    assert vault.token.reveal() == VAULT_TOKEN
    assert vault.transit_mount == "transit"
    assert vault.namespace is None
    assert vault.cacert is None
    assert settings.kms_key_id == "heimdall-pii"
    assert_repr_clean(settings, VAULT)


def test_vault_optional_settings() -> None:
    env = {
        **VAULT,
        "HMD_VAULT_TRANSIT_MOUNT": "pii-transit",
        "HMD_VAULT_NAMESPACE": "team-a",
        "HMD_VAULT_TIMEOUT": "2.5",
        "HMD_VAULT_BATCH_SIZE": "100",
    }
    vault = Settings.from_env(env).vault
    assert vault is not None
    assert vault.transit_mount == "pii-transit"
    assert vault.namespace == "team-a"
    assert vault.timeout_seconds == 2.5
    assert vault.batch_size == 100


def test_vault_falls_back_to_the_standard_variables() -> None:
    env = {
        "HMD_KMS_PROVIDER": "vault",
        "VAULT_ADDR": "http://127.0.0.1:8200",
        "VAULT_TOKEN": VAULT_TOKEN,
        "VAULT_NAMESPACE": "ns1",
    }
    settings = Settings.from_env(env)
    assert settings.vault is not None
    assert settings.vault.addr == "http://127.0.0.1:8200"
    assert settings.vault.token == Secret(VAULT_TOKEN)
    assert settings.vault.namespace == "ns1"
    assert_repr_clean(settings, env)


def test_hmd_vault_variables_win_over_the_standard_ones() -> None:
    env = {
        **VAULT,
        "VAULT_ADDR": "http://other:8200",
        "VAULT_TOKEN": "s.OTHERSECRET",
    }
    vault = Settings.from_env(env).vault
    assert vault is not None
    assert vault.addr == "https://vault.example:8200"
    assert vault.token == Secret(VAULT_TOKEN)


def test_vault_approle() -> None:
    env = {
        "HMD_KMS_PROVIDER": "vault",
        "HMD_VAULT_ADDR": "https://vault.example",
        "HMD_VAULT_AUTH_METHOD": "approle",
        "HMD_VAULT_ROLE_ID": "role-1",
        "HMD_VAULT_SECRET_ID": SECRET_ID,
    }
    settings = Settings.from_env(env)
    assert settings.vault is not None
    assert settings.vault.auth_method is VaultAuthMethod.APPROLE
    assert settings.vault.token is None
    assert settings.vault.secret_id == Secret(SECRET_ID)
    assert_repr_clean(settings, env)


def test_vault_kubernetes() -> None:
    env = {
        "HMD_KMS_PROVIDER": "vault",
        "HMD_VAULT_ADDR": "https://vault.example",
        "HMD_VAULT_AUTH_METHOD": "kubernetes",
        "HMD_VAULT_K8S_ROLE": "heimdall",
    }
    vault = Settings.from_env(env).vault
    assert vault is not None
    assert vault.k8s_role == "heimdall"


def test_vault_cacert_that_exists(tmp_path: Path) -> None:
    cacert = tmp_path / "ca.pem"
    cacert.write_text("not checked here", encoding="utf-8")
    vault = Settings.from_env({**VAULT, "HMD_VAULT_CACERT": str(cacert)}).vault
    assert vault is not None
    assert vault.cacert == cacert
    vault = Settings.from_env({**VAULT, "VAULT_CACERT": str(cacert)}).vault
    assert vault is not None
    assert vault.cacert == cacert


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        pytest.param(
            {"HMD_KMS_PROVIDER": "vault", "HMD_VAULT_TOKEN": VAULT_TOKEN},
            "HMD_VAULT_ADDR",
            id="no-addr",
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_ADDR": "vault.example:8200"}, "HMD_VAULT_ADDR", id="no-scheme"
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_ADDR": "ftp://vault.example"}, "HMD_VAULT_ADDR", id="ftp"
        ),
        pytest.param(
            {"HMD_KMS_PROVIDER": "vault", "VAULT_ADDR": "vault:8200", "VAULT_TOKEN": VAULT_TOKEN},
            "HMD_VAULT_ADDR",
            id="bad-fallback-addr",
        ),
        pytest.param(
            {"HMD_KMS_PROVIDER": "vault", "HMD_VAULT_ADDR": "https://vault.example"},
            "HMD_VAULT_TOKEN",
            id="token-missing",
        ),
        pytest.param(
            {
                **VAULT,
                "HMD_VAULT_AUTH_METHOD": "approle",
                "HMD_VAULT_SECRET_ID": SECRET_ID,
            },
            "HMD_VAULT_ROLE_ID",
            id="approle-no-role-id",
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_AUTH_METHOD": "approle", "HMD_VAULT_ROLE_ID": "role-1"},
            "HMD_VAULT_SECRET_ID",
            id="approle-no-secret-id",
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_AUTH_METHOD": "kubernetes"},
            "HMD_VAULT_K8S_ROLE",
            id="kubernetes-no-role",
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_CACERT": "/nonexistent/ca.pem"},
            "HMD_VAULT_CACERT",
            id="cacert-missing",
        ),
        pytest.param(
            {**VAULT, "VAULT_CACERT": "/nonexistent/ca.pem"},
            "HMD_VAULT_CACERT",
            id="fallback-cacert-missing",
        ),
        pytest.param({**VAULT, "HMD_VAULT_TIMEOUT": "soon"}, "HMD_VAULT_TIMEOUT", id="timeout-nan"),
        pytest.param({**VAULT, "HMD_VAULT_TIMEOUT": "0"}, "HMD_VAULT_TIMEOUT", id="timeout-zero"),
        pytest.param(
            {**VAULT, "HMD_VAULT_BATCH_SIZE": "0"}, "HMD_VAULT_BATCH_SIZE", id="batch-zero"
        ),
        pytest.param(
            {**VAULT, "HMD_VAULT_BATCH_SIZE": "many"}, "HMD_VAULT_BATCH_SIZE", id="batch-text"
        ),
    ],
)
def test_vault_errors(env: dict[str, str], variable: str) -> None:
    expect_error(env, variable)


def test_vault_cacert_directory_is_refused(tmp_path: Path) -> None:
    expect_error({**VAULT, "HMD_VAULT_CACERT": str(tmp_path)}, "HMD_VAULT_CACERT")


def test_vault_addr_without_host_is_refused() -> None:
    expect_error({**VAULT, "HMD_VAULT_ADDR": "http://"}, "HMD_VAULT_ADDR")


# -- local provider, audit log, rotation -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["kms", "hybrid"])
def test_local_provider_needs_a_keyring(mode: str) -> None:
    env = {"HMD_ENCRYPTION_MODE": mode, "HMD_KMS_PROVIDER": "local"}
    if mode == "hybrid":
        env["HMD_PII_MASTER_KEY"] = MASTER_HEX
    message = expect_error(env, "HMD_LOCAL_KEYRING")
    assert "NOT FOR PRODUCTION" in message


@pytest.mark.parametrize("value", ["stdout", "-", "/dev/stdout"])
def test_audit_log_refuses_stdout(value: str) -> None:
    expect_error({**LOCAL, "HMD_AUDIT_LOG": value}, "HMD_AUDIT_LOG")


def test_audit_log_path(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.jsonl")
    assert Settings.from_env({**LOCAL, "HMD_AUDIT_LOG": path}).audit_log == path
    assert Settings.from_env({**LOCAL, "HMD_AUDIT_LOG": "stderr"}).audit_log == "stderr"


@pytest.mark.parametrize(("value", "days"), [("30", 30), ("1", 1), (" 365 ", 365), ("0", 0)])
def test_rotation_days(value: str, days: int) -> None:
    assert Settings.from_env({**LOCAL, "HMD_KEY_ROTATION_DAYS": value}).key_rotation_days == days


@pytest.mark.parametrize("value", ["-7", "ninety", "1.5", "90d"])
def test_bad_rotation_days(value: str) -> None:
    expect_error({**LOCAL, "HMD_KEY_ROTATION_DAYS": value}, "HMD_KEY_ROTATION_DAYS")


# -- the error type and the Secret wrapper ---------------------------------------------------------


def test_configuration_error_is_a_heimdall_error() -> None:
    assert issubclass(ConfigurationError, HeimdallKMSError)
    assert ConfigurationError.error_type == "configuration"


def test_secret_never_shows_its_value() -> None:
    secret = Secret(VAULT_TOKEN)
    assert repr(secret) == str(secret) == "Secret('***')"
    assert f"{secret}" == "Secret('***')"
    assert secret.reveal() == VAULT_TOKEN
    assert secret == Secret(VAULT_TOKEN)
    assert secret != Secret("other")
    assert hash(secret) == hash(Secret("other"))  # the hash gives nothing away either.


@pytest.mark.parametrize("value", ["STDOUT", "-", "/dev/fd/1", "/proc/self/fd/1"])
def test_audit_log_never_stdout(value: str) -> None:
    expect_error(
        {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX, "HMD_AUDIT_LOG": value},
        "HMD_AUDIT_LOG",
    )


def test_legacy_mode_needs_the_master_key_itself() -> None:
    env = {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_LEGACY_KEYS": f"default-key-v1:{MASTER_HEX}"}
    expect_error(env, "HMD_PII_MASTER_KEY")


class TestKeyedHashingKey:
    """The keyed hash has its own key at a pinned version (a search index survives rotation)."""

    def test_defaults(self) -> None:
        settings = Settings.from_env(HYBRID)
        assert settings.hmac_key_id == f"{settings.kms_key_id}-hmac"
        assert (settings.hmac_key_version, settings.hmac_previous_version) == (1, None)

    def test_a_reindex_window(self) -> None:
        env = {**HYBRID, "HMD_HMAC_KEY_VERSION": "3", "HMD_HMAC_PREVIOUS_VERSION": "2"}
        settings = Settings.from_env(env)
        assert (settings.hmac_key_version, settings.hmac_previous_version) == (3, 2)

    @pytest.mark.parametrize(
        ("changes", "variable"),
        [
            (
                {"HMD_HMAC_KEY_ID": "heimdall-pii", "HMD_KMS_KEY_ID": "heimdall-pii"},
                "HMD_HMAC_KEY_ID",
            ),
            ({"HMD_HMAC_KEY_VERSION": "0"}, "HMD_HMAC_KEY_VERSION"),
            ({"HMD_HMAC_PREVIOUS_VERSION": "1"}, "HMD_HMAC_PREVIOUS_VERSION"),
        ],
    )
    def test_refused(self, changes: dict[str, str], variable: str) -> None:
        expect_error({**HYBRID, **changes}, variable)


# -- secrets in files (*_FILE) ---------------------------------------------------------------------


def _secret_file(tmp_path: Path, content: str, *, mode: int = 0o600) -> Path:
    path = tmp_path / f"secret-{len(list(tmp_path.iterdir()))}"
    path.write_text(content, encoding="utf-8")
    path.chmod(mode)
    return path


# (variable, its value, the base environment without it, how to read it back)
_FILE_CASES = [
    pytest.param(
        "HMD_VAULT_TOKEN",
        VAULT_TOKEN,
        {k: v for k, v in VAULT.items() if k != "HMD_VAULT_TOKEN"},
        lambda s: s.vault.token.reveal(),
        id="vault-token",
    ),
    pytest.param(
        "HMD_VAULT_SECRET_ID",
        SECRET_ID,
        {
            **{k: v for k, v in VAULT.items() if k != "HMD_VAULT_TOKEN"},
            "HMD_VAULT_AUTH_METHOD": "approle",
            "HMD_VAULT_ROLE_ID": "role-1",
        },
        lambda s: s.vault.secret_id.reveal(),
        id="secret-id",
    ),
    pytest.param(
        "HMD_PII_MASTER_KEY",
        MASTER_HEX,
        {"HMD_ENCRYPTION_MODE": "legacy"},
        lambda s: s.legacy_keys[DEFAULT_LEGACY_KEY_ID].reveal().hex(),
        id="master-key",
    ),
    pytest.param(
        "HMD_PII_LEGACY_KEYS",
        f"old-1:{OLD_LEGACY_HEX}",
        {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX},
        lambda s: "old-1:" + s.legacy_keys["old-1"].reveal().hex(),
        id="legacy-keys",
    ),
    pytest.param(
        "HMD_DATABASE_URL",
        "postgresql://app:PASSWORD-1@db/test",
        dict(LOCAL),
        lambda s: s.database_url,
        id="database-url",
    ),
    pytest.param(
        "HMD_AUDIT_ANCHOR",
        "postgresql://anchor:PASSWORD-2@db/audit",
        {**LOCAL, "HMD_AUDIT_SIGNING_KEY": "heimdall-pii-audit"},
        lambda s: s.audit_anchoring.anchor_url,
        id="audit-anchor",
    ),
]


class TestSecretFiles:
    """Every secret setting may come from ``VAR_FILE`` instead of ``VAR``, never from both."""

    @pytest.mark.parametrize(("variable", "value", "base", "read"), _FILE_CASES)
    @pytest.mark.parametrize("ending", ["", "\n", "\r\n"])
    def test_the_file_gives_the_value(
        self,
        tmp_path: Path,
        variable: str,
        value: str,
        base: dict[str, str],
        read: Any,
        ending: str,
    ) -> None:
        path = _secret_file(tmp_path, value + ending)
        settings = Settings.from_env({**base, f"{variable}_FILE": str(path)})
        assert read(settings) == value
        assert value not in repr(settings)

    @pytest.mark.parametrize(("variable", "value", "base", "read"), _FILE_CASES)
    def test_both_is_an_error_naming_both(
        self, tmp_path: Path, variable: str, value: str, base: dict[str, str], read: Any
    ) -> None:
        path = _secret_file(tmp_path, value)
        env = {**base, variable: value, f"{variable}_FILE": str(path)}
        message = expect_error(env, f"{variable}, {variable}_FILE")
        assert value not in message

    @pytest.mark.parametrize(("variable", "value", "base", "read"), _FILE_CASES)
    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
    def test_a_file_others_may_read_is_refused(
        self,
        tmp_path: Path,
        variable: str,
        value: str,
        base: dict[str, str],
        read: Any,
        mode: int,
    ) -> None:
        path = _secret_file(tmp_path, value, mode=mode)
        message = expect_error({**base, f"{variable}_FILE": str(path)}, f"{variable}_FILE")
        assert f"{mode:04o}" in message and value not in message

    @pytest.mark.parametrize(("variable", "value", "base", "read"), _FILE_CASES)
    def test_a_missing_or_empty_file_is_refused(
        self, tmp_path: Path, variable: str, value: str, base: dict[str, str], read: Any
    ) -> None:
        missing = tmp_path / "missing"
        message = expect_error({**base, f"{variable}_FILE": str(missing)}, f"{variable}_FILE")
        assert "no such file" in message
        empty = _secret_file(tmp_path, "\n")
        assert "empty" in expect_error({**base, f"{variable}_FILE": str(empty)}, f"{variable}_FILE")

    def test_an_unreadable_file_or_a_directory_is_refused(self, tmp_path: Path) -> None:
        base = {k: v for k, v in VAULT.items() if k != "HMD_VAULT_TOKEN"}
        env = {**base, "HMD_VAULT_TOKEN_FILE": str(tmp_path)}
        assert "directory" in expect_error(env, "HMD_VAULT_TOKEN_FILE")
        binary = tmp_path / "binary"
        binary.write_bytes(b"\xff\xfe token")
        binary.chmod(0o600)
        env = {**base, "HMD_VAULT_TOKEN_FILE": str(binary)}
        assert "UTF-8" in expect_error(env, "HMD_VAULT_TOKEN_FILE")

    def test_a_bad_key_in_a_file_is_reported_by_its_length(self, tmp_path: Path) -> None:
        path = _secret_file(tmp_path, SHORT_KEY + "\n")
        env = {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY_FILE": str(path)}
        message = expect_error(env, "HMD_PII_MASTER_KEY")
        assert "got 63" in message and SHORT_KEY[:16] not in message

    def test_kms_mode_refuses_an_env_key_given_as_a_file(self, tmp_path: Path) -> None:
        path = _secret_file(tmp_path, MASTER_HEX)
        expect_error({**LOCAL, "HMD_PII_MASTER_KEY_FILE": str(path)}, "HMD_PII_MASTER_KEY")

    def test_the_token_file_wins_over_the_vault_token_fallback(self, tmp_path: Path) -> None:
        path = _secret_file(tmp_path, VAULT_TOKEN)
        env = {
            "HMD_KMS_PROVIDER": "vault",
            "HMD_VAULT_ADDR": "http://127.0.0.1:8200",
            "VAULT_TOKEN": "s.FROM-THE-SHELL",
            "HMD_VAULT_TOKEN_FILE": str(path),
        }
        vault = Settings.from_env(env).vault
        assert vault is not None and vault.token == Secret(VAULT_TOKEN)
        assert vault.token_file == path


_NO_TOKEN = {k: v for k, v in VAULT.items() if k != "HMD_VAULT_TOKEN"}


class TestVaultAuthMethods:
    """JWT/OIDC and TLS-certificate auth: what each needs (live: test_vault_auth_methods.py)."""

    def test_jwt_settings(self, tmp_path: Path) -> None:
        jwt = _secret_file(tmp_path, "eyJhbGciOi.x.y")
        env = {
            **_NO_TOKEN,
            "HMD_VAULT_AUTH_METHOD": "jwt",
            "HMD_VAULT_JWT_ROLE": "ci",
            "HMD_VAULT_JWT_FILE": str(jwt),
        }
        vault = Settings.from_env(env).vault
        assert vault is not None and vault.auth_method is VaultAuthMethod.JWT
        assert (vault.jwt_role, vault.jwt_file, vault.auth_mount) == ("ci", jwt, None)

    @pytest.mark.parametrize("missing", ["HMD_VAULT_JWT_ROLE", "HMD_VAULT_JWT_FILE"])
    def test_jwt_needs_a_role_and_a_file(self, tmp_path: Path, missing: str) -> None:
        env = {
            **_NO_TOKEN,
            "HMD_VAULT_AUTH_METHOD": "jwt",
            "HMD_VAULT_JWT_ROLE": "ci",
            "HMD_VAULT_JWT_FILE": str(_secret_file(tmp_path, "a.b.c")),
        }
        del env[missing]
        assert "required for HMD_VAULT_AUTH_METHOD=jwt" in expect_error(env, missing)

    def test_cert_settings(self, tmp_path: Path) -> None:
        cert = _secret_file(tmp_path, "-----BEGIN CERTIFICATE-----", mode=0o644)
        key = _secret_file(tmp_path, "-----BEGIN PRIVATE KEY-----")
        env = {
            **_NO_TOKEN,
            "HMD_VAULT_AUTH_METHOD": "cert",
            "HMD_VAULT_CLIENT_CERT": str(cert),
            "HMD_VAULT_CLIENT_KEY": str(key),
        }
        vault = Settings.from_env(env).vault
        assert vault is not None and vault.auth_method is VaultAuthMethod.CERT
        assert (vault.client_cert, vault.client_key, vault.cert_role) == (cert, key, None)
        readable_key = _secret_file(tmp_path, "-----BEGIN PRIVATE KEY-----", mode=0o644)
        expect_error({**env, "HMD_VAULT_CLIENT_KEY": str(readable_key)}, "HMD_VAULT_CLIENT_KEY")
        expect_error({**env, "HMD_VAULT_ADDR": "http://127.0.0.1:8200"}, "HMD_VAULT_ADDR")
        no_key = {k: v for k, v in env.items() if k != "HMD_VAULT_CLIENT_KEY"}
        expect_error(no_key, "HMD_VAULT_CLIENT_CERT, HMD_VAULT_CLIENT_KEY")
        nothing = {k: v for k, v in no_key.items() if k != "HMD_VAULT_CLIENT_CERT"}
        expect_error(nothing, "HMD_VAULT_CLIENT_CERT")

    @pytest.mark.parametrize("method", list(VaultAuthMethod))
    def test_the_doctor_has_a_fix_for_every_refused_login(self, method: VaultAuthMethod) -> None:
        from heimdall_kms.config import VaultSettings
        from heimdall_kms.doctor.report import fix_for
        from heimdall_kms.errors import AuthenticationError

        vault = VaultSettings(addr="https://vault.example:8200", auth_method=method)
        fix = fix_for(AuthenticationError("refused"), Settings(vault=vault))
        assert fix.startswith(("check ", "HMD_VAULT_TOKEN"))


class TestPreviousSigningKeys:
    """``HMD_AUDIT_PREVIOUS_SIGNING_KEYS``: the AWS signing keys a rotation replaced."""

    ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    AWS: ClassVar = {"HMD_KMS_PROVIDER": "aws", "HMD_KMS_KEY_ID": "alias/pii"}

    def test_a_list_of_key_arns_in_order_without_repeats(self) -> None:
        other = self.ARN.replace("1234abcd", "5678efab")
        listed = f" {self.ARN}, {other},{self.ARN}"
        env = {**self.AWS, "HMD_AUDIT_SIGNING_KEY": "alias/pii-audit"}
        settings = Settings.from_env({**env, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS": listed})
        assert settings.audit_anchoring is not None
        assert settings.audit_anchoring.previous_signing_keys == (self.ARN, other)
        unset = Settings.from_env(env).audit_anchoring
        assert unset is not None and unset.previous_signing_keys == ()

    def test_an_empty_entry_or_no_signing_key_is_an_error(self) -> None:
        env = {**self.AWS, "HMD_AUDIT_SIGNING_KEY": "alias/pii-audit"}
        for listed in (f"{self.ARN},", f"{self.ARN},,{self.ARN}"):
            expect_error({**env, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS": listed}, "HMD_AUDIT_PREVIOUS")
        alone = {**self.AWS, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS": self.ARN}
        assert "set HMD_AUDIT_SIGNING_KEY too" in expect_error(alone, "HMD_AUDIT_PREVIOUS")

    @pytest.mark.parametrize(
        "listed", ["alias/pii-audit-2026", "1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:x"]
    )
    def test_aws_takes_key_arns_only(self, listed: str) -> None:
        """An alias moves to the new key; a bare key id names no account."""
        from heimdall_kms.audit.signers import signer_from_settings

        env = {**self.AWS, "HMD_AUDIT_SIGNING_KEY": "alias/pii-audit"}
        settings = Settings.from_env({**env, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS": listed})
        with pytest.raises(ConfigurationError, match=r"^HMD_AUDIT_PREVIOUS_SIGNING_KEYS: .* ARN"):
            signer_from_settings(settings)

    def test_other_providers_refuse_it(self) -> None:
        """Their signatures name a version of the one key: nothing to list."""
        from heimdall_kms.audit.signers import signer_from_settings

        env = {**LOCAL, "HMD_AUDIT_SIGNING_KEY": "pii-audit"}
        settings = Settings.from_env({**env, "HMD_AUDIT_PREVIOUS_SIGNING_KEYS": self.ARN})
        with pytest.raises(ConfigurationError, match=r"^HMD_AUDIT_PREVIOUS_SIGNING_KEYS: only"):
            signer_from_settings(settings)
