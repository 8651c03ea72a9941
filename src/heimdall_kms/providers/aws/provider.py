"""``AWSKMSProvider``: AWS KMS through boto3 (extra ``aws``).

Two ways to version a key (``HMD_AWS_KEY_VERSIONING``). **native** (the default): one KMS key,
named by key id, key ARN, alias or alias ARN, rotated by AWS itself; its versions are AWS's
rotations of the key material (:mod:`heimdall_kms.providers.aws.native`), and ``retire`` is
refused because AWS cannot disable one of them.

**aliases** (opt-in, for those who need ``retire``): **version n is the n-th KMS key created
for the alias** ``HMD_KMS_KEY_ID`` (``alias/heimdall-pii``).
Version n's key also carries the alias ``alias/heimdall-pii/v<n>`` and the tags
``heimdall:alias`` and ``heimdall:version``; the main alias targets the latest version.
``rotate`` creates key n+1 and switches the main alias; ``retire(N)`` disables every key below
N (reversible with ``EnableKey``; deletion stays a deliberate, separate step). The whole
design, and how it coexists with AWS's own automatic rotation, is in ``docs/providers/aws.md``.

KMS has no batch call: ``*_many`` run one request per item on a bounded thread pool, in input
order. The field/record context is bound at KMS as the ``EncryptionContext`` (``ReEncrypt``
carries it over, so rewrap keeps working) as well as in the value's AES-GCM AAD. Errors are
rebuilt from the AWS error code only, never from the message body, and raised ``from None``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Self, TypeVar

from heimdall_kms import primitives
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
)
from heimdall_kms.kinds import AWSKeyVersioning, ProviderName
from heimdall_kms.overlap import fan_out
from heimdall_kms.providers.aws import aliases
from heimdall_kms.providers.aws.client import (
    KMSClient,
    bounded,
    build_client,
    caller,
    deadline_of,
)
from heimdall_kms.providers.aws.errors import (
    InvalidStateError,
)
from heimdall_kms.providers.aws.keys import BoundedCache, parse_key_reference
from heimdall_kms.providers.aws.native import NativeKey
from heimdall_kms.providers.base import (
    KeyContext,
    KeyInfo,
    KeyVersion,
    WrappedKey,
    check_retire_bound,
    response_date,
    round_trip,
)
from heimdall_kms.wrapped_key import WrappedCodec

if TYPE_CHECKING:
    from heimdall_kms.config import Settings

__all__ = ["AWSKMSProvider", "kms_encryption_context"]

_T = TypeVar("_T")
_R = TypeVar("_R")

# ``aws:v<n>:`` and the base64 of the CiphertextBlob (heimdall_kms.wrapped_key).
_WRAPPED = WrappedCodec("aws", re.compile(r"[A-Za-z0-9+/=]{1,8192}"))
# Every DEK is wrapped under this entry too, so that IAM can require it
# (kms:EncryptionContext:heimdall-purpose) and the app role is no general decryption oracle.
PURPOSE_KEY, PURPOSE = "heimdall-purpose", "data-key"
_RETIRED_STATES = frozenset({"Disabled", "PendingDeletion", "PendingReplicaDeletion"})
_PER_ITEM = (IntegrityError, KeyVersionRetiredError, KeyNotFoundError)


def kms_encryption_context(context: KeyContext) -> dict[str, str]:
    """The ``EncryptionContext`` a DEK with this context is wrapped under (non-secret; it
    appears in CloudTrail). ``heimdall-purpose`` is reserved and always wins."""
    return {**context, PURPOSE_KEY: PURPOSE}


@dataclass(frozen=True, slots=True)
class _KeyState:
    """What ``DescribeKey`` says about one version's key."""

    version: int
    key_id: str
    state: str
    created_at: datetime | None


@dataclass(frozen=True, slots=True)
class _Job:
    """One item on its way to KMS (a wrapped DEK, kept out of reprs all the same)."""

    blob: bytes = field(repr=False)
    key_id: str
    context: dict[str, str]


class AWSKMSProvider:
    """One versioned AWS KMS key. Construct with a ready boto3 KMS client.

    ``key_id`` is ``HMD_KMS_KEY_ID``: for ``native`` versioning a key id, key ARN, alias name
    or alias ARN; for ``aliases`` an alias name.
    """

    def __init__(
        self,
        client: KMSClient,
        key_id: str,
        *,
        versioning: AWSKeyVersioning = AWSKeyVersioning.NATIVE,
        max_concurrency: int = 16,
    ) -> None:
        self._client = client
        self._call = caller(client)
        self._deadline = deadline_of(client)
        self._alias = key_id
        self._native: NativeKey | None = None
        if versioning is AWSKeyVersioning.ALIASES:
            aliases.check_alias(key_id)
        else:
            self._native = NativeKey(self._call, parse_key_reference(key_id))
        self._described_at: datetime | None = None
        self._max_concurrency = max(1, max_concurrency)
        # key id -> version: fixed when the key is created, so it is safe to remember.
        self._versions: BoundedCache[str, int] = BoundedCache()
        # version -> key id of an Enabled version, resolved once per process rather than with
        # a DescribeKey per unwrap (its quota is far below the cryptographic one). A version
        # disabled later is refused by AWS itself (DisabledException).
        self._resolved: BoundedCache[int, str] = BoundedCache()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        if settings.aws is None or settings.kms_key_id is None:
            raise ConfigurationError("HMD_KMS_KEY_ID: required for HMD_KMS_PROVIDER=aws")
        versioning = settings.aws.key_versioning
        if versioning is AWSKeyVersioning.ALIASES:
            aliases.check_alias(settings.kms_key_id)
        else:
            parse_key_reference(settings.kms_key_id)  # fail at start, before any client
        client = build_client(settings.aws)
        return cls(
            client,
            settings.kms_key_id,
            versioning=versioning,
            max_concurrency=settings.aws.max_concurrency,
        )

    @property
    def name(self) -> ProviderName:
        return ProviderName.AWS

    @property
    def key_identifier(self) -> str:
        return self._alias

    def wrap_many(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey]:
        # Encrypt names the alias, so a concurrent rotation never mislabels a value: each answer
        # says which key wrapped it, and that key's version is the one recorded. A native key's
        # version is read before the wrap, so it is never newer than the material used.
        target, version = self._destination()
        return self._encrypt_many(deks, contexts, target, version)

    @property
    def pins_versions(self) -> bool:
        """Whether :meth:`wrap_at_version` works: with one KMS key per version, not natively."""
        return self._native is None

    def wrap_at_version(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext], version: int
    ) -> list[WrappedKey]:
        """Wrap under ``alias/<name>/v<n>`` instead of the latest (alias scheme only): the
        canaries of a retirement (heimdall_kms.jobs.propagation).

        Raises:
            ConfigurationError: a native key (AWS cannot wrap with an older material).
        """
        if self._native is not None:
            raise ConfigurationError("a native AWS key cannot wrap under an older version")
        return self._encrypt_many(deks, contexts, f"{self._alias}/v{version}", None)

    def _encrypt_many(
        self,
        deks: Sequence[bytearray],
        contexts: Sequence[KeyContext],
        target: str,
        version: int | None,
    ) -> list[WrappedKey]:
        def encrypt(item: tuple[bytearray, KeyContext]) -> tuple[bytes, str]:
            try:
                with self._request("Encrypt"):
                    answer = self._client.encrypt(
                        KeyId=target,
                        Plaintext=bytes(item[0]),
                        EncryptionContext=kms_encryption_context(item[1]),
                    )
            except InvalidStateError:
                raise self._state_error(target, "Encrypt") from None
            return answer["CiphertextBlob"], answer["KeyId"]

        sealed = self._map(encrypt, list(zip(deks, contexts, strict=True)))
        return [self._wrapped(blob, arn, version) for blob, arn in sealed]

    def unwrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[bytearray | HeimdallKMSError]:
        def decrypt(job: _Job) -> bytearray | HeimdallKMSError:
            try:
                with self._request("Decrypt"):
                    answer = self._client.decrypt(
                        CiphertextBlob=job.blob, KeyId=job.key_id, EncryptionContext=job.context
                    )
            except InvalidStateError:
                return self._state_error(job.key_id, "Decrypt", per_item=True)
            except _PER_ITEM as exc:
                return exc
            dek = bytearray(answer.pop("Plaintext"))
            if len(dek) != primitives.DEK_BYTES:
                primitives.wipe(dek)
                return IntegrityError("unwrapped data key has the wrong length")
            return dek

        return self._per_item(wrapped, contexts, decrypt)

    def rewrap_many(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[WrappedKey | HeimdallKMSError]:
        # ReEncrypt decrypts and re-encrypts inside KMS: the DEK never reaches this process. A
        # native key re-encrypts to itself: AWS uses its current material.
        target, version = self._destination()

        def reencrypt(job: _Job) -> tuple[bytes, str] | HeimdallKMSError:
            try:
                with self._request("ReEncrypt"):
                    answer = self._client.re_encrypt(
                        CiphertextBlob=job.blob,
                        SourceKeyId=job.key_id,
                        SourceEncryptionContext=job.context,
                        DestinationKeyId=target,
                        DestinationEncryptionContext=job.context,
                    )
            except InvalidStateError:
                return self._state_error(job.key_id, "ReEncrypt", per_item=True)
            except _PER_ITEM as exc:
                return exc
            return answer["CiphertextBlob"], answer["KeyId"]

        results = self._per_item(wrapped, contexts, reencrypt)
        return [
            r if isinstance(r, HeimdallKMSError) else self._wrapped(*r, version) for r in results
        ]

    def rotate(self) -> KeyInfo:
        if self._native is not None:
            return self._native.rotate()
        target = self._latest_version() + 1
        existing = self._key_state(target)
        if existing is None:
            key_id = aliases.create_version(self._call, self._alias, target)
        elif existing.state == "Enabled":
            key_id = existing.key_id  # an earlier rotation stopped before the switch: finish it
        else:
            raise KMSError(
                f"{self._alias}/v{target} exists but its key is {existing.state}; "
                "see docs/providers/aws.md"
            )
        with self._request("UpdateAlias"):
            self._client.update_alias(AliasName=self._alias, TargetKeyId=key_id)
        return self.describe()

    def retire(self, below_version: int) -> KeyInfo:
        if self._native is not None:
            self._native.refuse_retire(below_version)
        states = self._all_states()
        check_retire_bound(below_version, states[-1].version)
        # Disable, never delete: disabling takes effect at once and can be undone (EnableKey);
        # deletion destroys every copy a backup still holds, so it stays a deliberate step.
        for key in states:
            if key.version < below_version and key.state == "Enabled":
                with self._request("DisableKey"):
                    self._client.disable_key(KeyId=key.key_id)
        self._resolved.clear()  # this process refuses them again without asking AWS
        return self.describe()

    def describe(self) -> KeyInfo:
        if self._native is not None:
            return self._native.describe()
        states = self._all_states()
        minimum = _min_decryption_version(states)
        return KeyInfo(
            provider=self.name,
            key_identifier=self._alias,
            latest_version=states[-1].version,
            min_decryption_version=minimum,
            versions=tuple(
                KeyVersion(k.version, k.created_at) for k in states if k.version >= minimum
            ),
            server_time=self._described_at,
        )

    def health(self) -> None:
        round_trip(self)

    def close(self) -> None:
        self._client.close()

    def _request(self, operation: str) -> AbstractContextManager[None]:
        """One AWS request: under the client's total deadline, its errors translated."""
        return bounded(operation, self._deadline)

    # -- versions ---------------------------------------------------------------------------------

    def _latest_version(self) -> int:
        with self._request("DescribeKey"):
            response = self._client.describe_key(KeyId=self._alias)
        # AWS's clock (the answer's Date): what describe() ages the key by.
        self._described_at = response_date(response)
        return self._version_of(str(response["KeyMetadata"]["KeyId"]))

    def _all_states(self) -> list[_KeyState]:
        """Versions 1..latest whose key still exists, oldest first. A key left by a rotation
        that never switched the alias is above the latest, so it is not listed."""
        latest = self._latest_version()
        found = self._map(self._key_state, list(range(1, latest + 1)))
        states = [state for state in found if state is not None]
        if not states or states[-1].version != latest:
            raise KMSError(f"{self._alias}/v{latest} is missing; see docs/providers/aws.md")
        return states

    def _key_state(self, version: int) -> _KeyState | None:
        try:
            with self._request("DescribeKey"):
                meta = self._client.describe_key(KeyId=f"{self._alias}/v{version}")["KeyMetadata"]
        except KeyNotFoundError:
            return None
        self._versions.put(str(meta["KeyId"]), version)  # the version alias is authoritative
        created = meta.get("CreationDate")
        return _KeyState(
            version,
            str(meta["KeyId"]),
            str(meta["KeyState"]),
            created.astimezone(UTC) if isinstance(created, datetime) else None,
        )

    def _state_error(
        self, key_id: str, operation: str, *, per_item: bool = False
    ) -> HeimdallKMSError:
        """KMSInvalidStateException says only that the key's state forbids the call: which
        state decides. Disabled or pending deletion is a retired version (per item where the
        call allows it); any other state (pending import, creating, unavailable) is no
        retirement, and is raised as what it is."""
        error = self._invalid_state(key_id, f"AWS KMS {operation}")
        if per_item and isinstance(error, _PER_ITEM):
            return error
        raise error

    def _invalid_state(self, key_id: str, where: str) -> HeimdallKMSError:
        """What the key's current state makes of a KMSInvalidStateException."""
        try:
            with self._request("DescribeKey"):
                state = str(self._client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])
        except KeyNotFoundError:
            return KeyNotFoundError(f"{where}: the key no longer exists")
        if state in _RETIRED_STATES:
            return KeyVersionRetiredError(f"{where}: the key is {state} (retired)")
        return KMSError(
            f"{where}: the key is {state}, a state that cannot do this "
            "(KMSInvalidStateException); it is not retired: check the key in AWS"
        )

    def _version_of(self, key: str) -> int:
        key_id = key.rsplit("key/", 1)[-1]  # Encrypt and ReEncrypt answer with the key's ARN
        known = self._versions.get(key_id)
        if known is None:
            known = aliases.version_alias_of(self._call, self._alias, key_id)
            if known is None:
                raise KMSError(
                    f"{self._alias} targets a key without a {self._alias}/v<n> alias; adopt "
                    "it with the aws bootstrap, or use HMD_AWS_KEY_VERSIONING=native "
                    "(docs/providers/aws.md)"
                )
            self._versions.put(key_id, known)
        return known

    def _destination(self) -> tuple[str, int | None]:
        """The KeyId to wrap under and, for a native key, the version to record."""
        if self._native is None:
            return self._alias, None  # the version comes from the key AWS answers with
        return self._native.key_arn, self._native.wrap_version()

    def _wrapped(self, blob: bytes, arn: str, version: int | None) -> WrappedKey:
        if version is None:
            version = self._version_of(arn)
        body = base64.b64encode(blob).decode("ascii")
        return WrappedKey(_WRAPPED.write(version, body), version)

    # -- per-item calls ---------------------------------------------------------------------------

    def _per_item(
        self,
        wrapped: Sequence[str],
        contexts: Sequence[KeyContext],
        call: Callable[[_Job], _R | HeimdallKMSError],
    ) -> list[_R | HeimdallKMSError]:
        """Answer what the version prefix and key state already decide without a crypto call,
        then ``call`` the rest, in input order."""
        planned = self._jobs(wrapped, contexts)
        answers = iter(self._map(call, [job for job in planned if isinstance(job, _Job)]))
        return [next(answers) if isinstance(job, _Job) else job for job in planned]

    def _jobs(
        self, wrapped: Sequence[str], contexts: Sequence[KeyContext]
    ) -> list[_Job | HeimdallKMSError]:
        """Each item's request, or the error its version prefix or key state decides."""
        parsed = [_parse(item) for item in wrapped]
        keys = self._keys_of(sorted({p[0] for p in parsed if not isinstance(p, HeimdallKMSError)}))
        return [_job(item, context, keys) for item, context in zip(parsed, contexts, strict=True)]

    def _keys_of(self, versions: Sequence[int]) -> dict[int, str | _KeyState | None]:
        """Each version's KMS key id, or the state that makes it unusable (None: no key).

        A native key decrypts every version with the one key. Alias versions are resolved
        with one DescribeKey each the first time this process meets them, then remembered.
        """
        if self._native is not None:
            return dict.fromkeys(versions, self._native.key_arn)
        keys: dict[int, str | _KeyState | None] = {v: self._resolved.get(v) for v in versions}
        missing = [version for version, key in keys.items() if key is None]
        keys.update(zip(missing, self._map(self._resolve, missing), strict=True))
        return keys

    def _resolve(self, version: int) -> str | _KeyState | None:
        """The key id of an Enabled version (remembered), or the state that makes it unusable."""
        state = self._key_state(version)
        if state is None or state.state != "Enabled":
            return state
        self._resolved.put(version, state.key_id)
        return state.key_id

    def _map(self, call: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        # The one fan-out: input order, at most max_concurrency at once, the first whole-call
        # failure stops the rest and is raised, DEKs already unwrapped by then are wiped.
        return fan_out(
            call,
            items,
            self._max_concurrency,
            discard=primitives.wipe_if_dek,
            thread_name_prefix="heimdall-aws",
        )


def _parse(item: str) -> tuple[int, bytes] | HeimdallKMSError:
    form = _WRAPPED.read(item)
    if form is None:
        return IntegrityError("wrapped data key is not in the aws provider's form")
    try:
        # The version picks the KMS key that decrypts (alias/<name>/v<n>): a blob of another
        # version's key is refused by AWS itself, so the version is verified on unwrap.
        return form.version, base64.b64decode(form.body, validate=True)
    except binascii.Error:
        return IntegrityError("wrapped data key is not valid base64")


def _min_decryption_version(states: Sequence[_KeyState]) -> int:
    """The oldest Enabled version; the latest when every version is disabled."""
    return min((k.version for k in states if k.state == "Enabled"), default=states[-1].version)


def _job(
    item: tuple[int, bytes] | HeimdallKMSError,
    context: KeyContext,
    keys: dict[int, str | _KeyState | None],
) -> _Job | HeimdallKMSError:
    if isinstance(item, HeimdallKMSError):
        return item
    version, blob = item
    key = keys[version]
    if not isinstance(key, str):
        return _unusable(version, key)
    return _Job(blob, key, kms_encryption_context(context))


def _unusable(version: int, state: _KeyState | None) -> HeimdallKMSError:
    if state is None:
        return KeyNotFoundError(f"key version {version} has no KMS key (never created, or deleted)")
    if state.state in _RETIRED_STATES:
        return KeyVersionRetiredError(
            f"key version {version} is retired (its key is {state.state})"
        )
    return KMSError(f"key version {version} is not usable now (its key is {state.state})")
