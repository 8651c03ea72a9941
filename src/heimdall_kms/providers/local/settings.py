"""The local provider's one setting, ``HMD_LOCAL_KEYRING``. NOT FOR PRODUCTION."""

from __future__ import annotations

from pathlib import Path

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.settings_env import Env

__all__ = ["read_keyring"]


def read_keyring(env: Env, *, required: bool) -> Path | None:
    """The keyring file ``HMD_LOCAL_KEYRING`` names.

    Raises:
        ConfigurationError: ``required`` (the local provider is chosen) and it is not set: a
            keyring is only ever used when named on purpose.
    """
    value = env.get("HMD_LOCAL_KEYRING")
    if value is None and required:
        raise ConfigurationError(
            "HMD_LOCAL_KEYRING: the local provider needs its keyring file named on purpose "
            "(create one with heimdall-kms local init). NOT FOR PRODUCTION."
        )
    return Path(value) if value else None
