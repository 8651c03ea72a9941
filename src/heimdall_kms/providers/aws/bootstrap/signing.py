"""The audit checkpoints' signing key on AWS: an ``ECC_NIST_P256`` ``SIGN_VERIFY`` key.

``HMD_AUDIT_SIGNING_KEY`` names it; unset, it is ``<alias>-audit`` beside an alias-named
master key. It is created (with its alias) only for an alias name; an existing key is adopted
when it can sign with ECDSA_SHA_256. The writing roles (app, worker, admin) may ``kms:Sign``
with it, the audit role may only ``kms:Verify``; both only with ECDSA_SHA_256.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heimdall_kms.errors import KeyNotFoundError, RefusedError
from heimdall_kms.providers.aws.bootstrap.steps import AWSCall, Change, NewKey, Step
from heimdall_kms.providers.aws.keys import KeyReference, ReferenceKind, parse_key_reference
from heimdall_kms.providers.aws.native import Call

__all__ = [
    "SIGNING_ALGORITHM",
    "SIGNING_SPEC",
    "SigningKey",
    "signing_actions",
    "signing_key_name",
    "signing_statement",
    "signing_step",
]

SIGNING_SPEC = "ECC_NIST_P256"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
_WRITERS = ("app", "worker", "admin")  # the roles that write audit events


@dataclass(frozen=True, slots=True)
class SigningKey:
    name: str  # as HMD_AUDIT_SIGNING_KEY names it
    arn: str | None  # None: created by this plan


def signing_key_name(configured: str | None, master: KeyReference) -> str | None:
    """``HMD_AUDIT_SIGNING_KEY``, else ``<alias>-audit`` for an alias-named master key."""
    if configured is not None:
        return configured
    if master.kind is ReferenceKind.ALIAS:
        return f"{master.text}-audit"
    if master.kind is ReferenceKind.ALIAS_ARN:
        return "alias/" + master.text.split(":alias/", 1)[1] + "-audit"
    return None


def signing_step(call: Call, name: str) -> tuple[Step, SigningKey]:
    """The step that creates or adopts the signing key ``name``; reads AWS, writes nothing.

    Raises:
        ConfigurationError: not an AWS key name. RefusedError: it does not exist and is no
            alias name, or it exists and cannot sign with ECDSA_SHA_256. KMSError: AWS failed.
    """
    reference = parse_key_reference(name)
    label = f"audit signing key {name} ({SIGNING_SPEC}, SIGN_VERIFY)"
    try:
        meta = dict(call("DescribeKey", KeyId=name)["KeyMetadata"])
    except KeyNotFoundError:
        if reference.kind is not ReferenceKind.ALIAS:
            raise RefusedError(
                f"audit signing key {name} does not exist; one can only be created for an "
                "alias name (alias/NAME) in HMD_AUDIT_SIGNING_KEY"
            ) from None
        create = AWSCall(
            "CreateKey",
            {
                "Description": f"heimdall-kms audit checkpoints ({name})",
                "KeyUsage": "SIGN_VERIFY",
                "KeySpec": SIGNING_SPEC,
            },
        )
        alias = AWSCall("CreateAlias", {"AliasName": name, "TargetKeyId": NewKey.ID})
        return Step(label, Change.CREATED, (create, alias)), SigningKey(name, None)
    usable = meta.get("KeyUsage") == "SIGN_VERIFY" and SIGNING_ALGORITHM in meta.get(
        "SigningAlgorithms", []
    )
    if not usable:
        raise RefusedError(
            f"audit signing key {name} is not a SIGN_VERIFY key that signs with "
            f"{SIGNING_ALGORITHM} (create an {SIGNING_SPEC} key, or name another one)"
        )
    return Step(f"{label}, adopted", Change.UNCHANGED), SigningKey(name, str(meta["Arn"]))


def signing_actions(role: str) -> frozenset[str]:
    return frozenset({"kms:Sign"} if role in _WRITERS else {"kms:Verify"})


def signing_statement(role: str, key_arn: str) -> dict[str, Any]:
    """The IAM statement that lets ``role`` sign (writers) or verify (audit) checkpoints."""
    return {
        "Sid": "HeimdallAuditCheckpoints",
        "Effect": "Allow",
        "Action": sorted(signing_actions(role)),
        "Resource": key_arn,
        "Condition": {"StringEquals": {"kms:SigningAlgorithm": SIGNING_ALGORITHM}},
    }
