"""``heimdall-kms gcp bootstrap``: the key ring and CryptoKey, and the roles on the key.

:func:`plan` reads Cloud KMS and returns a :class:`~heimdall_kms.providers.cloud_bootstrap.Plan`
whose steps carry the exact requests (the REST JSON mapping); :func:`apply` sends those same
requests. An existing CryptoKey is adopted as it is: its purpose must be ENCRYPT_DECRYPT, and a
rotation period other than ``HMD_KEY_ROTATION_DAYS`` is reported, not changed. IAM bindings
are printed (one per role, on the CryptoKey), never applied: granting access is the
operator's act, with the printed ``gcloud`` commands. The audit checkpoints' signing key
(``HMD_AUDIT_SIGNING_KEY``, default ``<key>-audit`` in the same ring) is an ASYMMETRIC_SIGN
``EC_SIGN_P256_SHA256`` CryptoKey: the writing roles get ``roles/cloudkms.signer`` (and
``roles/cloudkms.viewer``, to find its newest version) on it, the audit role
``roles/cloudkms.publicKeyViewer`` only (signatures are verified with the public key). See
``docs/providers/gcp.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import kms_v1

from heimdall_kms.errors import KeyNotFoundError, RefusedError
from heimdall_kms.providers.cloud_bootstrap import (
    ROLES,
    WRITERS,
    ApiCall,
    Change,
    Grant,
    Plan,
    Step,
)
from heimdall_kms.providers.gcp.client import check_key_name
from heimdall_kms.providers.gcp.errors import translated

__all__ = ["ADMIN_PERMISSIONS", "PREDEFINED", "apply", "plan"]

_PURPOSE = kms_v1.CryptoKey.CryptoKeyPurpose.ENCRYPT_DECRYPT
SIGNING_ALGORITHMS = ("EC_SIGN_P256_SHA256", "EC_SIGN_ED25519")  # what the signer verifies
# The permissions heimdall-kms's admin uses: rotate (create a version, move the primary),
# retire (disable versions), describe. No useToEncrypt/useToDecrypt, no destroy, no IAM.
ADMIN_PERMISSIONS = (
    "cloudkms.cryptoKeys.get",
    "cloudkms.cryptoKeys.update",
    "cloudkms.cryptoKeyVersions.create",
    "cloudkms.cryptoKeyVersions.get",
    "cloudkms.cryptoKeyVersions.list",
    "cloudkms.cryptoKeyVersions.update",
)
# heimdall role -> (predefined role, the key-level permissions it carries, what it is for).
PREDEFINED: Mapping[str, tuple[str, tuple[str, ...], str]] = {
    "app": (
        "roles/cloudkms.cryptoKeyEncrypterDecrypter",
        ("cloudkms.cryptoKeyVersions.useToEncrypt", "cloudkms.cryptoKeyVersions.useToDecrypt"),
        "encrypt and decrypt data keys (also runs migrate and reencrypt, with the audit role)",
    ),
    "worker": (
        "roles/cloudkms.cryptoKeyDecrypter",
        ("cloudkms.cryptoKeyVersions.useToDecrypt",),
        "decrypt data keys only",
    ),
    "audit": (
        "roles/cloudkms.viewer",
        (
            "cloudkms.cryptoKeys.get",
            "cloudkms.cryptoKeys.list",
            "cloudkms.cryptoKeyVersions.get",
            "cloudkms.cryptoKeyVersions.list",
        ),
        "read the key's metadata and versions only",
    ),
}


def plan(
    client: kms_v1.KeyManagementServiceClient,
    key_name: str,
    *,
    rotation_days: int,
    timeout: float,
    members: Mapping[str, str] | None = None,
    prefix: str = "heimdall-kms",
    now: datetime | None = None,
    signing_key: str | None = None,
) -> Plan:
    """Read Cloud KMS and list what bootstrapping ``key_name`` and the signing key (default
    ``<key_name>-audit``) would do; writes nothing.

    Raises:
        ConfigurationError: not a CryptoKey resource name.
        RefusedError: the CryptoKey exists with another purpose, or the signing key cannot
            sign checkpoints (nothing was written).
        KMSError: Cloud KMS refused a read or failed.
    """
    key = check_key_name(key_name)
    ring = key.split("/cryptoKeys/")[0]
    found = _get(client.get_key_ring, ring, timeout) is not None
    current = _get(client.get_crypto_key, key, timeout) if found else None
    ring_step = _ring_step(ring, exists=found)
    key_step = _key_step(key, current, rotation_days, now or datetime.now(UTC))
    signing = check_key_name(signing_key or f"{key}-audit")
    steps = (ring_step, key_step, _signing_step(client, signing, ring, timeout, ring_exists=found))
    details = {"purpose": "ENCRYPT_DECRYPT", "rotation_days": rotation_days}
    who = members or {}
    return Plan(
        "gcp",
        key,
        steps,
        _access(key, who, prefix),
        details,
        signing_key=signing,
        signing_access=_signing_access(signing, who, prefix),
    )


def _ring_step(ring: str, *, exists: bool) -> Step:
    if exists:
        return Step(f"key ring {ring}", Change.UNCHANGED)
    location, ring_id = ring.split("/keyRings/")
    call = ApiCall("CreateKeyRing", {"parent": location, "keyRingId": ring_id, "keyRing": {}})
    return Step(f"key ring {ring}", Change.CREATED, (call,))


def _key_step(
    key: str, current: kms_v1.CryptoKey | None, rotation_days: int, now: datetime
) -> Step:
    """Create the CryptoKey (rotating every ``rotation_days`` from ``now``), or adopt it."""
    ring, key_id = key.split("/cryptoKeys/")
    period = timedelta(days=rotation_days)
    label = f"key {key} (ENCRYPT_DECRYPT, {_period_text(period)})"
    if current is not None:
        return Step(label, Change.UNCHANGED, notes=_adopted(current, period))
    body: dict[str, Any] = {"purpose": "ENCRYPT_DECRYPT"}
    if rotation_days:
        body["rotationPeriod"] = f"{int(period.total_seconds())}s"
        body["nextRotationTime"] = (now + period).strftime("%Y-%m-%dT%H:%M:%SZ")
    call = ApiCall("CreateCryptoKey", {"parent": ring, "cryptoKeyId": key_id, "cryptoKey": body})
    return Step(label, Change.CREATED, (call,), creates_key=True)


def _signing_step(
    client: kms_v1.KeyManagementServiceClient,
    name: str,
    ring: str,
    timeout: float,
    *,
    ring_exists: bool,
) -> Step:
    own_ring, key_id = name.split("/cryptoKeys/")
    label = f"audit signing key {name} (ASYMMETRIC_SIGN, EC_SIGN_P256_SHA256)"
    current = _signing_key(client, name, ring, timeout, ring_exists=ring_exists)
    if current is None:
        body = {
            "purpose": "ASYMMETRIC_SIGN",
            "versionTemplate": {"algorithm": "EC_SIGN_P256_SHA256"},
        }
        arguments = {"parent": own_ring, "cryptoKeyId": key_id, "cryptoKey": body}
        return Step(label, Change.CREATED, (ApiCall("CreateCryptoKey", arguments),))
    _check_can_sign(current, name)
    return Step(label, Change.UNCHANGED, notes=("existing signing key adopted",))


def _signing_key(
    client: kms_v1.KeyManagementServiceClient,
    name: str,
    ring: str,
    timeout: float,
    *,
    ring_exists: bool,
) -> kms_v1.CryptoKey | None:
    """The signing key if it exists; it is not looked for in the master key's ring when that
    ring does not exist yet, and its own ring, if another, must exist."""
    own_ring = name.rpartition("/cryptoKeys/")[0]
    if own_ring == ring:
        return _get(client.get_crypto_key, name, timeout) if ring_exists else None
    if _get(client.get_key_ring, own_ring, timeout) is None:
        raise RefusedError(
            f"HMD_AUDIT_SIGNING_KEY: its key ring {own_ring} does not exist; create it, or "
            "put the signing key in the master key's ring"
        )
    return _get(client.get_crypto_key, name, timeout)


def _check_can_sign(current: kms_v1.CryptoKey, name: str) -> None:
    algorithm = current.version_template.algorithm.name
    if current.purpose.name != "ASYMMETRIC_SIGN" or algorithm not in SIGNING_ALGORITHMS:
        raise RefusedError(
            f"CryptoKey {name} has purpose {current.purpose.name} and algorithm {algorithm}; "
            f"audit checkpoints need ASYMMETRIC_SIGN with {' or '.join(SIGNING_ALGORITHMS)}"
        )


def apply(client: kms_v1.KeyManagementServiceClient, steps: Sequence[Step], timeout: float) -> None:
    """Send every call of every step, in order.

    Raises:
        KMSError: Cloud KMS refused or failed a call (the steps before it are done; rerun).
    """
    for step in steps:
        for call in step.calls:
            arguments = call.arguments
            with translated(f"bootstrap ({step.name})"):
                if call.method == "CreateKeyRing":
                    request: dict[str, Any] = {
                        "parent": arguments["parent"],
                        "key_ring_id": arguments["keyRingId"],
                        "key_ring": {},
                    }
                    client.create_key_ring(request=request, timeout=timeout)
                else:
                    crypto_key = kms_v1.CryptoKey.from_json(json.dumps(arguments["cryptoKey"]))
                    request = {
                        "parent": arguments["parent"],
                        "crypto_key_id": arguments["cryptoKeyId"],
                        "crypto_key": crypto_key,
                    }
                    client.create_crypto_key(request=request, timeout=timeout)


def _get(method: Any, name: str, timeout: float) -> Any | None:
    try:
        with translated("bootstrap (read)"):
            return method(request={"name": name}, timeout=timeout)
    except KeyNotFoundError:
        return None


def _adopted(current: kms_v1.CryptoKey, period: timedelta) -> tuple[str, ...]:
    if current.purpose != _PURPOSE:
        raise RefusedError(
            f"CryptoKey {current.name} has purpose {current.purpose.name}, not ENCRYPT_DECRYPT; "
            "name another key in HMD_KMS_KEY_ID"
        )
    have = current.rotation_period
    have_period = timedelta(seconds=have.total_seconds()) if have else timedelta(0)
    notes = ["existing CryptoKey adopted"]
    if have_period != period:
        notes.append(
            f"its rotation period is {_period_text(have_period)}, HMD_KEY_ROTATION_DAYS asks "
            f"{_period_text(period)}: left as it is (change it with gcloud kms keys update "
            "--rotation-period)"
        )
    return tuple(notes)


def _period_text(period: timedelta) -> str:
    if not period:
        return "no automatic rotation"
    days = period.total_seconds() / 86400
    return f"rotation every {days:g} days"


def _member(key: str, members: Mapping[str, str], prefix: str, role: str) -> str:
    project = key.split("/")[1]
    return members.get(role) or f"serviceAccount:{prefix}-{role}@{project}.iam.gserviceaccount.com"


@dataclass(frozen=True, slots=True)
class _SigningAccess:
    """What one side of the signing key gets: predefined roles, and the permissions in them."""

    purpose: str
    roles: tuple[str, ...]  # the first is the "binding" document, a second "versions_binding"
    permissions: tuple[str, ...]


_SIGNS = _SigningAccess(
    "sign audit checkpoints with the newest version",
    ("roles/cloudkms.signer", "roles/cloudkms.viewer"),
    ("cloudkms.cryptoKeyVersions.useToSign", "cloudkms.cryptoKeyVersions.list"),
)
_VERIFIES = _SigningAccess(
    "read the public keys to verify audit checkpoints; no signing",
    ("roles/cloudkms.publicKeyViewer",),
    ("cloudkms.cryptoKeyVersions.viewPublicKey",),
)


def _signing_access(key: str, members: Mapping[str, str], prefix: str) -> tuple[Grant, ...]:
    """Writers sign (and list the versions, to sign with the newest); audit reads public keys."""
    return tuple(
        _signing_grant(
            key, role, _member(key, members, prefix, role), _SIGNS if role in WRITERS else _VERIFIES
        )
        for role in ROLES
    )


def _signing_grant(key: str, role: str, member: str, access: _SigningAccess) -> Grant:
    documents = {
        name: {"role": r, "members": [member]}
        for name, r in zip(("binding", "versions_binding"), access.roles, strict=False)
    }
    commands = tuple(
        f"gcloud kms keys add-iam-policy-binding {key} --member {member} --role {r}"
        for r in access.roles
    )
    names = ", ".join(access.roles)
    return Grant(role, access.purpose, names, key, member, access.permissions, documents, commands)


def _access(key: str, members: Mapping[str, str], prefix: str) -> tuple[Grant, ...]:
    project = key.split("/")[1]
    grants = []
    for role in ROLES:
        member = _member(key, members, prefix, role)
        documents: dict[str, Any] = {}
        commands: list[str] = []
        if role == "admin":
            role_id = f"{prefix}-admin".replace("-", "_")
            granted = f"projects/{project}/roles/{role_id}"
            permissions: tuple[str, ...] = ADMIN_PERMISSIONS
            purpose = "rotate, retire and describe the key; no encrypt or decrypt"
            documents["custom_role"] = {
                "title": f"{prefix} key administrator",
                "description": "Rotate and disable versions of the heimdall-kms CryptoKey.",
                "stage": "GA",
                "includedPermissions": list(ADMIN_PERMISSIONS),
            }
            commands.append(
                f"gcloud iam roles create {role_id} --project {project} "
                f"--file {prefix}-admin-role.json   # the custom_role document"
            )
        else:
            granted, permissions, purpose = PREDEFINED[role]
        documents["binding"] = {"role": granted, "members": [member]}
        commands.append(
            f"gcloud kms keys add-iam-policy-binding {key} --member {member} --role {granted}"
        )
        grants.append(
            Grant(role, purpose, granted, key, member, permissions, documents, tuple(commands))
        )
    return tuple(grants)
