"""AWS's own key rotation as heimdall key versions (``HMD_AWS_KEY_VERSIONING=native``).

One KMS key, named by key id, key ARN, alias or alias ARN. AWS rotation (``EnableKeyRotation``
on a schedule, ``RotateKeyOnDemand``) gives the key new backing material and keeps every older
one for ``Decrypt``. **Version 1 is the material the key was created with; version n+1 is the
n-th rotation** that ``ListKeyRotations`` lists, oldest first, so the latest version is one
more than the number of rotations.

AWS does not say which material wrapped a ciphertext (``Encrypt`` answers with the key only),
so for a native key ``key_version`` is **informational**: the latest version this process knew
of just before the wrap, never newer than the material that really wrapped it (a rotation
racing the wrap makes it older, and a later rewrap brings it forward again). AWS decrypts with
whichever material the blob names, so every version stays usable for ``Decrypt`` and none can
be retired on its own: :meth:`NativeKey.refuse_retire` says so, and what to do instead.

No boto3 here: :class:`NativeKey` is given ``call(operation, **params)``, which runs one AWS
request with the provider's error translation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

from heimdall_kms.errors import ConfigurationError, KMSError, RefusedError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers.aws.keys import KeyReference
from heimdall_kms.providers.base import KeyInfo, KeyVersion, response_date

__all__ = ["Call", "NativeKey"]

Call = Callable[..., dict[str, Any]]


class NativeKey:
    """The versions of one KMS key rotated by AWS.

    The key the reference names is resolved once per process, not per value (one
    ``DescribeKey``, and for an alias one ``ListAliases`` to refuse an alias of the
    per-version scheme). The latest version is read again after ``version_ttl`` seconds, so a
    rotation by another process is picked up within that time (values wrapped meanwhile carry
    the older number, which a rewrap later moves forward).
    """

    def __init__(
        self,
        call: Call,
        reference: KeyReference,
        *,
        version_ttl: float = 60.0,
        rotate_wait: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._call = call
        self._reference = reference
        self._ttl = version_ttl
        self._rotate_wait = rotate_wait
        self._clock = clock
        self._sleep = sleep
        self._key_arn: str | None = None
        self._described_at: datetime | None = None
        self._latest: tuple[int, float] | None = None  # (version, when it was read)

    @property
    def key_arn(self) -> str:
        """The ARN of the KMS key the reference resolved to (on first use, then kept). An ARN,
        not the bare key id: a key of another account is found only by its ARN.

        Raises:
            ConfigurationError: the key is not a symmetric encryption key. KMSError.
        """
        if self._key_arn is None:
            self._key_arn = str(self._resolve()["Arn"])
        return self._key_arn

    def wrap_version(self) -> int:
        """The version to record for a value wrapped now (read before the wrap: see above)."""
        now = self._clock()
        if self._latest is None or now - self._latest[1] >= self._ttl:
            self._latest = (1 + len(self._rotations()), now)
        return self._latest[0]

    def describe(self) -> KeyInfo:
        """Versions 1..latest with their dates; every one of them still decrypts.

        Raises:
            KMSError: AWS failed, or the reference now names another key than this process
                has been using (an alias moved).
        """
        meta = self._resolve()
        if self._key_arn is None:
            self._key_arn = str(meta["Arn"])
        if meta["Arn"] != self._key_arn:
            raise KMSError(
                f"{self._reference.text} now names another KMS key than the one this process "
                "wraps with; native versioning follows one key (docs/providers/aws.md)"
            )
        created = meta.get("CreationDate")
        dates = [_utc(created), *(_utc(r.get("RotationDate")) for r in self._rotations())]
        self._latest = (len(dates), self._clock())
        return KeyInfo(
            provider=ProviderName.AWS,
            key_identifier=self._reference.text,
            latest_version=len(dates),
            min_decryption_version=1,
            versions=tuple(KeyVersion(n, date) for n, date in enumerate(dates, start=1)),
            server_time=self._described_at,
        )

    def rotate(self) -> KeyInfo:
        """``RotateKeyOnDemand``, then wait (bounded) until ``ListKeyRotations`` shows it.

        Raises:
            KMSError: AWS refused (for example the limit of on-demand rotations per key), or
                the rotation was not visible within the wait.
        """
        before = len(self._rotations())
        self._call("RotateKeyOnDemand", KeyId=self.key_arn)
        deadline = self._clock() + self._rotate_wait
        pause = 0.5
        while len(self._rotations()) <= before:
            if self._clock() >= deadline:
                raise KMSError(
                    f"AWS accepted the rotation of {self._reference.text} but does not list it "
                    f"after {self._rotate_wait:.0f} s; describe the key again later"
                )
            self._sleep(pause)
            pause = min(pause * 2, 10.0)
        return self.describe()

    def refuse_retire(self, below_version: int) -> NoReturn:
        """AWS keeps every material of a key usable for ``Decrypt``: nothing to disable.

        Raises:
            RefusedError: always, naming the reason and the alternatives.
        """
        raise RefusedError(
            f"cannot retire versions below {below_version} of {self._reference.text}: AWS "
            "rotation keeps every backing version of a KMS key usable for Decrypt and cannot "
            "disable one of them. To retire versions, use one KMS key per version "
            "(HMD_AWS_KEY_VERSIONING=aliases), or re-encrypt every value under a new key and "
            "then disable the old key (docs/providers/aws.md)"
        )

    def _resolve(self) -> dict[str, Any]:
        """``DescribeKey`` of the reference, checked to be usable natively."""
        meta = self._metadata()
        spec = meta.get("KeySpec", "SYMMETRIC_DEFAULT")
        if spec != "SYMMETRIC_DEFAULT" or meta.get("KeyUsage", "ENCRYPT_DECRYPT") != (
            "ENCRYPT_DECRYPT"
        ):
            raise ConfigurationError(
                f"HMD_KMS_KEY_ID: {self._reference.text} is a {spec} key; heimdall-kms needs a "
                "symmetric encryption key (SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT)"
            )
        if self._reference.is_alias:
            self._refuse_versioned_alias(str(meta["KeyId"]))
        return meta

    def _refuse_versioned_alias(self, key_id: str) -> None:
        """An alias of the alias-per-version scheme read natively would decrypt every older
        version's values with the latest key, and fail: refuse it at first use instead."""
        name = "alias/" + self._reference.text.split(":alias/", 1)[-1].removeprefix("alias/")
        pattern = re.compile(re.escape(name) + r"/v[1-9][0-9]{0,8}")
        for entry in self._call("ListAliases", KeyId=key_id).get("Aliases", []):
            if pattern.fullmatch(str(entry.get("AliasName", ""))):
                raise ConfigurationError(
                    f"HMD_AWS_KEY_VERSIONING: {name} has per-version aliases ({name}/v<n>): "
                    "set HMD_AWS_KEY_VERSIONING=aliases to keep using that scheme"
                )

    def _metadata(self) -> dict[str, Any]:
        response = self._call("DescribeKey", KeyId=self._reference.text)
        self._described_at = response_date(response)  # AWS's clock, for describe()
        return dict(response["KeyMetadata"])

    def _rotations(self) -> list[dict[str, Any]]:
        """Every rotation of the key, oldest first (ListKeyRotations takes no alias)."""
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"KeyId": self.key_arn}
        while True:
            page = self._call("ListKeyRotations", **params)
            found += page.get("Rotations", [])
            if not page.get("Truncated") or not page.get("NextMarker"):
                break
            params["Marker"] = page["NextMarker"]
        epoch = datetime.min.replace(tzinfo=UTC)
        return sorted(found, key=lambda r: _utc(r.get("RotationDate")) or epoch)


def _utc(value: object) -> datetime | None:
    return value.astimezone(UTC) if isinstance(value, datetime) else None
