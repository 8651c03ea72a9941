"""The design of the KMS side, as data: the roles, their ACL policies, the bootstrap options.

No hvac here; :mod:`.steps` compares this design with a server and writes it.

The four roles: ``app`` encrypts, decrypts and hashes; ``worker`` only decrypts; ``admin``
rotates, re-wraps and retires, but reads no value (separation of duties); ``audit`` reads key
metadata only. The three that write audit events may also sign audit checkpoints with the
signing key ``<key>-audit`` (ed25519, HMD_AUDIT_SIGNING_KEY); only ``audit`` may verify
them. Every policy explicitly denies key export, backup, restore and import: a ``deny`` wins
over whatever other policy the same token may also carry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from heimdall_kms.errors import InvalidInputError

__all__ = [
    "KEY_TYPE",
    "ROLES",
    "SIGNING_KEY_TYPE",
    "BootstrapOptions",
    "KubernetesBinding",
    "policy_hcl",
]

ROLES = ("app", "worker", "admin", "audit")
KEY_TYPE = "aes256-gcm96"
SIGNING_KEY_TYPE = "ed25519"  # the audit checkpoints' key, <key>-audit
# Names end up inside HCL strings and URL paths: a strict alphabet keeps both well-formed.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_PURPOSE = {
    "app": "encrypt, decrypt and keyed-hash (HMAC) with the key; read its metadata",
    "worker": "decrypt only; read the key's metadata",
    "admin": "rotate, re-wrap, set min_decryption_version (retire); read metadata; no decrypt",
    "audit": "read the key's metadata only; verify audit checkpoints",
}
_SIGN = ("sign/{k}-audit", "update")
# (path under the Transit mount, capability); "{k}" is the key name.
_GRANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "app": (
        ("encrypt/{k}", "update"),
        ("decrypt/{k}", "update"),
        ("hmac/{k}-hmac", "update"),
        ("hmac/{k}-hmac/sha2-256", "update"),
        _SIGN,
    ),
    "worker": (("decrypt/{k}", "update"), _SIGN),
    "admin": (("keys/{k}/rotate", "update"), ("rewrap/{k}", "update"), _SIGN),
    "audit": (("verify/{k}-audit", "update"),),
}
# Key material must never leave Transit, and no one may plant a key whose material they know.
_DENIED = (
    "export/*",
    "backup/*",
    "restore",
    "restore/*",
    "byok-export/*",
    "keys/+/import",
    "keys/+/import_version",
)


@dataclass(frozen=True, slots=True)
class KubernetesBinding:
    """Kubernetes auth: each role bound to one service account in one namespace."""

    namespace: str
    service_accounts: Mapping[str, str] = field(default_factory=dict)  # role -> account
    mount: str = "kubernetes"
    host: str | None = None  # the cluster API for auth/<mount>/config; None: left as it is
    ca_cert_pem: str | None = None

    def __post_init__(self) -> None:
        for value in (self.namespace, *self.service_accounts.values()):
            if not _K8S_NAME.fullmatch(value):
                raise InvalidInputError(f"{value!r} is not a Kubernetes name")
        unknown = set(self.service_accounts) - set(ROLES)
        if unknown:
            raise InvalidInputError(
                f"Kubernetes service account: unknown role {sorted(unknown)[0]!r}"
            )
        if not _MOUNT.fullmatch(self.mount):
            raise InvalidInputError(
                "Kubernetes auth mount: letters, digits, '.', '_', '-' and '/' only"
            )

    def account(self, role: str, default: str) -> str:
        return self.service_accounts.get(role, default)


@dataclass(frozen=True, slots=True)
class BootstrapOptions:
    key: str
    transit_mount: str = "transit"
    prefix: str = "heimdall-kms"
    auto_rotate_seconds: int | None = None  # None: leave the key's setting as it is
    approle_mount: str = "approle"
    token_ttl: int = 3600
    token_max_ttl: int = 86400
    kubernetes: KubernetesBinding | None = None

    def __post_init__(self) -> None:
        for what, value, pattern in (
            ("key name", self.key, _NAME),
            ("name prefix", self.prefix, _NAME),
            ("transit mount", self.transit_mount, _MOUNT),
            ("AppRole mount", self.approle_mount, _MOUNT),
        ):
            if not pattern.fullmatch(value):
                raise InvalidInputError(f"{what}: letters, digits, '.', '_', '-' (and '/') only")
        period = self.auto_rotate_seconds
        if period and period < 3600:  # None leaves it as it is, 0 turns it off
            raise InvalidInputError("auto-rotation period: at least 1h (or 0 to turn it off)")

    def name(self, role: str) -> str:
        """The policy and login role name of ``role``, e.g. ``heimdall-kms-app``."""
        return f"{self.prefix}-{role}"


def _block(path: str, capability: str, extra: str = "") -> str:
    return f'path "{path}" {{\n  capabilities = ["{capability}"]\n{extra}}}'


def policy_hcl(role: str, options: BootstrapOptions) -> str:
    """The ACL policy of ``role`` for the configured key, exactly as written to Vault."""
    mount, key = options.transit_mount, options.key
    blocks = [
        f"# heimdall-kms role {role!r}: {_PURPOSE[role]}.",
        "# Written by `heimdall-kms vault bootstrap`; rerun it rather than editing by hand.",
        _block(f"{mount}/keys/{key}", "read"),
        *(_block(f"{mount}/{path.format(k=key)}", cap) for path, cap in _GRANTS[role]),
    ]
    if role == "admin":
        # Only the minimum decryption version: never deletion_allowed, exportable or backups.
        only = '  allowed_parameters = {\n    "min_decryption_version" = []\n  }\n'
        blocks.append(_block(f"{mount}/keys/{key}/config", "update", only))
    # Roles log in without Vault's default policy; these two keep the token alive.
    blocks.append(_block("auth/token/lookup-self", "read"))
    blocks.append(_block("auth/token/renew-self", "update"))
    blocks += [_block(f"{mount}/{path}", "deny") for path in _DENIED]
    return "\n".join(blocks) + "\n"
