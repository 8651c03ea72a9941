"""``heimdall-kms aws bootstrap``: the AWS side of a deployment (docs/providers/aws.md).

boto3 is imported when the command runs, never when the CLI loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._bootstrap import change_label, print_counts, print_dry_run_header, required
from heimdall_kms.cli._key_create import audited_key_create
from heimdall_kms.config import AWSKeyVersioning, ProviderName, Settings
from heimdall_kms.errors import ConfigurationError

if TYPE_CHECKING:
    from heimdall_kms.providers.aws.bootstrap import Plan, PolicyTarget, SigningKey, Step
    from heimdall_kms.providers.aws.keys import KeyReference
    from heimdall_kms.providers.aws.native import Call

__all__ = ["aws"]

_WIDTH = 14
_NOT_AWS = "HMD_KMS_PROVIDER: `aws bootstrap` needs HMD_KMS_PROVIDER=aws and HMD_KMS_KEY_ID"
_ROTATION_DAYS = (90, 2560)  # what EnableKeyRotation accepts


@click.group()
def aws() -> None:
    """AWS KMS setup for heimdall-kms."""


@aws.command()
@click.option("--dry-run", is_flag=True, help="Print the API calls and policies; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@actor_option("bootstraps AWS KMS (audited as key.create when the key is created)")
def bootstrap(*, actor: str, dry_run: bool, as_json: bool) -> None:
    """Create or adopt the master key (HMD_KMS_KEY_ID) and the audit checkpoints' signing key
    (HMD_AUDIT_SIGNING_KEY, default <alias>-audit), and print the least-privilege IAM
    policies of the app, worker, admin and audit roles. Idempotent: a second run changes
    nothing.

    A key that exists (Terraform, the console) is adopted, never replaced. With
    HMD_AWS_KEY_VERSIONING=native (the default) AWS's automatic rotation is turned on, every
    HMD_KEY_ROTATION_DAYS; with aliases the key becomes version 1 of the alias scheme. Uses
    the standard AWS credential chain, as an administrator.
    """
    from heimdall_kms.providers import needs_extra  # noqa: PLC0415

    with needs_extra("aws", "aws bootstrap"):
        from heimdall_kms.providers.aws import bootstrap as ab  # noqa: PLC0415 - loads boto3
        from heimdall_kms.providers.aws.client import build_client, caller  # noqa: PLC0415

    settings = Settings.from_env(os.environ)
    aws_settings, key_id = required(settings.aws, settings.kms_key_id, _NOT_AWS)
    versioning = aws_settings.key_versioning
    reference = _reference(key_id, versioning)
    days = _rotation_days(settings.key_rotation_days, versioning)
    anchoring = settings.audit_anchoring
    signing_name = ab.signing_key_name(anchoring.signing_key if anchoring else None, reference)
    client = build_client(aws_settings)
    try:
        call = caller(client)
        steps, signing = _plan(call, reference, versioning, days, signing_name)
        if not dry_run:
            _apply(call, steps, reference, versioning, settings.audit_log, actor)
        region = str(client.meta.region_name)
        target = _target(call, steps, reference, versioning, region)
        if signing is not None:
            target = replace(target, signing_key_arn=_signing_arn(call, signing, region))
    finally:
        client.close()
    policies = {role: ab.policy_document(role, target) for role in ab.ROLES}
    _report(
        steps,
        policies,
        reference=reference,
        versioning=versioning,
        target=target,
        signing_name=signing_name,
        dry_run=dry_run,
        as_json=as_json,
    )


def _plan(
    call: Call,
    reference: KeyReference,
    versioning: AWSKeyVersioning,
    days: int,
    signing_name: str | None,
) -> tuple[Plan, SigningKey | None]:
    """The steps, ending with the signing key's when there is one to have."""
    from heimdall_kms.providers.aws import bootstrap as ab  # noqa: PLC0415 - loads boto3

    steps = ab.plan(call, reference, versioning, days)
    if signing_name is None:
        return steps, None
    step, signing = ab.signing_step(call, signing_name)
    return replace(steps, steps=(*steps.steps, step)), signing


def _report(
    steps: Plan,
    policies: dict[str, dict[str, Any]],
    *,
    reference: KeyReference,
    versioning: AWSKeyVersioning,
    target: PolicyTarget,
    signing_name: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    if as_json:
        document: dict[str, Any] = {
            "dry_run": dry_run,
            "key_id": reference.text,
            "key_versioning": versioning.value,
            "key_arn": target.key_arn,
            "signing_key": signing_name,
            "signing_key_arn": target.signing_key_arn,
            "steps": [step.to_dict() for step in steps.steps],
            "policies": policies,
        }
        click.echo(json.dumps(document))
        return
    _print(steps, policies, dry_run=dry_run)
    if signing_name is None:
        click.echo(
            "No audit signing key: set HMD_AUDIT_SIGNING_KEY=alias/NAME to have bootstrap "
            "create it (docs/audit.md)"
        )


def _reference(text: str, versioning: AWSKeyVersioning) -> KeyReference:
    from heimdall_kms.providers.aws.keys import ReferenceKind, parse_key_reference  # noqa: PLC0415

    reference = parse_key_reference(text)
    if versioning is AWSKeyVersioning.ALIASES and reference.kind is not ReferenceKind.ALIAS:
        raise ConfigurationError(
            "HMD_KMS_KEY_ID: HMD_AWS_KEY_VERSIONING=aliases needs an alias name, alias/NAME"
        )
    return reference


def _rotation_days(days: int, versioning: AWSKeyVersioning) -> int:
    low, high = _ROTATION_DAYS
    if versioning is AWSKeyVersioning.NATIVE and not low <= days <= high:
        raise ConfigurationError(
            f"HMD_KEY_ROTATION_DAYS: AWS automatic rotation takes {low} to {high} days, got {days}"
        )
    return days


def _apply(  # noqa: PLR0917 - the run's facts, in order.
    call: Call,
    steps: Plan,
    reference: KeyReference,
    versioning: AWSKeyVersioning,
    log: str,
    actor: str,
) -> None:
    """Apply the steps; when one creates the master key, as an audited ``key.create`` (its
    intent written before anything is applied: with an unwritable log nothing is)."""
    from heimdall_kms.providers.aws import bootstrap as ab  # noqa: PLC0415 - loads boto3

    if not steps.creates_key:
        ab.apply(call, steps.steps)
        return
    audited_key_create(
        lambda: ab.apply(call, steps.steps),
        log=log,
        actor=actor,
        key=reference.text,
        provider=ProviderName.AWS.value,
        details={"key_versioning": versioning.value, "key_spec": "SYMMETRIC_DEFAULT"},
    )


def _target(
    call: Call, steps: Plan, reference: KeyReference, versioning: AWSKeyVersioning, region: str
) -> PolicyTarget:
    """What the policies name; before the key exists (a dry run), placeholders."""
    from heimdall_kms.providers.aws.bootstrap import PolicyTarget  # noqa: PLC0415

    arn = steps.key_arn
    if arn is None:
        arn = _described_arn(call, reference.text, region, "KEY-CREATED-ON-APPLY")
    prefix = arn.split(":key/", 1)[0]
    return PolicyTarget(versioning, _alias(reference), arn, prefix)


def _alias(reference: KeyReference) -> str | None:
    """The alias the policies name, as alias/NAME (an alias ARN shortened); None for a key."""
    if not reference.is_alias:
        return None
    if reference.text.startswith("arn:"):
        return "alias/" + reference.text.split(":alias/", 1)[1]
    return reference.text


def _signing_arn(call: Call, signing: SigningKey, region: str) -> str:
    """The signing key's ARN; before it is created (a dry run), a placeholder."""
    if signing.arn is not None:
        return signing.arn
    return _described_arn(call, signing.name, region, "SIGNING-KEY-CREATED-ON-APPLY")


def _described_arn(call: Call, key_id: str, region: str, placeholder: str) -> str:
    """The key's ARN from DescribeKey; before the key exists (a dry run), ``placeholder``'s."""
    from heimdall_kms.errors import KeyNotFoundError  # noqa: PLC0415

    try:
        return str(call("DescribeKey", KeyId=key_id)["KeyMetadata"]["Arn"])
    except KeyNotFoundError:
        return f"arn:aws:kms:{region}:ACCOUNT:key/{placeholder}"


def _print(steps: Plan, policies: dict[str, dict[str, Any]], *, dry_run: bool) -> None:
    print_dry_run_header(dry_run=dry_run)
    for step in steps.steps:
        _print_step(step, dry_run=dry_run)
    print_counts((step.change.value for step in steps.steps), dry_run=dry_run)
    _print_policies(policies)


def _print_step(step: Step, *, dry_run: bool) -> None:
    """The step's line; on a dry run, the calls it would make."""
    label = change_label(step.change.value, dry_run=dry_run)
    click.echo(f"{label:<{_WIDTH}} {step.name}")
    for item in step.calls if dry_run else ():
        click.echo(f"{'':<{_WIDTH + 2}}{item}")


def _print_policies(policies: dict[str, dict[str, Any]]) -> None:
    from heimdall_kms.providers.aws.bootstrap import PURPOSES  # noqa: PLC0415

    for role, document in policies.items():
        click.echo(f"IAM policy of the {role} role ({PURPOSES[role]}):")
        click.echo(json.dumps(document, indent=2))
