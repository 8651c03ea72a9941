"""The least-privilege IAM policies of the four roles, as data (no boto3 here).

``app`` encrypts and decrypts; ``worker`` runs the re-encryption jobs (decrypt, ``ReEncrypt*``,
and encrypt for ``--mode full``); ``admin`` rotates, reads and manages the aliases but reads no
value; ``audit`` reads key metadata only. The writers (app, worker, admin) may also sign
audit checkpoints with the signing key, and ``audit`` may verify them (``signing.py``). Each
action is what the provider really calls for that role (docs/providers/aws.md); wrapping
calls are allowed only with the ``heimdall-purpose=data-key`` EncryptionContext, so no role
is a general decryption oracle for other blobs made with the key.

A native key is named by its ARN (one key, no tags, no eventual consistency of tag-based
authorization). The alias scheme makes a key per version, so its policies select the keys by
the ``heimdall:alias`` tag; AWS documents that a tag change can take up to five minutes to
affect authorization, which is why ``rotate`` tags the new key when it creates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heimdall_kms.kinds import AWSKeyVersioning
from heimdall_kms.providers.aws.bootstrap.signing import signing_statement

__all__ = ["PURPOSES", "ROLES", "PolicyTarget", "policy_document", "role_actions"]

ROLES = ("app", "worker", "admin", "audit")
PURPOSES = {
    "app": "encrypt and decrypt values",
    "worker": "re-encryption jobs: decrypt, ReEncrypt, and encrypt for a full re-encryption",
    "admin": "rotate, describe, manage the aliases; reads no value",
    "audit": "read key metadata and rotations only",
}
_CRYPTO: dict[str, tuple[str, ...]] = {
    "app": ("kms:Decrypt", "kms:Encrypt"),
    "worker": ("kms:Decrypt", "kms:Encrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo"),
    "admin": (),
    "audit": (),
}
_READ_NATIVE = ("kms:DescribeKey", "kms:ListKeyRotations")
_KEY: dict[AWSKeyVersioning, dict[str, tuple[str, ...]]] = {
    AWSKeyVersioning.NATIVE: {
        "app": _READ_NATIVE,
        "worker": _READ_NATIVE,
        "admin": (
            *_READ_NATIVE,
            "kms:EnableKeyRotation",
            "kms:GetKeyRotationStatus",
            "kms:RotateKeyOnDemand",
            "kms:CreateAlias",
            "kms:UpdateAlias",
        ),
        "audit": (*_READ_NATIVE, "kms:GetKeyRotationStatus"),
    },
    AWSKeyVersioning.ALIASES: {
        "app": ("kms:DescribeKey",),
        "worker": ("kms:DescribeKey",),
        "admin": (
            "kms:DescribeKey",
            "kms:CreateAlias",
            "kms:UpdateAlias",
            "kms:DisableKey",
            "kms:ScheduleKeyDeletion",
        ),
        "audit": ("kms:DescribeKey", "kms:GetKeyRotationStatus", "kms:ListKeyRotations"),
    },
}
PURPOSE_CONDITION = {"kms:EncryptionContext:heimdall-purpose": "data-key"}


@dataclass(frozen=True, slots=True)
class PolicyTarget:
    """What the policies name: the key's ARN (native) or the account's keys by tag (aliases)."""

    versioning: AWSKeyVersioning
    alias: str | None  # the alias name, when the key has one heimdall manages
    key_arn: str  # native: the key's ARN (a placeholder before it is created)
    partition_region_account: str  # "arn:aws:kms:REGION:ACCOUNT"
    signing_key_arn: str | None = None  # the audit checkpoints' key, when there is one


def role_actions(role: str, versioning: AWSKeyVersioning) -> frozenset[str]:
    """Every action ``role`` is granted (the union of its statements)."""
    extra = set(_NEW_VERSION) if _makes_keys(role, versioning) else set()
    return frozenset({*_CRYPTO[role], *_KEY[versioning][role], "kms:ListAliases", *extra})


def policy_document(role: str, target: PolicyTarget) -> dict[str, Any]:
    """The IAM identity policy of ``role`` (attach it to the role's IAM role)."""
    resource, scope = _resource(target)
    key_actions = [a for a in _KEY[target.versioning][role] if a not in _ALIAS_ACTIONS]
    statements = [
        *_data_key_statements(role, resource, scope),
        _allow("HeimdallKey", key_actions, resource, scope),
        *_alias_statements(role, target, resource, scope),
        *_new_version_statements(role, target),
        # Every role lists aliases: the alias scheme maps keys to versions with it, and a
        # native key named by an alias is checked for the scheme's /v<n> aliases. ListAliases
        # has no resource-level permission: "*" is the only form AWS accepts.
        _allow("HeimdallListAliases", ["kms:ListAliases"], "*", {}),
    ]
    if target.signing_key_arn is not None:
        statements.append(signing_statement(role, target.signing_key_arn))
    return {"Version": "2012-10-17", "Statement": statements}


def _data_key_statements(role: str, resource: str, scope: dict[str, str]) -> list[dict[str, Any]]:
    if not _CRYPTO[role]:
        return []
    condition = {**scope, **PURPOSE_CONDITION}
    return [_allow("HeimdallDataKeys", _CRYPTO[role], resource, condition)]


def _alias_statements(
    role: str, target: PolicyTarget, resource: str, scope: dict[str, str]
) -> list[dict[str, Any]]:
    alias_actions = [a for a in _KEY[target.versioning][role] if a in _ALIAS_ACTIONS]
    if not alias_actions or target.alias is None:
        return []
    # CreateAlias and UpdateAlias are authorised on the alias and on the key both.
    return [
        _allow("HeimdallAliasKeys", alias_actions, resource, scope),
        _allow("HeimdallAliases", alias_actions, _alias_arns(target, target.alias), {}),
    ]


def _alias_arns(target: PolicyTarget, alias: str) -> list[str]:
    """The alias, and under the alias scheme its version aliases too."""
    arn = f"{target.partition_region_account}:{alias}"
    if target.versioning is AWSKeyVersioning.ALIASES:
        return [arn, f"{arn}/v*"]
    return [arn]


def _new_version_statements(role: str, target: PolicyTarget) -> list[dict[str, Any]]:
    if not _makes_keys(role, target.versioning):
        return []
    # rotate creates the next version's key with its tags (which needs TagResource too).
    tag = {"aws:RequestTag/heimdall:alias": target.alias or ""}
    return [_allow("HeimdallNewVersions", _NEW_VERSION, "*", tag)]


_ALIAS_ACTIONS = frozenset({"kms:CreateAlias", "kms:UpdateAlias"})
_NEW_VERSION = ("kms:CreateKey", "kms:TagResource")


def _makes_keys(role: str, versioning: AWSKeyVersioning) -> bool:
    return role == "admin" and versioning is AWSKeyVersioning.ALIASES


def _resource(target: PolicyTarget) -> tuple[str, dict[str, str]]:
    if target.versioning is AWSKeyVersioning.NATIVE:
        return target.key_arn, {}
    return (
        f"{target.partition_region_account}:key/*",
        {"aws:ResourceTag/heimdall:alias": target.alias or ""},
    )


def _allow(sid: str, actions: Any, resource: Any, condition: dict[str, str]) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "Sid": sid,
        "Effect": "Allow",
        "Action": sorted(actions),
        "Resource": resource,
    }
    if condition:
        statement["Condition"] = {"StringEquals": condition}
    return statement
