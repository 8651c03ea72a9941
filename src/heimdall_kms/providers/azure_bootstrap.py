"""``heimdall-kms azure bootstrap``: the Key Vault (or Managed HSM) key, and RBAC on it.

:func:`plan` reads Key Vault and returns a :class:`~heimdall_kms.providers.cloud_bootstrap.Plan`
whose create step carries the exact REST body; :func:`apply` sends it with the SDK. An existing
key is adopted when the provider can use it (RSA, RSA-HSM or oct-HSM with wrapKey and
unwrapKey). No rotation policy is written: the command prints one to apply, and the test
server does not model rotation policies. Role assignments are printed, never applied: granting
access is the operator's act. Roles follow Microsoft's built-in role tables, with custom roles
where no built-in one is narrow enough. See ``docs/providers/azure.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from azure.keyvault.keys import KeyClient, KeyVaultKey

from heimdall_kms.errors import InvalidInputError, KeyNotFoundError, RefusedError
from heimdall_kms.providers.azure import _KEY_TYPES, _call, _text, parse_key_url
from heimdall_kms.providers.cloud_bootstrap import ROLES, ApiCall, Change, Grant, Plan, Step

__all__ = ["KEY_SIZES", "apply", "plan"]

KEY_SIZES = {"RSA": 3072, "RSA-HSM": 3072, "oct-HSM": 256}
_OPS = ["wrapKey", "unwrapKey"]
_HSM_SUFFIX = ".managedhsm.azure.net"
# (heimdall role) -> (built-in role or None for a custom one, data actions, purpose)
_VAULT = "Microsoft.KeyVault/vaults/keys/"
_HSM = "Microsoft.KeyVault/managedHsm/keys/"
_ROLES_VAULT: Mapping[str, tuple[str | None, tuple[str, ...], str]] = {
    "app": (
        "Key Vault Crypto Service Encryption User",
        (f"{_VAULT}read", f"{_VAULT}wrap/action", f"{_VAULT}unwrap/action"),
        "wrap and unwrap data keys (also runs migrate and reencrypt)",
    ),
    "worker": (None, (f"{_VAULT}read", f"{_VAULT}unwrap/action"), "unwrap data keys only"),
    "admin": (
        None,
        (f"{_VAULT}read", f"{_VAULT}rotate/action", f"{_VAULT}update/action"),
        "rotate, retire (disable versions) and describe; no wrap, unwrap, delete or purge",
    ),
    "audit": ("Key Vault Reader", (f"{_VAULT}read",), "read the key's metadata only"),
}
_ROLES_HSM: Mapping[str, tuple[str | None, tuple[str, ...], str]] = {
    "app": (
        "Managed HSM Crypto Service Encryption User",
        (f"{_HSM}read/action", f"{_HSM}wrap/action", f"{_HSM}unwrap/action"),
        "wrap and unwrap data keys (also runs migrate and reencrypt)",
    ),
    "worker": (None, (f"{_HSM}read/action", f"{_HSM}unwrap/action"), "unwrap data keys only"),
    "admin": (
        None,
        (f"{_HSM}read/action", f"{_HSM}rotate/action", f"{_HSM}write/action"),
        # Managed HSM Crypto Officer cannot rotate or change keys; Crypto User can, but also
        # deletes keys: neither is the admin role.
        "rotate, retire (disable versions) and describe; no wrap, unwrap or delete",
    ),
    "audit": ("Managed HSM Crypto Auditor", (f"{_HSM}read/action",), "read key metadata only"),
}


def plan(
    client: KeyClient,
    key_url: str,
    *,
    key_type: str,
    rotation_days: int,
    members: Mapping[str, str] | None = None,
    prefix: str = "heimdall-kms",
) -> Plan:
    """Read Key Vault and list what bootstrapping ``key_url`` would do; writes nothing.

    Raises:
        ConfigurationError: not a key URL. InvalidInputError: an unknown key type.
        RefusedError: the key exists in a form heimdall-kms cannot use (nothing was written).
        KMSError: Key Vault refused a read or failed.
    """
    vault_url, name = parse_key_url(key_url)
    if key_type not in KEY_SIZES:
        raise InvalidInputError(f"key type {key_type!r}: expected one of {', '.join(KEY_SIZES)}")
    host = urlsplit(vault_url).hostname or ""
    hsm = host.endswith(_HSM_SUFFIX)
    if key_type == "oct-HSM" and not hsm:
        raise InvalidInputError("key type oct-HSM: only a Managed HSM has symmetric keys")
    try:
        current: KeyVaultKey | None = _call("bootstrap (read)", lambda: client.get_key(name))
    except KeyNotFoundError:
        current = None
    key = f"{vault_url}/keys/{name}"
    if current is None:
        body = {"kty": key_type, "key_size": KEY_SIZES[key_type], "key_ops": list(_OPS)}
        call = ApiCall(f"POST /keys/{name}/create", body)
        label = f"key {key} ({key_type}, key_ops wrapKey unwrapKey)"
        step = Step(label, Change.CREATED, (call,), creates_key=True)
    else:
        kty = _text(current.key_type)
        step = Step(f"key {key} ({kty})", Change.UNCHANGED, notes=_adopted(current, kty))
    policy = _rotation_policy(rotation_days, name, host, hsm=hsm)
    steps = (step, policy)
    details = {"key_type": key_type, "rotation_days": rotation_days}
    return Plan("azure", key, steps, _access(key, host, members or {}, prefix, hsm=hsm), details)


def apply(client: KeyClient, steps: Sequence[Step]) -> None:
    """Send every call of every step, in order.

    Raises:
        KMSError: Key Vault refused or failed a call (rerun: what was done is adopted).
    """
    for step in steps:
        for call in step.calls:
            body = call.arguments
            name = call.method.split("/")[2]

            def create(body: Mapping[str, Any] = body, name: str = name) -> Any:
                return client.create_key(
                    name, body["kty"], size=body["key_size"], key_operations=body["key_ops"]
                )

            _call(f"bootstrap ({step.name})", create)


def _adopted(current: KeyVaultKey, kty: str) -> tuple[str, ...]:
    if kty not in _KEY_TYPES:
        raise RefusedError(
            f"key {current.name} is of type {kty}, which cannot wrap keys (use RSA, RSA-HSM or "
            "oct-HSM); name another key in HMD_KMS_KEY_ID"
        )
    ops = current.key_operations
    if ops is not None and not set(_OPS) <= {_text(o) for o in ops}:
        raise RefusedError(
            f"key {current.name}: its key_ops do not allow wrapKey and unwrapKey; add them "
            "(az keyvault key set-attributes --ops) or name another key"
        )
    return ("existing key adopted",)


def _rotation_policy(days: int, name: str, host: str, *, hsm: bool) -> Step:
    short = host.split(".", maxsplit=1)[0]
    where = f"--hsm-name {short}" if hsm else f"--vault-name {short}"
    if not days:
        return Step("rotation policy", Change.UNCHANGED, notes=("HMD_KEY_ROTATION_DAYS=0: none",))
    policy = {
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": f"P{days}D"}, "action": {"type": "Rotate"}}
        ]
    }
    return Step(
        "rotation policy",
        Change.UNCHANGED,
        notes=(
            "not written by this command (rotate with `heimdall-kms rotate --if-due` on a "
            "schedule, or let Key Vault rotate with this policy):",
            f"az keyvault key rotation-policy update {where} -n {name} --value "
            f"'{json.dumps(policy)}'",
        ),
    )


def _access(
    key: str, host: str, members: Mapping[str, str], prefix: str, *, hsm: bool
) -> tuple[Grant, ...]:
    table = _ROLES_HSM if hsm else _ROLES_VAULT
    short, name = host.split(".", maxsplit=1)[0], key.rsplit("/", 1)[1]
    scope = (
        f"/keys/{name}"
        if hsm
        else f"/subscriptions/<subscription-id>/resourceGroups/<resource-group>/providers/"
        f"Microsoft.KeyVault/vaults/{short}/keys/{name}"
    )
    grants = []
    for role in ROLES:
        builtin, actions, purpose = table[role]
        member = members.get(role) or f"<object id of the {role} identity>"
        documents: dict[str, Any] = {}
        commands: list[str] = []
        granted = builtin or f"{prefix} {role}"
        if builtin is None:
            if hsm:
                definition: dict[str, Any] = {
                    "roleName": granted,
                    "description": f"heimdall-kms {role}: {purpose}.",
                    "permissions": [{"dataActions": list(actions), "notDataActions": []}],
                }
                create = f"az keyvault role definition create --hsm-name {short}"
            else:
                definition = {
                    "Name": granted,
                    "IsCustom": True,
                    "Description": f"heimdall-kms {role}: {purpose}.",
                    "Actions": [],
                    "NotActions": [],
                    "DataActions": list(actions),
                    "NotDataActions": [],
                    "AssignableScopes": ["/subscriptions/<subscription-id>"],
                }
                create = "az role definition create"
            documents["custom_role"] = definition
            commands.append(f"{create} --role-definition @{prefix}-{role}-role.json")
        assign = (
            f"az keyvault role assignment create --hsm-name {short}"
            if hsm
            else ("az role assignment create")
        )
        commands.append(f'{assign} --assignee {member} --role "{granted}" --scope {scope}')
        documents["assignment"] = {"role": granted, "assignee": member, "scope": scope}
        grants.append(
            Grant(role, purpose, granted, scope, member, actions, documents, tuple(commands))
        )
    return tuple(grants)
