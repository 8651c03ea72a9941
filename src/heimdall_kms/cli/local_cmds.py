"""``heimdall-kms local init``: the one command that creates a local keyring. NOT FOR PRODUCTION.

Every other command refuses a ``HMD_LOCAL_KEYRING`` that does not exist, so a mistyped path is
an error instead of a new, empty keyring whose first ``rotate`` reports ``v1 -> v2``.
"""

from __future__ import annotations

import os

import click

from heimdall_kms.config import DEFAULT_KMS_KEY_ID, Settings
from heimdall_kms.errors import ConfigurationError

__all__ = ["local"]


@click.group()
def local() -> None:
    """The local development provider's keyring file (NOT FOR PRODUCTION)."""


@local.command("init")
def init() -> None:
    """Create the HMD_LOCAL_KEYRING file (mode 0600) with version 1 of HMD_KMS_KEY_ID.

    Idempotent: an existing keyring keeps its keys; a key it lacks is added. NOT FOR
    PRODUCTION: the master keys sit in the file in the clear.
    """
    from heimdall_kms.providers.local import LocalKeyring  # noqa: PLC0415 - loads crypto.

    settings = Settings.from_env(os.environ)
    if settings.local_keyring is None:
        raise ConfigurationError("HMD_LOCAL_KEYRING: name the keyring file to create")
    key = settings.kms_key_id or DEFAULT_KMS_KEY_ID
    keyring = LocalKeyring(settings.local_keyring)
    existed = keyring.path.exists()
    if keyring.ensure_key(key):
        what = "added key" if existed else "created keyring"
        click.echo(f"{what} {settings.local_keyring}: {key} v1 (NOT FOR PRODUCTION)")
    else:
        click.echo(f"unchanged: {settings.local_keyring} already holds {key}")
