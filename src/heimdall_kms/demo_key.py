"""The demo's own master key: never the configured one.

Through Vault the demo creates a throwaway Transit key (``heimdall-demo-<random>``, deletion
allowed) next to the configured one, works only on it, and deletes it when the story ends,
failed or not. Without a provider (or with ``local``) it uses a keyring of its own in the work
directory, never ``HMD_LOCAL_KEYRING``. AWS, GCP and Azure are refused: a key there costs money
and cannot be deleted at once (days-long deletion windows, or never for GCP).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result
from heimdall_kms.audit.attempt import audited
from heimdall_kms.composition import load_provider
from heimdall_kms.config import ProviderName, Settings
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring

if TYPE_CHECKING:
    import hvac

__all__ = ["DemoKey", "demo_key"]

_LOCAL_KEY = "heimdall-demo"
KEYRING_NAME = "local-keyring.json"


@dataclass(frozen=True, slots=True)
class DemoKey:
    """Where the demo's key lives; ``settings`` name it (``kms_key_id``)."""

    settings: Settings
    throwaway: bool  # created for this run and deleted at its end (Vault)

    @property
    def name(self) -> str:
        return self.settings.kms_key_id or _LOCAL_KEY

    def open_provider(self) -> KeyManagementService:
        """The provider on this key. The local one is built directly on the demo's own keyring
        (created here, in the work directory): the summary says NOT FOR PRODUCTION once.

        Raises:
            ConfigurationError, KMSError: the provider cannot be built.
        """
        if self.settings.provider is ProviderName.LOCAL and self.settings.local_keyring:
            keyring = LocalKeyring(self.settings.local_keyring)
            keyring.ensure_key(self.name)
            return LocalDevProvider(keyring, self.name)
        return load_provider(self.settings)


@contextmanager
def demo_key(base: Settings, workdir: Path, say: Callable[[str], None]) -> Iterator[DemoKey]:
    """Yield settings naming the demo's own key; delete a throwaway key afterwards.

    ``base`` is the demo's settings with the configured provider (or none).

    Raises:
        ConfigurationError: a provider other than vault or local is configured.
        KMSError: the throwaway key could not be created or deleted.
    """
    if base.provider is ProviderName.VAULT and base.vault is not None:
        with _vault_key(base, say) as key:
            yield key
        return
    if base.provider not in (None, ProviderName.LOCAL):
        raise ConfigurationError(
            f"HMD_KMS_PROVIDER: the demo runs against vault (on a throwaway key) or the "
            f"local provider, not {base.provider}; unset it to run on the local provider"
        )
    local = dataclasses.replace(
        base,
        provider=ProviderName.LOCAL,
        kms_key_id=_LOCAL_KEY,
        vault=None,
        local_keyring=workdir / KEYRING_NAME,
    )
    yield DemoKey(local, throwaway=False)


@contextmanager
def _vault_key(base: Settings, say: Callable[[str], None]) -> Iterator[DemoKey]:
    from heimdall_kms.providers.vault import transit as vault  # noqa: PLC0415 - hvac only when configured

    assert base.vault is not None
    mount = base.vault.transit_mount
    name = f"heimdall-demo-{secrets.token_hex(4)}"
    client = vault.build_client(base.vault)
    try:
        with _recorded(base, EventType.KEY_CREATE, name):  # intent first, outcome after
            vault.create_throwaway_key(client, name, mount=mount)
        say(
            f"   working on a throwaway Transit key {mount}/{name}, created for this demo and "
            f"deleted at its end; the configured key {base.kms_key_id!r} is never used"
        )
        try:
            # No hashing key either: the configured one (HMD_HMAC_KEY_ID) is never used.
            demo = dataclasses.replace(base, kms_key_id=name, hmac_key_id=None)
            yield DemoKey(demo, throwaway=True)
        except BaseException:
            # The story failed: delete the key all the same, and report the story's error.
            with contextlib.suppress(HeimdallKMSError):
                _delete(client, base, name, say)
            raise
        _delete(client, base, name, say)
    finally:
        client.adapter.close()


def _delete(client: hvac.Client, base: Settings, name: str, say: Callable[[str], None]) -> None:
    from heimdall_kms.providers.vault import transit as vault  # noqa: PLC0415

    assert base.vault is not None
    mount = base.vault.transit_mount
    try:
        with _recorded(base, EventType.KEY_DELETE, name):
            vault.delete_throwaway_key(client, name, mount=mount)
    except HeimdallKMSError:
        say(f"   could not delete the throwaway key {mount}/{name}: delete it by hand")
        raise
    say(f"   deleted the throwaway Transit key {mount}/{name}")


@contextmanager
def _recorded(base: Settings, event_type: EventType, name: str) -> Iterator[None]:
    """The key's creation or deletion as an audited change in the demo's own audit log."""
    event = AuditEvent(
        event_type=event_type,
        actor="demo",
        request_id=secrets.token_hex(8),
        result=Result.SUCCESS,
        key_identifier=name,
        provider=ProviderName.VAULT.value,
        details=_THROWAWAY,
    )
    sink = FileAuditSink(Path(base.audit_log))
    try:
        with audited(sink, event):
            yield
    finally:
        sink.close()


_THROWAWAY: Mapping[str, object] = {"throwaway": True, "purpose": "demo"}
