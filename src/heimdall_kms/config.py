"""Typed settings, read once from the environment (SPEC §2).

Nothing else in the package reads ``os.environ``. :meth:`Settings.from_env` takes the mapping
to read, so tests and embedding applications pass their own. Every problem is reported as a
:class:`ConfigurationError` whose one-line message starts with the variable's name and never
repeats the value of a secret. (pydantic-settings was considered and not used: its errors
echo the offending input, which for ``HMD_PII_MASTER_KEY`` would be key material, and the
mode rules below are cross-field checks that read more plainly as code.)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from heimdall_kms import modes
from heimdall_kms.audit_settings import AuditAnchoring, read_anchoring
from heimdall_kms.errors import ConfigurationError
from heimdall_kms.kinds import (
    AWSKeyVersioning,
    EncryptionMode,
    GCPTransport,
    ProviderName,
    VaultAuthMethod,
    WriteFormat,
)
from heimdall_kms.legacy_context import LegacyContext, LegacyContextRule
from heimdall_kms.providers.aws.settings import AWSSettings
from heimdall_kms.providers.aws.settings import read_settings as read_aws
from heimdall_kms.providers.azure.settings import AzureSettings
from heimdall_kms.providers.azure.settings import read_settings as read_azure
from heimdall_kms.providers.gcp.settings import GCPSettings
from heimdall_kms.providers.gcp.settings import read_settings as read_gcp
from heimdall_kms.providers.local.settings import read_keyring
from heimdall_kms.providers.vault.settings import VaultSettings
from heimdall_kms.providers.vault.settings import read_settings as read_vault
from heimdall_kms.settings_env import Env, Secret

__all__ = [
    "DEFAULT_LEGACY_KEY_ID",
    "AWSKeyVersioning",
    "AWSSettings",
    "AzureSettings",
    "EncryptionMode",
    "GCPSettings",
    "GCPTransport",
    "ProviderName",
    "ResilienceSettings",
    "Secret",
    "Settings",
    "VaultAuthMethod",
    "VaultSettings",
    "WriteFormat",
    "audit_destination",
    "database_url",
]

DEFAULT_LEGACY_KEY_ID = "default-key-v1"
DEFAULT_KMS_KEY_ID = "heimdall-pii"
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True, slots=True)
class ResilienceSettings:
    """Retries and the circuit breaker, the same for every provider."""

    retry_attempts: int = 5  # HMD_KMS_RETRY_ATTEMPTS (1: no retry)
    retry_max_seconds: float = 30.0  # HMD_KMS_RETRY_MAX_SECONDS: total time spent retrying
    breaker_threshold: int = 5  # HMD_KMS_BREAKER_THRESHOLD: consecutive unavailable calls
    breaker_cooldown_seconds: float = 30.0  # HMD_KMS_BREAKER_COOLDOWN_SECONDS
    # HMD_JOB_STALL_SECONDS: a background job (migrate, reencrypt) keeps trying through
    # throttling and outages, and stops after this long without progress.
    job_stall_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything heimdall-kms is configured with. Build it with :meth:`from_env`."""

    mode: EncryptionMode = EncryptionMode.KMS
    hybrid_write: WriteFormat = WriteFormat.KMS_V1
    legacy_key_id: str = DEFAULT_LEGACY_KEY_ID
    # key_id -> 32-byte key; the primary (HMD_PII_MASTER_KEY) is under ``legacy_key_id``. Read
    # from the environment, ``bytes``; a bytearray where the key is made here to be wiped (the
    # throwaway env key of ``heimdall_kms.drill.sample``).
    legacy_keys: Mapping[str, Secret[bytes | bytearray]] = field(default_factory=dict)
    provider: ProviderName | None = None
    kms_key_id: str | None = None
    vault: VaultSettings | None = None
    aws: AWSSettings | None = None
    gcp: GCPSettings | None = None
    azure: AzureSettings | None = None
    local_keyring: Path | None = None
    # Left out of repr: a postgresql:// URL may carry the password (user:password@host).
    database_url: str | None = field(default=None, repr=False)
    audit_log: str = "stderr"
    # HMD_AUDIT_SIGNING_KEY and the anchor: the log's head is signed and anchored (SPEC §8).
    audit_anchoring: AuditAnchoring | None = None
    key_rotation_days: int = 90
    # HMD_KMS_PROPAGATION_SECONDS: how long rotate/retire wait for the KMS to put a new primary
    # version or a disabled version into effect (eventually consistent KMSs; docs/rotation.md).
    kms_propagation_seconds: float = 300.0
    resilience: ResilienceSettings = field(default_factory=ResilienceSettings)
    # HMD_ROTATION_CHECK_SECONDS: when set, `heimdall-kms serve` runs `rotate --if-due` this often.
    rotation_check_seconds: int | None = None
    # HMD_ADMIN_JOB_LEASE_SECONDS: a serve replica running an admin job renews its lease every
    # third of this; a job whose lease ran out is taken over by another replica.
    admin_job_lease_seconds: float = 30.0
    # Keyed hashing (hmac) has its own key at a pinned version, so that a tag, a search index,
    # survives every rotation of the encryption key (docs/configuration.md, "Keyed hashing").
    hmac_key_id: str | None = None  # HMD_HMAC_KEY_ID, default "<HMD_KMS_KEY_ID>-hmac"
    hmac_key_version: int = 1  # HMD_HMAC_KEY_VERSION: the version new tags are made with
    # HMD_HMAC_PREVIOUS_VERSION: during a re-index, lookups match tags of this version too.
    hmac_previous_version: int | None = None
    # HMD_MIGRATED_TARGETS / HMD_LEGACY_CONTEXT: a stated record context on a legacy value of
    # a migrated target is refused or flagged (heimdall_kms.legacy_context).
    legacy_context: LegacyContextRule = field(default_factory=LegacyContextRule)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and check every setting.

        Raises:
            ConfigurationError: a value is missing, malformed or inconsistent with the mode.
        """
        env = Env(environ)
        mode = env.enum("HMD_ENCRYPTION_MODE", EncryptionMode, EncryptionMode.KMS)
        hybrid_write = env.enum("HMD_HYBRID_WRITE_FORMAT", WriteFormat, WriteFormat.KMS_V1)
        legacy_key_id = env.get("HMD_PII_KEY_ID") or DEFAULT_LEGACY_KEY_ID
        legacy_keys = _read_legacy_keys(env, legacy_key_id)
        provider = env.optional_enum("HMD_KMS_PROVIDER", ProviderName)
        modes.check_settings(mode, hybrid_write, provider, env.given, legacy_keys, legacy_key_id)
        kms_key_id = _kms_key_id(env, provider)
        chosen = provider if modes.uses_kms(mode) else None
        part = _ProviderPart.read(env, chosen)
        audit_log = _audit_destination(env.get("HMD_AUDIT_LOG"))
        hmac_key_id, hmac_version, hmac_previous = _read_hmac(env, kms_key_id)
        return cls(
            mode=mode,
            hybrid_write=hybrid_write,
            legacy_key_id=legacy_key_id,
            legacy_keys=legacy_keys,
            provider=provider,
            kms_key_id=kms_key_id,
            vault=part.vault,
            aws=part.aws,
            gcp=part.gcp,
            azure=part.azure,
            local_keyring=part.local_keyring,
            database_url=_database_url(env.secret("HMD_DATABASE_URL")),
            audit_log=audit_log,
            audit_anchoring=read_anchoring(environ),
            # 0 is allowed: every `rotate --if-due` then rotates (drills and tests).
            key_rotation_days=env.integer("HMD_KEY_ROTATION_DAYS", 90, minimum=0),
            kms_propagation_seconds=env.number("HMD_KMS_PROPAGATION_SECONDS", 300.0),
            resilience=ResilienceSettings(
                retry_attempts=env.integer("HMD_KMS_RETRY_ATTEMPTS", 5, minimum=1),
                retry_max_seconds=env.number("HMD_KMS_RETRY_MAX_SECONDS", 30.0),
                breaker_threshold=env.integer("HMD_KMS_BREAKER_THRESHOLD", 5, minimum=1),
                breaker_cooldown_seconds=env.number("HMD_KMS_BREAKER_COOLDOWN_SECONDS", 30.0),
                job_stall_seconds=env.number("HMD_JOB_STALL_SECONDS", 300.0),
            ),
            rotation_check_seconds=(
                env.integer("HMD_ROTATION_CHECK_SECONDS", 0, minimum=1)
                if env.get("HMD_ROTATION_CHECK_SECONDS") is not None
                else None
            ),
            admin_job_lease_seconds=_positive(env, "HMD_ADMIN_JOB_LEASE_SECONDS", 30.0),
            hmac_key_id=hmac_key_id,
            hmac_key_version=hmac_version,
            hmac_previous_version=hmac_previous,
            legacy_context=LegacyContextRule.parse(
                env.get("HMD_MIGRATED_TARGETS"),
                env.enum("HMD_LEGACY_CONTEXT", LegacyContext, LegacyContext.REFUSE),
            ),
        )


def _kms_key_id(env: Env, provider: ProviderName | None) -> str | None:
    kms_key_id = env.get("HMD_KMS_KEY_ID")
    if provider is None or kms_key_id is not None:
        return kms_key_id
    if provider in (ProviderName.VAULT, ProviderName.LOCAL):
        return DEFAULT_KMS_KEY_ID
    raise ConfigurationError(f"HMD_KMS_KEY_ID: required for HMD_KMS_PROVIDER={provider.value}")


@dataclass(frozen=True, slots=True)
class _ProviderPart:
    """The provider's own settings: only the chosen one's are read and checked, each by the
    reader of its provider package."""

    vault: VaultSettings | None = None
    aws: AWSSettings | None = None
    gcp: GCPSettings | None = None
    azure: AzureSettings | None = None
    local_keyring: Path | None = None

    @classmethod
    def read(cls, env: Env, chosen: ProviderName | None) -> _ProviderPart:
        # The keyring path is read whatever the provider (the demo and audit signer use it).
        return cls(
            vault=read_vault(env) if chosen is ProviderName.VAULT else None,
            aws=read_aws(env) if chosen is ProviderName.AWS else None,
            gcp=read_gcp(env) if chosen is ProviderName.GCP else None,
            azure=read_azure(env) if chosen is ProviderName.AZURE else None,
            local_keyring=read_keyring(env, required=chosen is ProviderName.LOCAL),
        )


def _positive(env: Env, name: str, default: float) -> float:
    value = env.number(name, default)
    if not value > 0:
        raise ConfigurationError(f"{name}: must be a number of seconds above 0")
    return value


def _read_hmac(env: Env, kms_key_id: str | None) -> tuple[str | None, int, int | None]:
    key_id = _hmac_key_id(env, kms_key_id)
    version = env.integer("HMD_HMAC_KEY_VERSION", 1, minimum=1)
    return key_id, version, _previous_hmac_version(env, version)


def _hmac_key_id(env: Env, kms_key_id: str | None) -> str | None:
    key_id = env.get("HMD_HMAC_KEY_ID") or (f"{kms_key_id}-hmac" if kms_key_id else None)
    if key_id is not None and key_id == kms_key_id:
        raise ConfigurationError(
            "HMD_HMAC_KEY_ID: must name a key of its own, not HMD_KMS_KEY_ID (a keyed hash "
            "must survive rotations and retirement of the encryption key)"
        )
    return key_id


def _previous_hmac_version(env: Env, version: int) -> int | None:
    if env.get("HMD_HMAC_PREVIOUS_VERSION") is None:
        return None
    previous = env.integer("HMD_HMAC_PREVIOUS_VERSION", 1, minimum=1)
    if previous == version:
        raise ConfigurationError(
            "HMD_HMAC_PREVIOUS_VERSION: equals HMD_HMAC_KEY_VERSION; unset it after a re-index"
        )
    return previous


def _hex_key(name: str, raw: str) -> Secret[bytes]:
    # The message gives the length, never the characters: this is key material.
    if len(raw) != 64:
        raise ConfigurationError(f"{name}: expected 64 hex characters, got {len(raw)}")
    if not _HEX_KEY.fullmatch(raw):
        raise ConfigurationError(f"{name}: expected 64 hex characters, found a non-hex character")
    return Secret(bytes.fromhex(raw))


def _read_legacy_keys(env: Env, primary_id: str) -> dict[str, Secret[bytes]]:
    keys: dict[str, Secret[bytes]] = {}
    master = env.secret("HMD_PII_MASTER_KEY")
    if master is not None:
        keys[primary_id] = _hex_key("HMD_PII_MASTER_KEY", master)
    older = env.secret("HMD_PII_LEGACY_KEYS")
    if older is None:
        return keys
    for position, item in enumerate(older.split(","), start=1):
        key_id, hex_key = _legacy_entry(position, item)
        if key_id in keys:
            raise ConfigurationError(f"HMD_PII_LEGACY_KEYS: key id {key_id!r} is given twice")
        keys[key_id] = _hex_key(f"HMD_PII_LEGACY_KEYS (entry {position})", hex_key)
    return keys


def _legacy_entry(position: int, item: str) -> tuple[str, str]:
    """One ``id:hex`` entry of ``HMD_PII_LEGACY_KEYS``, as its key id and its hex, stripped."""
    key_id, sep, hex_key = item.strip().rpartition(":")
    if not sep or not key_id.strip():
        raise ConfigurationError(f"HMD_PII_LEGACY_KEYS: entry {position} is not of the form id:hex")
    return key_id.strip(), hex_key.strip()


def audit_destination(environ: Mapping[str, str]) -> str:
    """``HMD_AUDIT_LOG`` alone, for commands that need no KMS (status, rollback, purge).

    Raises:
        ConfigurationError: it names stdout.
    """
    return _audit_destination(Env(environ).get("HMD_AUDIT_LOG"))


def database_url(environ: Mapping[str, str]) -> str | None:
    """``HMD_DATABASE_URL`` (or ``HMD_DATABASE_URL_FILE``) alone, checked.

    Raises:
        ConfigurationError: not a sqlite:/// or postgresql:// URL.
    """
    return _database_url(Env(environ).secret("HMD_DATABASE_URL"))


def _audit_destination(value: str | None) -> str:
    if value is None or value.lower() == "stderr":
        return "stderr"
    if value.lower() in ("stdout", "-") or value in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        raise ConfigurationError("HMD_AUDIT_LOG: stdout carries command output; use a path")
    return value


def _database_url(value: str | None) -> str | None:
    # The URL may carry a password, so the message names the accepted forms, not the value.
    if value is not None and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigurationError(
            "HMD_DATABASE_URL: expected sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    return value
