"""The encryption modes (SPEC §2): every rule about what a mode reads, writes and needs.

* ``legacy`` reads and writes the env-key format only; it has no KMS and needs the env key.
* ``hybrid`` reads both formats and writes ``kms_v1`` (legacy with the documented rollback
  switch ``HMD_HYBRID_WRITE_FORMAT=legacy``); it needs a KMS, and the env key for legacy values.
* ``kms`` reads and writes ``kms_v1`` only and refuses a legacy envelope; it needs a KMS, and
  the env key must not be set.

They are explicit rules, never a fallback inside a ``try``. Settings, the facade, the migration
job and the package's ``from_env`` ask this module; none of them decides on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from heimdall_kms.errors import ConfigurationError, ModeViolationError
from heimdall_kms.kinds import EncryptionMode, EnvelopeFormat, ProviderName, WriteFormat

__all__ = [
    "check_migration",
    "check_rollback",
    "check_settings",
    "read_refusal",
    "uses_kms",
    "writes",
]

_READS = {
    EncryptionMode.LEGACY: frozenset({EnvelopeFormat.LEGACY}),
    EncryptionMode.HYBRID: frozenset(EnvelopeFormat),
    EncryptionMode.KMS: frozenset({EnvelopeFormat.KMS_V1}),
}
_REFUSALS = {
    (EncryptionMode.KMS, EnvelopeFormat.LEGACY): (
        "legacy env-key envelope refused: HMD_ENCRYPTION_MODE=kms reads kms_v1 only"
    ),
    (EncryptionMode.LEGACY, EnvelopeFormat.KMS_V1): (
        "kms_v1 envelope refused: HMD_ENCRYPTION_MODE=legacy reads env-key data only"
    ),
}


def uses_kms(mode: EncryptionMode) -> bool:
    """Whether the mode needs a KMS provider (every mode but ``legacy``)."""
    return mode is not EncryptionMode.LEGACY


def writes(mode: EncryptionMode, hybrid_write: WriteFormat) -> EnvelopeFormat:
    """The format new values are written in."""
    if mode is EncryptionMode.LEGACY:
        return EnvelopeFormat.LEGACY
    if mode is EncryptionMode.HYBRID:
        return hybrid_write
    return EnvelopeFormat.KMS_V1


def read_refusal(mode: EncryptionMode, found: EnvelopeFormat) -> ModeViolationError | None:
    """The error a value of format ``found`` is refused with in ``mode``; None if it is read."""
    if found in _READS[mode]:
        return None
    return ModeViolationError(
        _REFUSALS.get((mode, found), f"{found} envelope refused: HMD_ENCRYPTION_MODE={mode}")
    )


def check_settings(  # noqa: PLR0917 - one fact per argument, as Settings.from_env reads them.
    mode: EncryptionMode,
    hybrid_write: WriteFormat,
    provider: ProviderName | None,
    given: Callable[[str], bool],
    legacy_keys: Mapping[str, object],
    legacy_key_id: str,
) -> None:
    """Refuse a configuration the mode cannot run with; ``given(name)`` says whether the
    environment sets a variable.

    Raises:
        ConfigurationError: naming the variable to change.
    """
    if hybrid_write is WriteFormat.LEGACY and mode is not EncryptionMode.HYBRID:
        raise ConfigurationError(
            "HMD_HYBRID_WRITE_FORMAT: the legacy rollback switch only applies to "
            "HMD_ENCRYPTION_MODE=hybrid"
        )
    if mode is EncryptionMode.LEGACY:
        _require_master_key(given)
        return
    _require_provider(mode, provider)
    if mode is EncryptionMode.KMS:
        _refuse_env_key(given)
    _require_rollback_key(hybrid_write, legacy_keys, legacy_key_id)


def _require_master_key(given: Callable[[str], bool]) -> None:
    if not given("HMD_PII_MASTER_KEY"):
        raise ConfigurationError("HMD_PII_MASTER_KEY: required when HMD_ENCRYPTION_MODE=legacy")


def _require_provider(mode: EncryptionMode, provider: ProviderName | None) -> None:
    if provider is None:
        raise ConfigurationError(
            f"HMD_KMS_PROVIDER: required when HMD_ENCRYPTION_MODE={mode.value} "
            "(vault | aws | gcp | azure | local)"
        )


def _require_rollback_key(
    hybrid_write: WriteFormat, legacy_keys: Mapping[str, object], legacy_key_id: str
) -> None:
    """The legacy rollback switch writes with the env key: it must be there."""
    if hybrid_write is WriteFormat.LEGACY and legacy_key_id not in legacy_keys:
        raise ConfigurationError("HMD_PII_MASTER_KEY: required when HMD_HYBRID_WRITE_FORMAT=legacy")


def _refuse_env_key(given: Callable[[str], bool]) -> None:
    for name in ("HMD_PII_MASTER_KEY", "HMD_PII_LEGACY_KEYS"):
        if given(name):
            raise ConfigurationError(
                f"{name}: must not be set when HMD_ENCRYPTION_MODE=kms (the default); remove "
                "the env key, or use HMD_ENCRYPTION_MODE=hybrid while legacy data remains"
            )


def check_migration(mode: EncryptionMode, hybrid_write: WriteFormat) -> None:
    """Migration reads the env key and writes through the KMS: only hybrid mode writing
    ``kms_v1`` does both.

    Raises:
        ConfigurationError: naming the variable to change.
    """
    _require_hybrid(mode, "migrate", "it reads the env key and writes through the KMS")
    if hybrid_write is WriteFormat.LEGACY:
        raise ConfigurationError(
            "HMD_HYBRID_WRITE_FORMAT: migrate writes kms_v1; unset the legacy rollback switch"
        )


def check_rollback(mode: EncryptionMode, *, env_key_set: bool) -> None:
    """Re-encrypting ``kms_v1`` values back to the legacy format (the true rollback) reads
    through the KMS and writes with the env key: only hybrid mode with the env key does both.

    Raises:
        ConfigurationError: naming the variable to change.
    """
    _require_hybrid(
        mode,
        "the rollback to the legacy format",
        "it reads through the KMS and writes with the env key",
    )
    if not env_key_set:
        raise ConfigurationError(
            "HMD_PII_MASTER_KEY: the rollback to the legacy format writes with the env key; set it"
        )


def _require_hybrid(mode: EncryptionMode, work: str, why: str) -> None:
    if mode is not EncryptionMode.HYBRID:
        raise ConfigurationError(
            f"HMD_ENCRYPTION_MODE: {work} needs hybrid ({why}); it is {mode.value}"
        )
