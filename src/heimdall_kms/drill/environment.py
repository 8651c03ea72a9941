"""Where a drill runs: its own key, its own table, its own audit log — never production's.

With ``HMD_KMS_PROVIDER=vault`` the drill creates a throwaway Transit key
(``heimdall-drill-<random>``, deletion allowed) next to the real one and deletes it after;
the token needs to create, rotate, configure and delete keys under that name. Without a
provider configured, it uses the local provider in the work directory. Other providers are
refused: creating keys there costs money and days-long deletion windows.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from heimdall_kms.audit import AuditSink, FileAuditSink, open_sink
from heimdall_kms.audit.anchored import AnchoredVerdict, raise_if_tampered, verify_anchored
from heimdall_kms.audit.anchoring import log_id
from heimdall_kms.audit.signers import signer_from_settings
from heimdall_kms.audit.verify import verify
from heimdall_kms.composition import build_crypto
from heimdall_kms.config import EncryptionMode, ProviderName, Secret, Settings
from heimdall_kms.drill.sample import TABLE, ScratchTable
from heimdall_kms.errors import ConfigurationError, IncompleteError, InvalidInputError
from heimdall_kms.metrics import Metrics, unexported_metrics
from heimdall_kms.primitives import new_dek, wipe
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.local import LocalDevProvider, LocalKeyring
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Target

__all__ = ["TABLE", "DrillEnvironment", "drill_environment"]


@dataclass
class DrillEnvironment:
    workdir: Path
    settings: Settings
    kms: KeyManagementService
    crypto: Crypto
    audit_log: Path
    database: Path
    audit: AuditSink  # the drill's own log, shared by every step (and by ``crypto``)
    metrics: Metrics  # the drill's, exported nowhere

    @property
    def table(self) -> ScratchTable:
        return ScratchTable(self.database)

    @property
    def target(self) -> Target:
        return self.table.target

    def store(self) -> FieldStore:
        return self.table.store()

    def create_table(self) -> None:
        self.table.create()

    def verify_audit(self) -> dict[str, object]:
        """The drill's audit chain verified and, when checkpoints are signed, its last head
        signed now and every checkpoint's signature checked through the KMS.

        Raises:
            AuditTamperedError: the chain or a checkpoint is broken.
            IncompleteError: lines after the last checkpoint are unsigned (signing failed).
        """
        chain: dict[str, object] = verify(self.audit_log).to_dict()
        if self.settings.audit_anchoring is None or not isinstance(self.audit, FileAuditSink):
            return chain
        self.audit.checkpoint_now()
        signer = signer_from_settings(self.settings)
        if signer is None:
            return chain
        name = log_id(self.audit_log, self.settings)
        result = verify_anchored(self.audit_log, signer=signer, log_id=name, anchor_rows=[])
        raise_if_tampered(result)
        if result.verdict is AnchoredVerdict.UNSIGNED_TAIL:
            raise IncompleteError(result.message())
        chain["signed_checkpoints"] = result.checkpoints
        chain["last_signed_checkpoint"] = result.last_signed
        return chain

    def values(self) -> dict[str, str]:
        return self.table.values()

    def put(self, rows: Mapping[str, str]) -> None:
        self.table.put(rows)


@contextmanager
def drill_environment(
    workdir: Path, environ: Mapping[str, str], *, with_legacy_key: bool = False
) -> Iterator[DrillEnvironment]:
    """Set up the drill's key, database and audit log; tear the key down afterwards.

    Raises:
        InvalidInputError: ``workdir`` exists and is not an empty directory (nothing in it is
            ever deleted or overwritten: it could hold someone's audit log).
        ConfigurationError: a provider other than vault or local is configured.
        KMSError: the drill key could not be created.
    """
    _empty_workdir(workdir)
    audit_log, database = workdir / "audit.log", workdir / "drill.db"
    # The throwaway env key stays in this one bytearray (Secret holds it, no copy) and is
    # wiped on every path. Best effort (heimdall_kms.primitives): each seal and open under it
    # hands the AEAD a ``bytes`` copy that Python cannot wipe.
    env_key = new_dek() if with_legacy_key else None
    try:
        settings = _settings(workdir, environ, audit_log, env_key)
        kms, cleanup = _drill_key(settings, workdir)
        # With HMD_AUDIT_SIGNING_KEY the drill's own log is signed (and anchored) like any other.
        metrics = unexported_metrics()
        sink = open_sink(str(audit_log), settings, metrics=metrics)
        crypto = build_crypto(settings, kms=kms, audit=sink, metrics=metrics, default_actor="drill")
        environment = DrillEnvironment(
            workdir, settings, kms, crypto, audit_log, database, sink, metrics
        )
        environment.create_table()
        try:
            yield environment
        finally:
            sink.close()
            cleanup()
            kms.close()
    finally:
        if env_key is not None:
            wipe(env_key)


def _empty_workdir(workdir: Path) -> None:
    try:
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise InvalidInputError(
                f"drill work directory {workdir} is not empty: give a new or empty directory"
            )
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"drill work directory {workdir}: {exc.strerror}") from None


def _settings(
    workdir: Path, environ: Mapping[str, str], audit_log: Path, env_key: bytearray | None
) -> Settings:
    """The drill's settings: hybrid under ``env_key`` (the throwaway env key), if given."""
    mode = EncryptionMode.HYBRID if env_key is not None else EncryptionMode.KMS
    legacy: dict[str, Secret[bytes | bytearray]] = {}
    if env_key is not None:
        legacy["default-key-v1"] = Secret(env_key)
    if not environ.get("HMD_KMS_PROVIDER"):
        return Settings(
            mode=mode,
            legacy_keys=legacy,
            provider=ProviderName.LOCAL,
            kms_key_id="heimdall-drill",
            local_keyring=workdir / "keyring.json",
            audit_log=str(audit_log),
        )
    overrides = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_PII_MASTER_KEY": "",
        "HMD_PII_LEGACY_KEYS": "",
        "HMD_PII_MASTER_KEY_FILE": "",
        "HMD_PII_LEGACY_KEYS_FILE": "",
        "HMD_HYBRID_WRITE_FORMAT": "",
    }
    configured = Settings.from_env({**environ, **overrides})
    if configured.provider not in (ProviderName.VAULT, ProviderName.LOCAL):
        raise ConfigurationError(
            f"HMD_KMS_PROVIDER: drills run against vault or local, not {configured.provider}"
        )
    return replace(configured, mode=mode, legacy_keys=legacy, audit_log=str(audit_log))


def _drill_key(
    settings: Settings, workdir: Path
) -> tuple[KeyManagementService, Callable[[], None]]:
    if settings.provider is ProviderName.VAULT and settings.vault is not None:
        from heimdall_kms.providers.vault import transit as vault  # noqa: PLC0415 - hvac only when configured

        client = vault.build_client(settings.vault)
        name = f"heimdall-drill-{secrets.token_hex(4)}"
        mount = settings.vault.transit_mount
        vault.create_throwaway_key(client, name, mount=mount)
        provider = vault.VaultTransitProvider(client, name, mount=mount)
        return provider, lambda: vault.delete_throwaway_key(client, name, mount=mount)
    keyring = LocalKeyring(workdir / "keyring.json")
    keyring.ensure_key("heimdall-drill")
    return LocalDevProvider(keyring, "heimdall-drill"), lambda: None
