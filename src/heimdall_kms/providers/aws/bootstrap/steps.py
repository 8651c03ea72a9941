"""Bring an AWS account to the design, one compared step at a time (as the Vault bootstrap).

:func:`plan` reads what AWS has and returns the steps, each with the exact API calls it needs
(none when AWS already matches). :func:`apply` sends those same calls, so a dry run that prints
them cannot promise something the real run would not do. A key that exists (made by
Terraform, the console, an earlier run) is adopted, never replaced; running twice changes
nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from heimdall_kms.errors import KeyNotFoundError, RefusedError
from heimdall_kms.kinds import AWSKeyVersioning
from heimdall_kms.providers.aws.aliases import tags as version_tags
from heimdall_kms.providers.aws.keys import KeyReference, ReferenceKind
from heimdall_kms.providers.aws.native import Call, NativeKey

__all__ = ["AWSCall", "Change", "NewKey", "Plan", "Step", "apply", "plan"]

KEY_SPEC = "SYMMETRIC_DEFAULT"


class NewKey(Enum):
    """Stands for the id of the key a ``CreateKey`` earlier in the same run makes."""

    ID = "<id of the key created above>"


class Change(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class AWSCall:
    operation: str
    params: Mapping[str, Any]

    def __str__(self) -> str:
        shown = {k: (v.value if isinstance(v, NewKey) else v) for k, v in self.params.items()}
        return f"{self.operation} {json.dumps(shown, sort_keys=True)}"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    change: Change
    calls: tuple[AWSCall, ...] = ()
    creates_key: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "change": self.change.value,
            "calls": [str(c) for c in self.calls],
        }


@dataclass(frozen=True, slots=True)
class Plan:
    steps: tuple[Step, ...]
    key_arn: str | None  # None: the key is created by this plan

    @property
    def creates_key(self) -> bool:
        return any(step.creates_key for step in self.steps)


def plan(
    call: Call, reference: KeyReference, versioning: AWSKeyVersioning, rotation_days: int
) -> Plan:
    """Read AWS and list what bootstrapping would do; writes nothing.

    Raises:
        RefusedError: the key cannot be created from this reference (a key id or ARN that
            does not exist). ConfigurationError: it exists but is no symmetric encryption
            key, or is of the other versioning scheme. KMSError: AWS refused or failed.
    """
    meta = _existing(call, reference)
    if versioning is AWSKeyVersioning.ALIASES:
        return _aliases_plan(call, reference.text, meta)
    if meta is None:
        step = _created(reference, [_create_key(f"heimdall-kms {reference.text}", ())])
        rotation = AWSCall(
            "EnableKeyRotation", {"KeyId": NewKey.ID, "RotationPeriodInDays": rotation_days}
        )
        return Plan((step, Step(_schedule(rotation_days), Change.CREATED, (rotation,))), None)
    key_arn = NativeKey(call, reference).key_arn  # the provider's own checks, nothing else
    key = Step(f"key {reference.text} ({meta['KeyId']}, adopted)", Change.UNCHANGED)
    return Plan((key, _rotation_step(call, key_arn, rotation_days)), key_arn)


def apply(call: Call, steps: Sequence[Step]) -> str | None:
    """Send every call of every step, in order; the id of the first key created (the master
    key), if one was.

    Raises:
        KMSError: AWS refused or failed a call (the steps before it are done; rerun).
    """
    first: str | None = None
    created: str | None = None  # the key the calls after a CreateKey refer to
    for step in steps:
        for item in step.calls:
            answer = call(item.operation, **_params(item, created))
            if item.operation == "CreateKey":
                created = str(answer["KeyMetadata"]["KeyId"])
                first = first or created
    return first


def _params(item: AWSCall, created: str | None) -> dict[str, Any]:
    """The call's parameters, the placeholder for the new key replaced by its id."""
    return {k: (created if isinstance(v, NewKey) else v) for k, v in item.params.items()}


def _existing(call: Call, reference: KeyReference) -> dict[str, Any] | None:
    try:
        return dict(call("DescribeKey", KeyId=reference.text)["KeyMetadata"])
    except KeyNotFoundError:
        if reference.kind is not ReferenceKind.ALIAS:
            raise RefusedError(
                f"{reference.text} does not exist; a key can only be created for an alias "
                "name (alias/NAME) in this account and region"
            ) from None
        return None


def _create_key(description: str, tags: Sequence[Mapping[str, str]]) -> AWSCall:
    params: dict[str, Any] = {
        "Description": description,
        "KeyUsage": "ENCRYPT_DECRYPT",
        "KeySpec": KEY_SPEC,
    }
    if tags:
        params["Tags"] = list(tags)
    return AWSCall("CreateKey", params)


def _created(reference: KeyReference, calls: list[AWSCall]) -> Step:
    calls.append(AWSCall("CreateAlias", {"AliasName": reference.text, "TargetKeyId": NewKey.ID}))
    name = f"key {reference.text} ({KEY_SPEC}, ENCRYPT_DECRYPT) and its alias"
    return Step(name, Change.CREATED, tuple(calls), creates_key=True)


def _schedule(days: int) -> str:
    return f"AWS automatic rotation every {days} days"


def _rotation_step(call: Call, key_id: str, days: int) -> Step:
    status = call("GetKeyRotationStatus", KeyId=key_id)
    period = status.get("RotationPeriodInDays")
    # An answer without the period (older APIs, moto) cannot be compared: left as it is.
    if status.get("KeyRotationEnabled") and period in (None, days):
        return Step(_schedule(days), Change.UNCHANGED)
    enable = AWSCall("EnableKeyRotation", {"KeyId": key_id, "RotationPeriodInDays": days})
    return Step(_schedule(days), Change.UPDATED, (enable,))


def _aliases_plan(call: Call, alias: str, meta: dict[str, Any] | None) -> Plan:
    reference = KeyReference(alias, ReferenceKind.ALIAS)
    tags = version_tags(alias, 1)
    if meta is None:
        calls = [
            _create_key(f"heimdall-kms {alias} version 1", tags),
            AWSCall("CreateAlias", {"AliasName": f"{alias}/v1", "TargetKeyId": NewKey.ID}),
        ]
        return Plan((_created(reference, calls),), None)
    key_id = str(meta["KeyId"])
    names = [str(a.get("AliasName")) for a in call("ListAliases", KeyId=key_id).get("Aliases", [])]
    if any(name.startswith(f"{alias}/v") for name in names):
        return Plan((Step(f"key {alias} ({key_id}, versioned)", Change.UNCHANGED),), meta["Arn"])
    adopt = (
        AWSCall("CreateAlias", {"AliasName": f"{alias}/v1", "TargetKeyId": key_id}),
        AWSCall("TagResource", {"KeyId": key_id, "Tags": tags}),
    )
    step = Step(f"key {alias} ({key_id}) adopted as version 1", Change.UPDATED, adopt)
    return Plan((step,), str(meta["Arn"]))
