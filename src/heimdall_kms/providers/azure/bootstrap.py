"""``heimdall-kms azure bootstrap``: the Key Vault (or Managed HSM) key, and RBAC on it.

:func:`plan` reads Key Vault and returns a :class:`~heimdall_kms.providers.cloud_bootstrap.Plan`
whose create step carries the exact REST body; :func:`apply` sends it with the SDK. An existing
key is adopted when the provider can use it (RSA, RSA-HSM or oct-HSM with wrapKey and
unwrapKey). A created key gets a rotation policy that rotates it every
``HMD_KEY_ROTATION_DAYS``; an adopted key's policy is reported, not changed. The audit
checkpoints' signing key (``HMD_AUDIT_SIGNING_KEY``, default ``<name>-audit``) is a P-256 EC
(or EC-HSM) key with key_ops sign and verify. Role assignments are printed, never applied:
granting access is the operator's act. Roles follow Microsoft's built-in role tables, with
custom roles where no built-in one is narrow enough (the writers may only read and sign with
the signing key, the audit role only read and verify).
See ``docs/providers/azure.md``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from azure.keyvault.keys import (
    KeyClient,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyVaultKey,
)

from heimdall_kms.errors import InvalidInputError, KeyNotFoundError, RefusedError
from heimdall_kms.providers.azure import errors as kv
from heimdall_kms.providers.azure.keys import (
    WRAP_ALGORITHMS,
    allows,
    parse_key_url,
    signing_key_name,
    wire_value,
)
from heimdall_kms.providers.cloud_bootstrap import (
    ROLES,
    WRITERS,
    ApiCall,
    Change,
    Grant,
    Plan,
    Step,
)

__all__ = ["KEY_SIZES", "apply", "plan"]

KEY_SIZES = {"RSA": 3072, "RSA-HSM": 3072, "oct-HSM": 256}
_OPS = ["wrapKey", "unwrapKey"]
_SIGNING_OPS = ["sign", "verify"]
_HSM_SUFFIX = ".managedhsm.azure.net"
_VAULT = "Microsoft.KeyVault/vaults/keys/"
_HSM = "Microsoft.KeyVault/managedHsm/keys/"
# A data action's verb in a vault, and in a Managed HSM (where reading and changing a key are
# read/action and write/action).
_VERBS = {"read": ("read", "read/action"), "update": ("update/action", "write/action")}


class _Role(NamedTuple):
    builtin: tuple[str, str] | None  # (in a vault, in a Managed HSM); None: a custom role
    verbs: tuple[str, ...]
    purpose: str


_ROLES: Mapping[str, _Role] = {
    "app": _Role(
        ("Key Vault Crypto Service Encryption User", "Managed HSM Crypto Service Encryption User"),
        ("read", "wrap/action", "unwrap/action"),
        "wrap and unwrap data keys (also runs migrate and reencrypt)",
    ),
    "worker": _Role(None, ("read", "unwrap/action"), "unwrap data keys only"),
    # Managed HSM Crypto Officer cannot rotate or change keys; Crypto User can, but also
    # deletes keys: neither is the admin role.
    "admin": _Role(
        None,
        ("read", "rotate/action", "update"),
        "rotate, retire (disable versions) and describe; no wrap, unwrap, delete or purge",
    ),
    "audit": _Role(
        ("Key Vault Reader", "Managed HSM Crypto Auditor"), ("read",), "read key metadata only"
    ),
}
# The signing key: the writers read it (its newest version) and sign; audit reads and verifies.
_SIGNER = _Role(None, ("read", "sign/action"), "sign audit checkpoints; no verify")
_VERIFIER = _Role(None, ("read", "verify/action"), "verify audit checkpoints; no signing")
_SIGNING_ROLES: Mapping[str, _Role] = {
    role: (_SIGNER if role in WRITERS else _VERIFIER) for role in ROLES
}


class _Scope(NamedTuple):
    """Where roles are granted: the key's RBAC scope, in a vault or in a Managed HSM."""

    short: str  # the vault's or the HSM's name
    path: str
    hsm: bool

    def az_create(self, what: str) -> str:
        """The ``az`` command that creates a role ``definition`` or ``assignment`` here."""
        if self.hsm:
            return f"az keyvault role {what} create --hsm-name {self.short}"
        return f"az role {what} create"


def _actions(role: _Role, *, hsm: bool) -> tuple[str, ...]:
    prefix = _HSM if hsm else _VAULT
    return tuple(prefix + _VERBS.get(v, (v, v))[hsm] for v in role.verbs)


def plan(
    client: KeyClient,
    key_url: str,
    *,
    key_type: str,
    rotation_days: int,
    members: Mapping[str, str] | None = None,
    prefix: str = "heimdall-kms",
    signing_key: str | None = None,
) -> Plan:
    """Read Key Vault and list what bootstrapping ``key_url`` and the audit signing key (by
    default ``<name>-audit`` in the same vault) would do; writes nothing.

    Raises:
        ConfigurationError: not a key URL. InvalidInputError: an unknown key type.
        RefusedError: the key exists in a form heimdall-kms cannot use (nothing was written).
        KMSError: Key Vault refused a read or failed.
    """
    vault_url, name = parse_key_url(key_url)
    host = urlsplit(vault_url).hostname or ""
    hsm = host.endswith(_HSM_SUFFIX)
    _check_key_type(key_type, hsm=hsm)
    current = _existing(client, name)
    key = f"{vault_url}/keys/{name}"
    step = _key_step(key, name, key_type, current)
    policy = _rotation_policy(client, rotation_days, name, created=current is None)
    signer = signing_key_name(signing_key, key_url)
    steps = (step, policy, _signing_step(client, signer, key_type))
    details = {"key_type": key_type, "rotation_days": rotation_days}
    who = members or {}
    signing = f"{vault_url}/keys/{signer}"
    return Plan(
        "azure",
        key,
        steps,
        _access(key, host, who, prefix, _ROLES, hsm=hsm),
        details,
        signing_key=signing,
        signing_access=_access(signing, host, who, f"{prefix} audit", _SIGNING_ROLES, hsm=hsm),
    )


def _check_key_type(key_type: str, *, hsm: bool) -> None:
    """Check that ``key_type`` can be created in this vault (or Managed HSM).

    Raises:
        InvalidInputError: an unknown key type, or oct-HSM outside a Managed HSM.
    """
    if key_type not in KEY_SIZES:
        raise InvalidInputError(f"key type {key_type!r}: expected one of {', '.join(KEY_SIZES)}")
    if key_type == "oct-HSM" and not hsm:
        raise InvalidInputError("key type oct-HSM: only a Managed HSM has symmetric keys")


def _key_step(key: str, name: str, key_type: str, current: KeyVaultKey | None) -> Step:
    """Create the master key, or adopt ``current`` if the provider can use it."""
    if current is None:
        body = {"kty": key_type, "key_size": KEY_SIZES[key_type], "key_ops": list(_OPS)}
        call = ApiCall(f"POST /keys/{name}/create", body)
        label = f"key {key} ({key_type}, key_ops wrapKey unwrapKey)"
        return Step(label, Change.CREATED, (call,), creates_key=True)
    kty = wire_value(current.key_type)
    return Step(f"key {key} ({kty})", Change.UNCHANGED, notes=_adopted(current, kty))


def _existing(client: KeyClient, name: str) -> KeyVaultKey | None:
    """The key named ``name``, or None where there is none."""
    try:
        key: KeyVaultKey = kv.call("bootstrap (read)", lambda: client.get_key(name))
    except KeyNotFoundError:
        return None
    return key


def _signing_step(client: KeyClient, name: str, key_type: str) -> Step:
    """Create (EC-HSM next to an HSM-protected master key, else EC; P-256, sign and verify
    only) or adopt the signing key; an existing key must be a P-256 key that signs."""
    current = _existing(client, name)
    kty = "EC" if key_type == "RSA" else "EC-HSM"
    label = f"audit signing key {name} ({kty} P-256, key_ops sign verify)"
    if current is None:
        body = {"kty": kty, "crv": "P-256", "key_ops": list(_SIGNING_OPS)}
        return Step(label, Change.CREATED, (ApiCall(f"POST /keys/{name}/create", body),))
    _check_signer(current, name)
    return Step(label, Change.UNCHANGED, notes=("existing signing key adopted",))


def _check_signer(current: KeyVaultKey, name: str) -> None:
    """Check that an existing signing key can sign audit checkpoints.

    Raises:
        RefusedError: ``current`` is not a P-256 EC or EC-HSM key with key_ops sign and verify.
    """
    have = wire_value(current.key_type)
    crv = getattr(current.key, "crv", None)  # JsonWebKey sets it from the service's JSON
    curve = wire_value(crv) if crv else ""
    if (
        have not in ("EC", "EC-HSM")
        or curve != "P-256"
        or not allows(current.key_operations, _SIGNING_OPS)
    ):
        raise RefusedError(
            f"key {name} ({have} {curve}) cannot sign audit checkpoints: HMD_AUDIT_SIGNING_KEY "
            "needs a P-256 EC or EC-HSM key with key_ops sign and verify"
        )


def apply(client: KeyClient, steps: Sequence[Step]) -> None:
    """Send every call of every step, in order.

    Raises:
        KMSError: Key Vault refused or failed a call (rerun: what was done is adopted).
    """
    for step in steps:
        for request in step.calls:
            kv.call(f"bootstrap ({step.name})", functools.partial(_send, client, request))


def _send(client: KeyClient, call: ApiCall) -> Any:
    body, name = call.arguments, call.method.split("/")[2]
    if call.method.endswith("/rotationpolicy"):
        actions = [
            KeyRotationLifetimeAction(
                KeyRotationPolicyAction.rotate,
                time_after_create=a["trigger"]["timeAfterCreate"],
            )
            for a in body["lifetimeActions"]
        ]
        return client.update_key_rotation_policy(
            name, KeyRotationPolicy(), lifetime_actions=actions
        )
    if "crv" in body:
        return client.create_key(
            name, body["kty"], curve=body["crv"], key_operations=body["key_ops"]
        )
    return client.create_key(
        name, body["kty"], size=body["key_size"], key_operations=body["key_ops"]
    )


def _adopted(current: KeyVaultKey, kty: str) -> tuple[str, ...]:
    if kty not in WRAP_ALGORITHMS:
        raise RefusedError(
            f"key {current.name} is of type {kty}, which cannot wrap keys (use RSA, RSA-HSM or "
            "oct-HSM); name another key in HMD_KMS_KEY_ID"
        )
    if not allows(current.key_operations, _OPS):
        raise RefusedError(
            f"key {current.name}: its key_ops do not allow wrapKey and unwrapKey; add them "
            "(az keyvault key set-attributes --ops) or name another key"
        )
    return ("existing key adopted",)


def _rotation_policy(client: KeyClient, days: int, name: str, *, created: bool) -> Step:
    """A created key gets a policy that rotates it every ``days``; an adopted key's policy is
    read and reported, never changed (as on GCP)."""
    label = f"rotation policy (Rotate after P{days}D)" if days else "rotation policy"
    if not days:
        return Step(label, Change.UNCHANGED, notes=("HMD_KEY_ROTATION_DAYS=0: none set",))
    body = {"lifetimeActions": [_rotate_after(days)]}
    if created:
        return Step(label, Change.CREATED, (ApiCall(f"PUT /keys/{name}/rotationpolicy", body),))
    current = kv.call("bootstrap (read)", lambda: client.get_key_rotation_policy(name))
    return _reported_policy(label, days, body, _rotations(current))


def _rotations(policy: KeyRotationPolicy) -> list[str]:
    """The periods after which ``policy`` rotates the key."""
    return [
        str(a.time_after_create)
        for a in policy.lifetime_actions or []
        if wire_value(a.action).lower() == "rotate" and a.time_after_create
    ]


def _reported_policy(label: str, days: int, body: dict[str, Any], rotates: list[str]) -> Step:
    """An adopted key's policy, reported as it is, with how to set the one asked for."""
    if rotates == [f"P{days}D"]:
        return Step(label, Change.UNCHANGED, notes=("the key's rotation policy matches",))
    found = ", ".join(rotates) if rotates else "no automatic rotation"
    return Step(
        label,
        Change.UNCHANGED,
        notes=(
            f"the key's rotation policy has {found}; left as it is (change it with az keyvault "
            f"key rotation-policy update --value '{json.dumps(body)}', or schedule this tool's "
            "rotation when due: docs/rotation.md)",
        ),
    )


def _rotate_after(days: int) -> dict[str, Any]:
    return {"trigger": {"timeAfterCreate": f"P{days}D"}, "action": {"type": "Rotate"}}


def _access(
    key: str,
    host: str,
    members: Mapping[str, str],
    prefix: str,
    table: Mapping[str, _Role],
    *,
    hsm: bool,
) -> tuple[Grant, ...]:
    short, name = host.split(".", maxsplit=1)[0], key.rsplit("/", 1)[1]
    path = (
        f"/keys/{name}"
        if hsm
        else f"/subscriptions/<subscription-id>/resourceGroups/<resource-group>/providers/"
        f"Microsoft.KeyVault/vaults/{short}/keys/{name}"
    )
    scope = _Scope(short, path, hsm)
    return tuple(
        _grant(role, table[role], members.get(role), f"{prefix} {role}", scope) for role in ROLES
    )


def _grant(role: str, entry: _Role, member: str | None, custom: str, scope: _Scope) -> Grant:
    """``entry`` granted to ``role``'s identity (``member``, else a placeholder) on ``scope``;
    a custom role named ``custom`` where no built-in one fits."""
    actions = _actions(entry, hsm=scope.hsm)
    member = member or f"<object id of the {role} identity>"
    documents: dict[str, Any] = {}
    commands: list[str] = []
    granted = entry.builtin[scope.hsm] if entry.builtin else custom
    if entry.builtin is None:
        description = f"heimdall-kms {role}: {entry.purpose}."
        documents["custom_role"] = _definition(granted, description, actions, hsm=scope.hsm)
        file = granted.replace(" ", "-")
        commands.append(f"{scope.az_create('definition')} --role-definition @{file}-role.json")
    commands.append(
        f'{scope.az_create("assignment")} --assignee {member} --role "{granted}" '
        f"--scope {scope.path}"
    )
    documents["assignment"] = {"role": granted, "assignee": member, "scope": scope.path}
    return Grant(
        role, entry.purpose, granted, scope.path, member, actions, documents, tuple(commands)
    )


def _definition(name: str, description: str, actions: tuple[str, ...], *, hsm: bool) -> Any:
    if hsm:
        return {
            "roleName": name,
            "description": description,
            "permissions": [{"dataActions": list(actions), "notDataActions": []}],
        }
    return {
        "Name": name,
        "IsCustom": True,
        "Description": description,
        "Actions": [],
        "NotActions": [],
        "DataActions": list(actions),
        "NotDataActions": [],
        "AssignableScopes": ["/subscriptions/<subscription-id>"],
    }
