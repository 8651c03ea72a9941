"""The checks every configuration gets, whatever the provider, in the order they depend."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from heimdall_kms import modes
from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.composition import build_crypto, load_provider
from heimdall_kms.config import (
    EncryptionMode,
    ProviderName,
    ResilienceSettings,
    Settings,
    WriteFormat,
    audit_destination,
    database_url,
)
from heimdall_kms.doctor.report import Check, DoctorReport, Status, fix_for
from heimdall_kms.envelope import Envelope, KmsV1Envelope
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError, PermissionDeniedError
from heimdall_kms.jobs.rotation import is_due, next_due
from heimdall_kms.metrics import unexported_metrics
from heimdall_kms.providers import KeyManagementService, needs_extra
from heimdall_kms.store import JOURNAL_TABLE, Target, open_store

__all__ = ["run_doctor"]

_ENV_KEYS = (
    "HMD_PII_MASTER_KEY",
    "HMD_PII_MASTER_KEY_FILE",
    "HMD_PII_LEGACY_KEYS",
    "HMD_PII_LEGACY_KEYS_FILE",
)
_FAST_VAULT_TIMEOUT = 10.0


def run_doctor(environ: Mapping[str, str], *, canary: bool = True) -> DoctorReport:
    """Run every check against the settings in ``environ``; never raises for what it finds.

    The canary is one real encrypt and decrypt through the facade, audited (actor ``doctor``,
    reason ``canary``) like any other value.
    """
    report = DoctorReport()
    settings = _settings_and_mode(report, environ)
    sink = _audit(report, settings, environ)
    _database(report, settings, environ)
    kms: KeyManagementService | None = None
    try:
        kms = _kms(report, settings)
        _canary(report, settings, kms, sink, enabled=canary)
    finally:
        if kms is not None:
            kms.close()
        if sink is not None:
            sink.close()
    return report


def _kms(report: DoctorReport, settings: Settings | None) -> KeyManagementService | None:
    """The provider, checked, when the settings use one and it is usable."""
    if settings is None:
        for name in ("provider", "key"):
            report.add(Check(name, Status.SKIP, "needs valid settings"))
        return None
    if settings.mode is EncryptionMode.LEGACY:
        report.add(Check("provider", Status.SKIP, "legacy mode uses no KMS"))
        return None
    return _provider(report, settings)


def _fast(settings: Settings) -> Settings:
    # The doctor reports a KMS that is away at once instead of retrying it for half a minute.
    vault = settings.vault
    if vault is not None:
        timeout = min(vault.timeout_seconds, _FAST_VAULT_TIMEOUT)
        vault = dataclasses.replace(vault, timeout_seconds=timeout)
    return dataclasses.replace(
        settings, vault=vault, resilience=ResilienceSettings(retry_attempts=1)
    )


def _settings_and_mode(report: DoctorReport, environ: Mapping[str, str]) -> Settings | None:
    stray = _stray_env_keys(environ)
    # An env key left in a kms deployment is reported once, as the mode's failure, and left out
    # so that every other setting can still be checked.
    source = {k: v for k, v in environ.items() if k not in stray}
    settings = _settings(report, source)
    report.add(_mode_check(stray, settings))
    return settings


def _stray_env_keys(environ: Mapping[str, str]) -> list[str]:
    """The legacy env keys still set where the mode is kms (the default)."""
    mode = environ.get("HMD_ENCRYPTION_MODE", "").strip().lower() or "kms"
    if mode != "kms":
        return []
    return [name for name in _ENV_KEYS if environ.get(name, "").strip()]


def _settings(report: DoctorReport, source: Mapping[str, str]) -> Settings | None:
    try:
        settings = _fast(Settings.from_env(source))
    except ConfigurationError as exc:
        report.add(Check("settings", Status.FAIL, str(exc), fix_for(exc, None)))
        return None
    key = f", key {settings.kms_key_id}" if settings.kms_key_id else ""
    provider = settings.provider.value if settings.provider else "none"
    detail = f"mode {settings.mode.value}, provider {provider}{key}"
    report.add(Check("settings", Status.OK, detail))
    return settings


def _mode_check(stray: list[str], settings: Settings | None) -> Check:
    if stray:
        return Check(
            "mode",
            Status.FAIL,
            f"HMD_ENCRYPTION_MODE=kms, but {' and '.join(stray)} is still set",
            "remove the env key from the environment (and from every manifest and secret "
            "store), or use HMD_ENCRYPTION_MODE=hybrid while legacy values remain",
        )
    if settings is None:
        return Check("mode", Status.SKIP, "needs valid settings")
    return _mode(settings)


def _mode(settings: Settings) -> Check:
    if settings.mode is EncryptionMode.LEGACY:
        return Check(
            "mode",
            Status.WARN,
            "legacy: every value is sealed with the env key HMD_PII_MASTER_KEY",
            "move to the KMS: hybrid mode, `heimdall-kms migrate`, then kms (docs/migration.md)",
        )
    if settings.provider is ProviderName.LOCAL:
        return Check(
            "mode",
            Status.WARN,
            "the local provider keeps master keys in a file: NOT FOR PRODUCTION",
            "use vault, aws, gcp or azure (docs/configuration.md)",
        )
    if settings.mode is EncryptionMode.HYBRID:
        return _hybrid_mode(settings)
    return Check("mode", Status.OK, "kms: reads and writes kms_v1 only; no env key configured")


def _hybrid_mode(settings: Settings) -> Check:
    keys = len(settings.legacy_keys)
    if settings.hybrid_write is WriteFormat.LEGACY:
        return Check(
            "mode",
            Status.WARN,
            "hybrid with the rollback switch: new values use the env key",
            "unset HMD_HYBRID_WRITE_FORMAT once the rollback is over",
        )
    if keys == 0:
        return Check(
            "mode",
            Status.WARN,
            "hybrid without an env key: legacy values cannot be read",
            "set HMD_PII_MASTER_KEY while legacy values remain; once the cut-over gate of "
            "`heimdall-kms status` passes, switch to HMD_ENCRYPTION_MODE=kms",
        )
    return Check("mode", Status.OK, f"hybrid: reads {keys} env key(s) and kms_v1, writes kms_v1")


def _audit(
    report: DoctorReport, settings: Settings | None, environ: Mapping[str, str]
) -> AuditSink | None:
    try:
        destination = settings.audit_log if settings else audit_destination(environ)
        sink = open_sink(destination)
    except HeimdallKMSError as exc:
        report.add(Check("audit log", Status.FAIL, str(exc), fix_for(exc, settings)))
        return None
    if destination == "stderr":
        detail = "stderr (kept only if the process's logs are; a file keeps a verifiable chain)"
    else:
        detail = f"{destination} is open for appending (the canary writes to it)"
    report.add(Check("audit log", Status.OK, detail))
    return sink


def _database(report: DoctorReport, settings: Settings | None, environ: Mapping[str, str]) -> None:
    try:
        url = settings.database_url if settings else database_url(environ)
        if url is None:
            report.add(Check("database", Status.SKIP, "HMD_DATABASE_URL is not set"))
            return
        # Reachability only: no table is read (the journal may not exist yet).
        open_store(url, Target(JOURNAL_TABLE, "old_value", id_column="run_id")).close()
    except HeimdallKMSError as exc:
        report.add(Check("database", Status.FAIL, str(exc), fix_for(exc, settings)))
        return
    report.add(Check("database", Status.OK, f"{_safe_url(url)} is reachable"))


def _safe_url(url: str) -> str:
    # The URL may carry a password: show where it points, never who logs in or how.
    if url.startswith("sqlite:"):
        return url
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


_VAULT_EXTRA = "pip install 'heimdall-kms[vault]'"


def _provider(report: DoctorReport, settings: Settings) -> KeyManagementService | None:
    if settings.provider is ProviderName.VAULT and not _vault_ready(report, settings):
        return None
    try:
        kms = load_provider(settings)
    except HeimdallKMSError as exc:
        report.add(Check("provider", Status.FAIL, str(exc), fix_for(exc, settings)))
        report.add(Check("key", Status.SKIP, "needs the provider"))
        return None
    report.add(Check("provider", Status.OK, f"{kms.name.value} client ready"))
    if report.add(_key(settings, kms)).status is Status.FAIL:
        kms.close()  # the canary would only fail the same way again
        return None
    return kms


def _vault_ready(report: DoctorReport, settings: Settings) -> bool:
    """The Vault lines (tls, server, token); when Vault cannot be used, provider and key are
    reported as skipped or failed here."""
    try:
        with needs_extra("vault", "HMD_KMS_PROVIDER=vault"):
            from heimdall_kms.doctor.vault import vault_checks  # noqa: PLC0415 - loads hvac
    except ConfigurationError:
        detail, fix = "the vault extra (hvac) is not installed", _VAULT_EXTRA
        report.add(Check("provider", Status.FAIL, detail, fix))
        report.add(Check("key", Status.SKIP, "needs the provider"))
        return False
    if not vault_checks(report, settings):
        for name in ("provider", "key"):
            report.add(Check(name, Status.SKIP, "needs a reachable, unsealed Vault and a login"))
        return False
    return True


def _key(settings: Settings, kms: KeyManagementService) -> Check:
    try:
        info = kms.describe()
    except PermissionDeniedError as exc:
        return Check(
            "key",
            Status.WARN,
            f"this identity may not read the key's metadata ({exc})",
            "`keys`, the due-rotation check and the key check before the first wrap need it",
        )
    except HeimdallKMSError as exc:
        return Check("key", Status.FAIL, str(exc), fix_for(exc, settings))
    cadence = timedelta(days=settings.key_rotation_days)
    due = next_due(info, cadence)
    detail = (
        f"{info.key_identifier}: latest v{info.latest_version}, decrypts "
        f"v{info.min_decryption_version}..v{info.latest_version}; next rotation "
        + (f"due {due:%Y-%m-%d}" if due else "date unknown")
    )
    if is_due(info, now=datetime.now(UTC), cadence=cadence):
        return Check("key", Status.WARN, detail + " (DUE NOW)", "rotate it: `heimdall-kms rotate`")
    return Check("key", Status.OK, detail)


def _canary(
    report: DoctorReport,
    settings: Settings | None,
    kms: KeyManagementService | None,
    sink: AuditSink | None,
    *,
    enabled: bool,
) -> None:
    if not enabled:
        report.add(Check("canary", Status.SKIP, "skipped (turned off)"))
        return
    if settings is None or sink is None or (modes.uses_kms(settings.mode) and kms is None):
        report.add(Check("canary", Status.SKIP, "needs the settings, audit log, KMS and key"))
        return
    report.add(_round_trip(settings, kms, sink))


def _round_trip(settings: Settings, kms: KeyManagementService | None, sink: AuditSink) -> Check:
    """One real encrypt and decrypt of a fresh value through the facade, audited."""
    value = "doctor-canary-" + secrets.token_hex(8)
    context = {"field": "doctor-canary", "record": secrets.token_hex(8)}
    crypto = build_crypto(
        settings, kms=kms, audit=sink, metrics=unexported_metrics(), default_actor="doctor"
    )
    started = time.perf_counter()
    try:
        envelope = crypto.encrypt(value, context=context, actor="doctor")
        back = crypto.decrypt(envelope, actor="doctor", reason="canary", context=context)
    except HeimdallKMSError as exc:
        return Check("canary", Status.FAIL, str(exc), fix_for(exc, settings))
    took = (time.perf_counter() - started) * 1000
    if back != value:
        return Check("canary", Status.FAIL, "decrypt gave back a different value", "report it")
    detail = (
        f"encrypt + decrypt through {_sealed_with(envelope)} in {took:.0f} ms "
        "(audited: actor doctor, reason canary)"
    )
    return Check("canary", Status.OK, detail)


def _sealed_with(envelope: Envelope) -> str:
    if isinstance(envelope, KmsV1Envelope):
        return f"{envelope.provider} key {envelope.key_identifier} v{envelope.key_version}"
    return "the env key (legacy format)"
