"""``heimdall-kms gcp bootstrap`` and ``heimdall-kms azure bootstrap`` (SPEC §3).

Create or adopt the master key named by ``HMD_KMS_KEY_ID`` and the audit checkpoints' signing
key (``HMD_AUDIT_SIGNING_KEY``, default ``<key>-audit``), idempotently, and print the
least-privilege access of the app, worker, admin and audit roles to both. A created master
key is an audited ``key.create``, its intent written before anything is sent. The SDKs are
imported when a command runs, never when the CLI loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._bootstrap import change_label, print_dry_run_header
from heimdall_kms.cli._key_create import audited_key_create
from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError

if TYPE_CHECKING:
    from heimdall_kms.providers.cloud_bootstrap import Grant, Plan

__all__ = ["azure", "gcp"]

_WIDTH = 14
_ROLES = ("app", "worker", "admin", "audit")


def _members(items: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in items:
        role, sep, member = item.partition("=")
        if not sep or role not in _ROLES or not member:
            raise click.BadParameter(
                f"expected ROLE=PRINCIPAL with ROLE one of {', '.join(_ROLES)}, got {item!r}",
                param_hint="--member",
            )
        found[role] = member
    return found


def _settings(provider: str) -> Settings:
    settings = Settings.from_env(os.environ)
    if settings.provider is None or settings.provider.value != provider or not settings.kms_key_id:
        raise ConfigurationError(
            f"HMD_KMS_PROVIDER: `{provider} bootstrap` needs HMD_KMS_PROVIDER={provider} and the "
            "key in HMD_KMS_KEY_ID"
        )
    return settings


def _signing_key(settings: Settings) -> str | None:
    return settings.audit_anchoring.signing_key if settings.audit_anchoring else None


def _run(
    plan: Plan, apply: Callable[[], None], *, dry_run: bool, as_json: bool, log: str, actor: str
) -> None:
    if not dry_run and any(step.calls for step in plan.steps):
        _apply(plan, apply, log=log, actor=actor)
    if as_json:
        click.echo(json.dumps(plan.to_dict(dry_run=dry_run)))
        return
    _print_plan(plan, dry_run=dry_run)


def _apply(plan: Plan, apply: Callable[[], None], *, log: str, actor: str) -> None:
    """Run the plan; a created key is an audited ``key.create``."""
    if not plan.creates_key:
        apply()
        return
    audited_key_create(
        apply,
        log=log,
        actor=actor,
        key=plan.key,
        provider=plan.provider,
        details=plan.key_details,
    )


def _print_plan(plan: Plan, *, dry_run: bool) -> None:
    print_dry_run_header(dry_run=dry_run)
    for step in plan.steps:
        label = change_label(step.change.value, dry_run=dry_run)
        click.echo(f"{label:<{_WIDTH}} {step.name}")
        for call in step.calls if dry_run else ():
            click.echo(f"{'':<{_WIDTH + 2}}{call}")
        for note in step.notes:
            click.echo(f"{'':<{_WIDTH + 2}}{note}")
    click.echo("Access (printed, not applied; grant it with these commands):")
    _print_grants(plan.access)
    click.echo(f"Access to the audit signing key {plan.signing_key} (printed, not applied):")
    _print_grants(plan.signing_access)


def _print_grants(grants: tuple[Grant, ...]) -> None:
    for grant in grants:
        click.echo(f"  {grant.role:<7} {grant.grants}: {grant.purpose}")
        click.echo(f"          permissions: {', '.join(grant.permissions)}")
        for name, document in grant.documents.items():
            click.echo(f"          {name}: {json.dumps(document, sort_keys=True)}")
        for command in grant.commands:
            click.echo(f"          $ {command}")


def _common(function: Callable[..., None]) -> Callable[..., None]:
    for decorator in reversed(
        (
            click.option(
                "--member",
                "members",
                multiple=True,
                metavar="ROLE=PRINCIPAL",
                help="Who gets a role's access [default: a name derived from --prefix].",
            ),
            click.option("--prefix", default="heimdall-kms", show_default=True, help="Names."),
            click.option(
                "--dry-run", is_flag=True, help="Print what would be created; write nothing."
            ),
            click.option("--json", "as_json", is_flag=True, help="Print JSON."),
            actor_option("bootstraps the key (audited as key.create when it is created)"),
        )
    ):
        function = decorator(function)
    return function


@click.group()
def gcp() -> None:
    """GCP Cloud KMS setup for heimdall-kms."""


@gcp.command("bootstrap")
@_common
def gcp_bootstrap(
    *, actor: str, members: tuple[str, ...], prefix: str, dry_run: bool, as_json: bool
) -> None:
    """Create (or adopt) the key ring and the ENCRYPT_DECRYPT CryptoKey of HMD_KMS_KEY_ID,
    rotating every HMD_KEY_ROTATION_DAYS, and the EC_SIGN_P256_SHA256 signing key of the audit
    checkpoints (HMD_AUDIT_SIGNING_KEY, default <key>-audit), and print the IAM roles of the
    app, worker, admin and audit identities on both. Idempotent: a second run changes nothing.

    Uses Application Default Credentials with permission to create key rings and keys.
    """
    from heimdall_kms.providers import needs_extra  # noqa: PLC0415

    with needs_extra("gcp", "gcp bootstrap"):
        from heimdall_kms.providers.gcp import bootstrap as gb  # noqa: PLC0415 - loads the SDK
        from heimdall_kms.providers.gcp.client import build_client  # noqa: PLC0415

    who = _members(members)
    settings = _settings("gcp")
    assert settings.gcp is not None
    assert settings.kms_key_id is not None
    timeout = settings.gcp.timeout_seconds
    client = build_client(settings.gcp)
    try:
        plan = gb.plan(
            client,
            settings.kms_key_id,
            rotation_days=settings.key_rotation_days,
            timeout=timeout,
            members=who,
            prefix=prefix,
            signing_key=_signing_key(settings),
        )
        _run(
            plan,
            lambda: gb.apply(client, plan.steps, timeout),
            dry_run=dry_run,
            as_json=as_json,
            log=settings.audit_log,
            actor=actor,
        )
    finally:
        client.transport.close()  # type: ignore[no-untyped-call]


@click.group()
def azure() -> None:
    """Azure Key Vault / Managed HSM setup for heimdall-kms."""


@azure.command("bootstrap")
@click.option(
    "--key-type",
    type=click.Choice(["RSA-HSM", "RSA", "oct-HSM"]),
    default="RSA-HSM",
    show_default=True,
    help="Type of a key created here (RSA-HSM needs a Premium vault; oct-HSM a Managed HSM).",
)
@_common
def azure_bootstrap(
    *,
    actor: str,
    key_type: str,
    members: tuple[str, ...],
    prefix: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Create (or adopt) the wrapKey/unwrapKey key of HMD_KMS_KEY_ID and the P-256 sign/verify
    key of the audit checkpoints (HMD_AUDIT_SIGNING_KEY, default <name>-audit in the same
    vault), and print the Azure RBAC role assignments of the app, worker, admin and audit
    identities on both. Idempotent: a second run changes nothing.

    Uses DefaultAzureCredential with permission to create keys (e.g. Key Vault Crypto Officer).
    """
    from heimdall_kms.providers import needs_extra  # noqa: PLC0415

    with needs_extra("azure", "azure bootstrap"):
        from heimdall_kms.providers.azure import bootstrap as ab  # noqa: PLC0415 - loads the SDK
        from heimdall_kms.providers.azure.provider import build_key_client  # noqa: PLC0415

    who = _members(members)
    settings = _settings("azure")
    assert settings.azure is not None
    assert settings.kms_key_id is not None
    client, credential = build_key_client(settings.kms_key_id, settings.azure)
    try:
        plan = ab.plan(
            client,
            settings.kms_key_id,
            key_type=key_type,
            rotation_days=settings.key_rotation_days,
            members=who,
            prefix=prefix,
            signing_key=_signing_key(settings),
        )
        _run(
            plan,
            lambda: ab.apply(client, plan.steps),
            dry_run=dry_run,
            as_json=as_json,
            log=settings.audit_log,
            actor=actor,
        )
    finally:
        client.close()
        credential.close()
