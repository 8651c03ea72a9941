"""The doctor's result types and the fix it suggests for each kind of error."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from heimdall_kms.config import ProviderName, Settings, VaultAuthMethod, VaultSettings
from heimdall_kms.errors import (
    AuditWriteError,
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
    StoreError,
)

__all__ = ["Check", "DoctorReport", "Status", "fix_for"]


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"

    @property
    def symbol(self) -> str:
        return {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}[self.value]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    def to_dict(self) -> dict[str, Any]:
        counts = {s.value: sum(c.status is s for c in self.checks) for s in Status}
        return {
            "ok": not self.failed,
            "counts": counts,
            "checks": [c.to_dict() for c in self.checks],
        }


def _doc(settings: Settings | None) -> str:
    provider = settings.provider if settings is not None else None
    if provider in (ProviderName.AWS, ProviderName.GCP, ProviderName.AZURE):
        assert provider is not None
        return f"docs/providers/{provider.value}.md"
    return "docs/configuration.md"


# Most specific first: PermissionDeniedError is an AuthenticationError.
_FIXES: tuple[tuple[type[HeimdallKMSError], str], ...] = (
    (ConfigurationError, "set the variable named in the message as {doc} describes"),
    (PermissionDeniedError, "grant this identity the permission the operation needs ({doc})"),
    (AuthenticationError, "check the provider's credentials ({doc})"),
    (KeyNotFoundError, "check HMD_KMS_KEY_ID ({doc})"),
    (RateLimitedError, "the KMS is throttling this identity: retry later, or raise its quota"),
    (KMSUnavailableError, "check the KMS endpoint and the network path to it ({doc})"),
    (
        AuditWriteError,
        "create HMD_AUDIT_LOG's directory or make it writable, or point it elsewhere",
    ),
    (StoreError, "check HMD_DATABASE_URL: the SQLite file must exist, the server must be up"),
    (IntegrityError, "the KMS did not give back the data key it wrapped: report it"),
)
_VAULT_FIXES: tuple[tuple[type[HeimdallKMSError], str], ...] = (
    (
        PermissionDeniedError,
        "this identity's Vault policy does not allow it: use the role meant for the job, with "
        "the policies `heimdall-kms vault bootstrap` writes (docs/vault-bootstrap.md)",
    ),
    (
        KeyNotFoundError,
        "create the key with `heimdall-kms vault bootstrap`, or check HMD_KMS_KEY_ID, "
        "HMD_VAULT_TRANSIT_MOUNT and HMD_VAULT_NAMESPACE",
    ),
    (
        KMSUnavailableError,
        "check HMD_VAULT_ADDR, the network path to it, and that Vault is unsealed",
    ),
)
_VAULT_LOGIN_FIXES = {
    VaultAuthMethod.TOKEN: "HMD_VAULT_TOKEN is invalid, expired or revoked: get a new token",
    VaultAuthMethod.APPROLE: (
        "check HMD_VAULT_ROLE_ID and HMD_VAULT_SECRET_ID (a secret id may have expired or been "
        "used up: fetch a new one, docs/vault-bootstrap.md)"
    ),
    VaultAuthMethod.KUBERNETES: (
        "check HMD_VAULT_K8S_ROLE, and that the Vault role is bound to this pod's service "
        "account and namespace (docs/vault-bootstrap.md)"
    ),
    VaultAuthMethod.JWT: (
        "check HMD_VAULT_JWT_ROLE and the JWT in HMD_VAULT_JWT_FILE (expired, or its issuer, "
        "audience or subject not the role's bound ones; docs/vault-bootstrap.md)"
    ),
    VaultAuthMethod.CERT: (
        "check HMD_VAULT_CLIENT_CERT (expired, or not issued by the CA of the cert role) and "
        "HMD_VAULT_CERT_ROLE (docs/vault-bootstrap.md)"
    ),
}


def fix_for(exc: HeimdallKMSError, settings: Settings | None) -> str:
    """What to do about ``exc``, in one sentence, for the configured provider."""
    vault = settings.vault if settings is not None else None
    fix = _vault_fix(exc, vault) if vault is not None else None
    if fix is not None:
        return fix
    doc = _doc(settings)
    general = _first_fix(exc, _FIXES)
    return f"see {doc}" if general is None else general.format(doc=doc)


def _vault_fix(exc: HeimdallKMSError, vault: VaultSettings) -> str | None:
    fix = _first_fix(exc, _VAULT_FIXES)
    if fix is None and isinstance(exc, AuthenticationError):
        return _VAULT_LOGIN_FIXES[vault.auth_method]
    return fix


def _first_fix(
    exc: HeimdallKMSError, table: Iterable[tuple[type[HeimdallKMSError], str]]
) -> str | None:
    """The text of the first row whose error class ``exc`` is an instance of."""
    return next((text for kind, text in table if isinstance(exc, kind)), None)
