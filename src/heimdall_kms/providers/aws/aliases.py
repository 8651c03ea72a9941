"""The alias-per-version scheme's key bookkeeping (``HMD_AWS_KEY_VERSIONING=aliases``).

Version n of ``alias/<name>`` is a KMS key of its own, which carries the alias
``alias/<name>/v<n>`` and the tags ``heimdall:alias`` and ``heimdall:version``. No boto3 here:
every function is given ``call(operation, **params)``, one AWS request with the provider's
error translation (:func:`heimdall_kms.providers.aws.provider.caller`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from heimdall_kms.errors import ConfigurationError, KeyNotFoundError, KMSError
from heimdall_kms.providers.aws.native import Call

__all__ = ["check_alias", "create_key_for_alias", "create_version", "tags", "version_alias_of"]

_ALIAS = re.compile(r"alias/(?!aws/)[A-Za-z0-9/_-]{1,200}")


def check_alias(alias: str) -> None:
    """Raises:
    ConfigurationError: not an alias name this scheme can derive ``/v<n>`` names from.
    """
    if not _ALIAS.fullmatch(alias) or re.search(r"/v[0-9]+$", alias):
        raise ConfigurationError(
            "HMD_KMS_KEY_ID: HMD_AWS_KEY_VERSIONING=aliases needs an alias name, alias/NAME "
            "(its versions are keys behind it); see docs/providers/aws.md"
        )


def create_key_for_alias(call: Call, alias: str) -> str:
    """Make ``alias`` a versioned heimdall key and return the latest key's id.

    Creates version 1 and the alias when the alias does not exist; adopts an existing alias's
    key as version 1 when it has no version yet; otherwise changes nothing.

    Raises:
        ConfigurationError: ``alias`` is not an ``alias/NAME``. KMSError: AWS refused.
    """
    check_alias(alias)
    try:
        key_id = str(call("DescribeKey", KeyId=alias)["KeyMetadata"]["KeyId"])
    except KeyNotFoundError:
        key_id = create_version(call, alias, 1)
        call("CreateAlias", AliasName=alias, TargetKeyId=key_id)
        return key_id
    if version_alias_of(call, alias, key_id) is None:
        call("CreateAlias", AliasName=f"{alias}/v1", TargetKeyId=key_id)
        call("TagResource", KeyId=key_id, Tags=tags(alias, 1))
    return key_id


def create_version(call: Call, alias: str, version: int) -> str:
    """Create version ``version``'s key and its version alias; the new key's id.

    Raises:
        KMSError: AWS refused (a key made before the refusal is scheduled for deletion).
    """
    key_id = str(
        call(
            "CreateKey",
            Description=f"heimdall-kms {alias} version {version}",
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Tags=tags(alias, version),
        )["KeyMetadata"]["KeyId"]
    )
    try:
        call("CreateAlias", AliasName=f"{alias}/v{version}", TargetKeyId=key_id)
    except KMSError:
        # The key made here never wrapped anything (another rotation took this version, or the
        # identity may not create aliases): do not leave an orphan behind.
        call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
        raise
    return key_id


def version_alias_of(call: Call, alias: str, key_id: str) -> int | None:
    """The n of the key's ``alias/<name>/v<n>`` alias; None when it has none."""
    pattern = re.compile(re.escape(alias) + r"/v([1-9][0-9]{0,8})")
    for name in _alias_names(call, key_id):
        match = pattern.fullmatch(name)
        if match is not None:
            return int(match.group(1))
    return None


def _alias_names(call: Call, key_id: str) -> Iterator[str]:
    """The names of the key's aliases, one ListAliases page at a time (as they are read)."""
    params: dict[str, object] = {"KeyId": key_id}
    while True:
        page = call("ListAliases", **params)
        yield from (str(entry.get("AliasName", "")) for entry in page.get("Aliases", []))
        if not page.get("Truncated") or not page.get("NextMarker"):
            return
        params["Marker"] = page["NextMarker"]


def tags(alias: str, version: int) -> list[dict[str, str]]:
    return [
        {"TagKey": "heimdall:alias", "TagValue": alias},
        {"TagKey": "heimdall:version", "TagValue": str(version)},
    ]
