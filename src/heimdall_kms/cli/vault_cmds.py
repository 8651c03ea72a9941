"""``heimdall-kms vault bootstrap``: the Vault side of a deployment (docs/vault-bootstrap.md).

hvac is imported when the command runs, never when the CLI loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from heimdall_kms.cli._actor import actor_option
from heimdall_kms.cli._bootstrap import change_label, print_counts, print_dry_run_header, required
from heimdall_kms.cli._key_create import audited_key_create
from heimdall_kms.config import ProviderName, Secret, Settings

if TYPE_CHECKING:
    import hvac

    from heimdall_kms.providers.vault.bootstrap import BootstrapOptions, KubernetesBinding, Step

__all__ = ["parse_period", "vault"]

_PERIOD = re.compile(r"(\d+)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_WIDTH = 10
_NOT_VAULT = (
    "HMD_KMS_PROVIDER: `vault bootstrap` needs HMD_KMS_PROVIDER=vault, HMD_VAULT_ADDR "
    "and an operator token in HMD_VAULT_TOKEN"
)


def parse_period(text: str) -> int:
    """``90d``, ``2160h``, ``45m``, ``3600`` or ``0`` as seconds.

    Raises:
        click.BadParameter: not of that form.
    """
    match = _PERIOD.fullmatch(text.strip())
    if match is None:
        raise click.BadParameter(
            "expected a duration such as 90d, 2160h or 0 (off)", param_hint="--auto-rotate-period"
        )
    return int(match.group(1)) * _UNIT[match.group(2)]


@click.group()
def vault() -> None:
    """Vault (and OpenBao) setup for heimdall-kms."""


@vault.command()
@click.option("--prefix", default="heimdall-kms", show_default=True, help="Policy/role names.")
@click.option("--key", "key_name", help="Transit key [default: HMD_KMS_KEY_ID]")
@click.option("--auto-rotate-period", metavar="DURATION", help="Let Vault rotate, e.g. 90d.")
@click.option(
    "--approle-mount",
    default="approle",
    show_default=True,
    help="Path of the AppRole auth method (enabled there if absent).",
)
@click.option("--kubernetes", is_flag=True, help="Also create Kubernetes auth roles.")
@click.option("--k8s-namespace", metavar="NS", help="Namespace the service accounts live in.")
@click.option(
    "--k8s-service-account",
    "accounts",
    multiple=True,
    metavar="ROLE=NAME",
    help="Service account of a role [default: PREFIX-ROLE].",
)
@click.option(
    "--k8s-mount",
    default="kubernetes",
    show_default=True,
    help="Path of the Kubernetes auth method (with --kubernetes).",
)
@click.option("--k8s-host", metavar="URL", help="Cluster API URL for auth/<mount>/config.")
@click.option("--k8s-ca-cert", type=click.Path(dir_okay=False, path_type=Path), help="Its CA.")
@click.option("--print-secret-ids", is_flag=True, help="Print new AppRole secret ids (SENSITIVE).")
@click.option("--dry-run", is_flag=True, help="Print the HCL and API calls; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@actor_option("bootstraps Vault (audited as key.create when the key is created)")
def bootstrap(
    *,
    actor: str,
    prefix: str,
    key_name: str | None,
    auto_rotate_period: str | None,
    approle_mount: str,
    kubernetes: bool,
    k8s_namespace: str | None,
    accounts: tuple[str, ...],
    k8s_mount: str,
    k8s_host: str | None,
    k8s_ca_cert: Path | None,
    print_secret_ids: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Create the Transit mount and key, the app/worker/admin/audit policies and their
    AppRole (and Kubernetes) login roles. Idempotent: a second run changes nothing.

    Uses HMD_VAULT_ADDR and an operator token in HMD_VAULT_TOKEN: root, or one with the
    operator policy of docs/vault-bootstrap.md (the `admin` role created here manages the key
    only and cannot run this). Prints role ids;
    never secret ids unless --print-secret-ids.
    """
    from heimdall_kms.providers import needs_extra  # noqa: PLC0415

    with needs_extra("vault", "vault bootstrap"):
        from heimdall_kms.providers.vault import bootstrap as vb  # noqa: PLC0415 - loads hvac
        from heimdall_kms.providers.vault.transit import build_client  # noqa: PLC0415

    k8s = _binding(kubernetes, k8s_namespace, accounts, k8s_mount, k8s_host, k8s_ca_cert)
    period = parse_period(auto_rotate_period) if auto_rotate_period else None
    settings = Settings.from_env(os.environ)
    vault_settings, configured_key = required(settings.vault, settings.kms_key_id, _NOT_VAULT)
    options = vb.BootstrapOptions(
        key=key_name or configured_key,
        transit_mount=vault_settings.transit_mount,
        prefix=prefix,
        auto_rotate_seconds=period,
        approle_mount=approle_mount,
        kubernetes=k8s,
    )
    client = build_client(vault_settings)
    try:
        steps = vb.plan(client, options)
        if not dry_run:
            _apply(client, steps, options, settings.audit_log, actor)
        ids = vb.role_ids(client, options)
        made = vb.new_secret_ids(client, options) if print_secret_ids and not dry_run else {}
    finally:
        client.adapter.close()
    _report(steps, options, ids, made, dry_run=dry_run, as_json=as_json)


def _report(
    steps: list[Step],
    options: BootstrapOptions,
    ids: dict[str, str | None],
    made: dict[str, Secret[str]],
    *,
    dry_run: bool,
    as_json: bool,
) -> None:
    secrets = {role: secret.reveal() for role, secret in made.items()}
    if as_json:
        click.echo(json.dumps(_document(steps, ids, secrets, dry_run=dry_run)))
    else:
        _print(steps, options, ids, dry_run=dry_run)
    if secrets:
        _print_secret_ids(secrets, options, as_json=as_json)


def _document(
    steps: list[Step], ids: dict[str, str | None], secrets: dict[str, str], *, dry_run: bool
) -> dict[str, Any]:
    document: dict[str, Any] = {"dry_run": dry_run, "steps": [s.to_dict() for s in steps]}
    document["role_ids"] = ids
    if secrets:
        document |= {"secret_ids": secrets, "secret_ids_sensitive": True}
    return document


def _apply(
    client: hvac.Client, steps: Sequence[Step], options: BootstrapOptions, log: str, actor: str
) -> None:
    """Apply the steps; when one creates the master key, as an audited ``key.create``
    (its intent written before anything is applied: with an unwritable log nothing is)."""
    from heimdall_kms.providers.vault import bootstrap as vb  # noqa: PLC0415 - loads hvac

    key_step = f"key {options.key} "
    if not any(s.name.startswith(key_step) and s.change is vb.Change.CREATED for s in steps):
        vb.apply(client, steps)
        return
    audited_key_create(
        lambda: vb.apply(client, steps),
        log=log,
        actor=actor,
        key=options.key,
        provider=ProviderName.VAULT.value,
        details={"transit_mount": options.transit_mount, "key_type": vb.KEY_TYPE},
    )


def _binding(  # noqa: PLR0917 - the --k8s-* options, in their order.
    kubernetes: bool,
    namespace: str | None,
    accounts: tuple[str, ...],
    mount: str,
    host: str | None,
    ca_cert: Path | None,
) -> KubernetesBinding | None:
    if not kubernetes:
        if any((accounts, namespace, host, ca_cert)):
            raise click.UsageError("the --k8s-* options need --kubernetes")
        return None
    return _kubernetes_binding(namespace, accounts, mount, host, ca_cert)


def _kubernetes_binding(
    namespace: str | None,
    accounts: tuple[str, ...],
    mount: str,
    host: str | None,
    ca_cert: Path | None,
) -> KubernetesBinding:
    from heimdall_kms.providers.vault.bootstrap import KubernetesBinding  # noqa: PLC0415

    if not namespace:
        raise click.BadParameter("required with --kubernetes", param_hint="--k8s-namespace")
    return KubernetesBinding(
        namespace=namespace,
        service_accounts=dict(_pair(item) for item in accounts),
        mount=mount,
        host=host,
        ca_cert_pem=_read(ca_cert) if ca_cert is not None else None,
    )


def _pair(item: str) -> tuple[str, str]:
    role, sep, name = item.partition("=")
    if not sep or not role or not name:
        raise click.BadParameter(
            f"expected ROLE=NAME, got {item!r}", param_hint="--k8s-service-account"
        )
    return role, name


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise click.BadParameter(f"cannot read {path}", param_hint="--k8s-ca-cert") from None


def _print(
    steps: list[Step], options: BootstrapOptions, ids: dict[str, str | None], *, dry_run: bool
) -> None:
    print_dry_run_header(dry_run=dry_run)
    for step in steps:
        _print_step(step, dry_run=dry_run)
    print_counts((step.change.value for step in steps), dry_run=dry_run)
    _print_role_ids(options, ids)


def _print_step(step: Step, *, dry_run: bool) -> None:
    """The step's line; on a dry run, the calls it would make and the policy it would write."""
    label = change_label(step.change.value, dry_run=dry_run)
    click.echo(f"{label:<{_WIDTH + 4}} {step.name}")
    if not dry_run:
        return
    for call in step.calls:
        click.echo(f"{'':<{_WIDTH + 6}}{call}")
    for line in step.hcl.splitlines() if step.hcl is not None else ():
        click.echo(f"{'':<{_WIDTH + 8}}{line}")


def _print_role_ids(options: BootstrapOptions, ids: dict[str, str | None]) -> None:
    click.echo("AppRole role ids (identifiers, not credentials: HMD_VAULT_ROLE_ID per deployment):")
    for role, role_id in ids.items():
        click.echo(f"  {role:<7} {options.name(role):<24} {role_id or '(created on apply)'}")
    mount = options.approle_mount
    click.echo("Secret ids are credentials and are not printed. Fetch one per deployment, wrapped:")
    click.echo(f"  bao write -wrap-ttl=10m -f auth/{mount}/role/{options.name('app')}/secret-id")
    click.echo("  (or `vault write ...`; unwrap it in the deployment: HMD_VAULT_SECRET_ID)")


def _print_secret_ids(secrets: dict[str, str], options: BootstrapOptions, *, as_json: bool) -> None:
    click.echo(
        "heimdall-kms: WARNING: SENSITIVE: new AppRole secret ids were printed on stdout; they "
        "are credentials: store them in a secret store, clear the terminal and its scrollback",
        err=True,
    )
    if as_json:
        return
    click.echo("AppRole secret ids (SENSITIVE: credentials, shown once):")
    for role, secret in secrets.items():
        click.echo(f"  {role:<7} {options.name(role):<24} {secret}")
