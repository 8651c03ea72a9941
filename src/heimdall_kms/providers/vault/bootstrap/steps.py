"""Bring a Vault server to the design of :mod:`.policies`, one compared step at a time.

:func:`plan` reads what the server has and returns the steps, each with the exact API calls
it needs (none when the server already matches). :func:`apply` sends those same calls, so a
dry run that prints them cannot promise something the real run would not do. Running the
bootstrap twice changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import hvac
import hvac.exceptions

from heimdall_kms.errors import RefusedError
from heimdall_kms.providers.vault.bootstrap.policies import (
    KEY_TYPE,
    ROLES,
    SIGNING_KEY_TYPE,
    BootstrapOptions,
    KubernetesBinding,
    policy_hcl,
)

# One translation of hvac errors into typed errors with safe messages, shared with the provider.
from heimdall_kms.providers.vault.errors import Translated
from heimdall_kms.settings_env import Secret

__all__ = ["ApiCall", "Change", "Step", "apply", "new_secret_ids", "plan", "role_ids"]


class Change(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    path: str
    body: Mapping[str, Any] | None = None

    def __str__(self) -> str:
        if not self.body:
            return f"{self.method} {self.path}"
        shown = {k: ("<the HCL below>" if k == "policy" else v) for k, v in self.body.items()}
        return f"{self.method} {self.path} {json.dumps(shown, sort_keys=True)}"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    change: Change
    calls: tuple[ApiCall, ...] = ()
    hcl: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "change": self.change.value,
            "calls": [str(call) for call in self.calls],
            **({"hcl": self.hcl} if self.hcl is not None else {}),
        }


def plan(client: hvac.Client, options: BootstrapOptions) -> list[Step]:
    """Read the server and list what bootstrapping would do; writes nothing.

    Raises:
        RefusedError: something exists in a form the design cannot accept (another engine at
            the mount path, an exportable key, ...); nothing was written.
        KMSError: the token may not read what it must, or Vault failed.
    """
    transit, approle = options.transit_mount, options.approle_mount
    steps = [
        _mount(client, "sys/mounts", transit, "transit", f"Transit mount {transit}/"),
        _key(client, options, options.key, options.auto_rotate_seconds),
        # The keyed-hashing key of its own (HMD_HMAC_KEY_ID's default): tags are made with a
        # pinned version of it, so rotating it never changes them; it is not auto-rotated.
        _key(client, options, f"{options.key}-hmac", None),
        # The audit checkpoints' signing key (HMD_AUDIT_SIGNING_KEY): writers sign, audit verifies.
        _key(client, options, f"{options.key}-audit", None, SIGNING_KEY_TYPE),
    ]
    steps += [_policy(client, options, role) for role in ROLES]
    steps.append(_mount(client, "sys/auth", approle, "approle", f"AppRole auth {approle}/"))
    steps += [_approle_role(client, options, role) for role in ROLES]
    if options.kubernetes is not None:
        steps += _kubernetes(client, options, options.kubernetes)
    return steps


def apply(client: hvac.Client, steps: Sequence[Step]) -> None:
    """Send every call of every step, in order.

    Raises:
        KMSError: Vault refused or failed a call (the steps before it are done; rerun).
    """
    for step in steps:
        for call in step.calls:
            with Translated(f"bootstrap ({step.name})", address=client.url):
                client.adapter.request(call.method, call.path, json=call.body)


def role_ids(client: hvac.Client, options: BootstrapOptions) -> dict[str, str | None]:
    """Each AppRole role's role id (an identifier, not a credential); None if absent."""
    found: dict[str, str | None] = {}
    for role in ROLES:
        answer = _get(client, f"/v1/auth/{options.approle_mount}/role/{options.name(role)}/role-id")
        found[role] = str(_data(answer)["role_id"]) if answer else None
    return found


def new_secret_ids(client: hvac.Client, options: BootstrapOptions) -> dict[str, Secret[str]]:
    """A new secret id per role. These are credentials: show them only when asked to.

    Raises:
        KMSError: Vault refused or failed.
    """
    made: dict[str, Secret[str]] = {}
    for role in ROLES:
        path = f"/v1/auth/{options.approle_mount}/role/{options.name(role)}/secret-id"
        with Translated("bootstrap (new secret id)", address=client.url):
            made[role] = Secret(str(client.adapter.post(path)["data"]["secret_id"]))
    return made


def _get(client: hvac.Client, path: str) -> dict[str, Any] | None:
    with Translated("bootstrap (read)", address=client.url):
        try:
            answer = client.adapter.get(path)
        except hvac.exceptions.InvalidPath:
            return None
    return answer if isinstance(answer, dict) else None


def _data(answer: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if not answer:
        return {}
    data = answer.get("data")
    return data if isinstance(data, Mapping) else answer


def _token(options: BootstrapOptions) -> dict[str, Any]:
    return {
        "token_ttl": options.token_ttl,
        "token_max_ttl": options.token_max_ttl,
        "token_no_default_policy": True,
    }


def _mount(client: hvac.Client, table: str, path: str, kind: str, name: str) -> Step:
    current = _data(_get(client, f"/v1/{table}")).get(f"{path}/")
    if current is None:
        return Step(name, Change.CREATED, (ApiCall("POST", f"/v1/{table}/{path}", {"type": kind}),))
    if current.get("type") != kind:
        raise RefusedError(f"{path}/ is already mounted as {current.get('type')!r}, not {kind}")
    return Step(name, Change.UNCHANGED)


def _key(
    client: hvac.Client,
    options: BootstrapOptions,
    key: str,
    period: int | None,
    key_type: str = KEY_TYPE,
) -> Step:
    path = f"/v1/{options.transit_mount}/keys/{key}"
    current = _data(_get(client, path))
    name = f"key {key} ({key_type}, exportable=false, deletion_allowed=false)"
    if not current:
        body: dict[str, Any] = {"type": key_type, "exportable": False}
        body["allow_plaintext_backup"] = False
        if period is not None:
            body["auto_rotate_period"] = period
        return Step(name, Change.CREATED, (ApiCall("POST", path, body),))
    _check_adoptable(key, current, key_type)
    config = _config_changes(current, period)
    if not config:
        return Step(name, Change.UNCHANGED)
    return Step(name, Change.UPDATED, (ApiCall("POST", f"{path}/config", config),))


def _check_adoptable(key: str, current: Mapping[str, Any], key_type: str) -> None:
    if current.get("type") != key_type:
        raise RefusedError(f"key {key} is {current.get('type')!r}, not {key_type}")
    for flag in ("exportable", "allow_plaintext_backup"):
        if current.get(flag):
            # Transit cannot turn these off again: the material may already have left.
            raise RefusedError(
                f"key {key} has {flag}=true, which Transit cannot undo; create a new "
                "key (HMD_KMS_KEY_ID) and migrate to it"
            )


def _config_changes(current: Mapping[str, Any], period: int | None) -> dict[str, Any]:
    """What the key's config must change: no deletion, and the rotation period asked for."""
    config: dict[str, Any] = {}
    if current.get("deletion_allowed"):
        config["deletion_allowed"] = False
    if period is not None and int(current.get("auto_rotate_period") or 0) != period:
        config["auto_rotate_period"] = period
    return config


def _policy(client: hvac.Client, options: BootstrapOptions, role: str) -> Step:
    """``role``'s ACL policy: written unless Vault has exactly its HCL."""
    name, hcl = options.name(role), policy_hcl(role, options)
    path = f"/v1/sys/policies/acl/{name}"
    current = _get(client, path)
    if current is None:
        change = Change.CREATED
    elif _data(current).get("policy") == hcl:
        return Step(f"policy {name}", Change.UNCHANGED, (), hcl)
    else:
        change = Change.UPDATED
    return Step(f"policy {name}", change, (ApiCall("PUT", path, {"policy": hcl}),), hcl)


def _approle_role(client: hvac.Client, options: BootstrapOptions, role: str) -> Step:
    """``role``'s AppRole login role: its policy only, a secret id required."""
    want = {"token_policies": [options.name(role)], "bind_secret_id": True, **_token(options)}
    path = f"/v1/auth/{options.approle_mount}/role/{options.name(role)}"
    return _desired(client, f"AppRole role {options.name(role)}", path, want)


def _desired(client: hvac.Client, name: str, path: str, want: Mapping[str, Any]) -> Step:
    current = _get(client, path)
    if current is None:
        return Step(name, Change.CREATED, (ApiCall("POST", path, dict(want)),))
    have = _data(current)
    if all(_normal(have.get(k)) == _normal(v) for k, v in want.items()):
        return Step(name, Change.UNCHANGED)
    return Step(name, Change.UPDATED, (ApiCall("POST", path, dict(want)),))


def _normal(value: object) -> object:
    if isinstance(value, list | tuple):
        return sorted(str(item) for item in value)
    return value.strip() if isinstance(value, str) else value


def _kubernetes(
    client: hvac.Client, options: BootstrapOptions, k8s: KubernetesBinding
) -> list[Step]:
    steps = [_mount(client, "sys/auth", k8s.mount, "kubernetes", f"Kubernetes auth {k8s.mount}/")]
    if k8s.host is not None:
        config: dict[str, Any] = {"kubernetes_host": k8s.host}
        if k8s.ca_cert_pem is not None:
            config["kubernetes_ca_cert"] = k8s.ca_cert_pem
        path = f"/v1/auth/{k8s.mount}/config"
        steps.append(_desired(client, f"Kubernetes auth config ({k8s.host})", path, config))
    for role in ROLES:
        name = options.name(role)
        account = k8s.account(role, name)
        want = {
            "bound_service_account_names": [account],
            "bound_service_account_namespaces": [k8s.namespace],
            "token_policies": [name],
            **_token(options),
        }
        label = f"Kubernetes role {name} (service account {k8s.namespace}/{account})"
        steps.append(_desired(client, label, f"/v1/auth/{k8s.mount}/role/{name}", want))
    return steps
