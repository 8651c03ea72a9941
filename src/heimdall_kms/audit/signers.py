"""The keys that sign audit checkpoints: Vault/OpenBao Transit, the clouds' KMSs, or the local
dev keyring.

``HMD_AUDIT_SIGNING_KEY`` names the key, on the configured provider: a Transit key of type
``ed25519`` (``vault bootstrap`` creates ``<key>-audit`` with its own policy: the writing roles
may ``sign``, the audit role may only ``verify``), or a key in the local keyring whose
32-byte version material is an Ed25519 seed (NOT FOR PRODUCTION), or an AWS KMS
``ECC_NIST_P256`` key with ``SIGN_VERIFY`` usage (``Sign``/``Verify``, ECDSA_SHA_256), or a
GCP ``ASYMMETRIC_SIGN`` CryptoKey or an Azure P-256 EC key (:mod:`.cloud_signers`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from heimdall_kms import primitives
from heimdall_kms.audit.checkpoint import Signer, VersionedSigner
from heimdall_kms.config import ProviderName, Settings
from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    KeyNotFoundError,
    KMSError,
)
from heimdall_kms.providers import needs_extra
from heimdall_kms.wrapped_key import WrappedForm, format_wrapped, parse_wrapped

if TYPE_CHECKING:
    import hvac

    from heimdall_kms.audit_settings import AuditAnchoring
    from heimdall_kms.providers.local import LocalKeyring

__all__ = ["AWSSigner", "LocalSigner", "VaultSigner", "signer_from_settings"]

_VERIFY_BATCH = 250
AWS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]{1,32}:[0-9]{12}:key/[A-Za-z0-9-]{1,128}")


class LocalSigner(VersionedSigner):
    """Ed25519 with a key of the local keyring; its versions' material are the seeds."""

    def __init__(self, keyring: LocalKeyring, name: str) -> None:
        self._keyring = keyring
        self._name = name

    @property
    def key_identifier(self) -> str:
        return f"local:{self._name}"

    def sign(self, message: bytes) -> str:
        self._keyring.ensure_key(self._name)
        versions = self._keyring.read_key(self._name)["versions"]
        version = max(int(v) for v in versions)
        seed = bytearray.fromhex(versions[str(version)]["key"])
        try:
            signature = primitives.sign_ed25519(seed, message)
        finally:
            primitives.wipe(seed)
        return format_wrapped(ProviderName.LOCAL, version, base64.b64encode(signature).decode())

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        return [self._verify(message, signature) for message, signature in items]

    def _verify(self, message: bytes, signature: str) -> bool:
        form = parse_wrapped(signature)
        if form is None or form.provider != ProviderName.LOCAL:
            return False
        found = self._material(form)
        if found is None:
            return False
        material, raw = found
        seed = bytearray.fromhex(material)
        try:
            return primitives.verify_ed25519(seed, message, raw)
        finally:
            primitives.wipe(seed)

    def _material(self, form: WrappedForm) -> tuple[str, bytes] | None:
        """The seed (hex) of the key version a signature names, and the raw signature; None
        when the keyring has no such key or version, or the signature is not 64 bytes of
        base64."""
        try:
            versions = self._keyring.read_key(self._name)["versions"]
            raw = base64.b64decode(form.body, validate=True)
        except (KeyNotFoundError, binascii.Error):
            return None
        version = versions.get(str(form.version))
        if version is None or len(raw) != 64:
            return None
        return version["key"], raw


class VaultSigner(VersionedSigner):
    """Transit ``sign``/``verify`` with an ``ed25519`` (or ECDSA) key apart from the
    encryption key."""

    def __init__(
        self,
        client: hvac.Client,
        name: str,
        *,
        mount: str = "transit",
        login: Callable[[hvac.Client], None] | None = None,
    ) -> None:
        from heimdall_kms.providers.vault.auth import TokenKeeper  # noqa: PLC0415

        self._client = client
        self._name = name
        self._mount = mount
        # A signer lives as long as `serve`: its token is renewed, re-read from a token file,
        # or replaced by a new login when refused, as the provider's is.
        self._token = TokenKeeper(client, login)

    def _call(self, operation: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        from heimdall_kms.providers.vault.errors import Translated  # noqa: PLC0415 - optional extra

        def attempt() -> dict[str, Any]:
            with Translated(operation, address=self._client.url, key=self._name, mount=self._mount):
                return fn()

        self._token.keep_fresh()
        try:
            return attempt()
        except AuthenticationError:
            if self._token.login is None:
                raise
            with Translated("login", login=True, address=self._client.url):
                self._token.login(self._client)
            return attempt()

    @property
    def key_identifier(self) -> str:
        return f"vault:{self._mount}/{self._name}"

    def sign(self, message: bytes) -> str:
        answer = self._call(
            "audit checkpoint sign",
            lambda: self._client.secrets.transit.sign_data(
                self._name,
                hash_input=base64.b64encode(message).decode(),
                mount_point=self._mount,
            ),
        )
        return str(answer["data"]["signature"])

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        """Transit ``verify`` with ``batch_input``: one request per 250 checkpoints."""
        found: list[bool] = []
        for start in range(0, len(items), _VERIFY_BATCH):
            found += self._verify_batch(items[start : start + _VERIFY_BATCH])
        return found

    def _verify_batch(self, chunk: Sequence[tuple[bytes, str]]) -> list[bool]:
        batch = [
            {"input": base64.b64encode(message).decode(), "signature": signature}
            for message, signature in chunk
        ]
        answer = self._call(
            "audit checkpoint verify",
            functools.partial(
                self._client.adapter.post,
                f"/v1/{self._mount}/verify/{self._name}",
                json={"batch_input": batch},
            ),
        )
        results = answer["data"]["batch_results"]
        if len(results) != len(chunk):
            raise KMSError("Transit verify answered another number of results than asked")
        # A malformed signature is an item error, not a valid one.
        return [item.get("valid") is True and not item.get("error") for item in results]


class AWSSigner:
    """AWS KMS ``Sign``/``Verify`` (ECDSA_SHA_256) with an ``ECC_NIST_P256`` ``SIGN_VERIFY`` key
    apart from the encryption key.

    AWS does not rotate asymmetric keys: a rotation is a new key (the alias re-pointed, or a
    new ``HMD_AUDIT_SIGNING_KEY``). So each signature records the ARN of the key that made it
    (``aws:ECDSA_SHA_256:<key ARN>:<signature>``), and a signature verifies with that key only
    when it is one of ``previous`` (``HMD_AUDIT_PREVIOUS_SIGNING_KEYS``, key ARNs the verifier
    lists); any other is checked against ``key_id`` and must have been made by it. A key the
    log names is never trusted for being named.
    """

    algorithm = "ECDSA_SHA_256"

    def __init__(self, client: Any, key_id: str, *, previous: Sequence[str] = ()) -> None:
        self._client = client
        self._key_id = key_id
        self._previous = frozenset(previous)

    @property
    def key_identifier(self) -> str:
        return f"aws:{self._key_id}"

    def sign(self, message: bytes) -> str:
        from heimdall_kms.providers.aws.errors import translated  # noqa: PLC0415 - optional extra

        with translated("audit checkpoint sign"):
            answer = self._client.sign(
                KeyId=self._key_id,
                Message=message,
                MessageType="RAW",
                SigningAlgorithm=self.algorithm,
            )
        arn = str(answer["KeyId"])  # Sign answers the ARN of the key the alias or id named
        return f"aws:{self.algorithm}:{arn}:{base64.b64encode(answer['Signature']).decode()}"

    def signing_key_of(self, signature: str) -> str | None:
        parsed = self._parse(signature)
        return parsed[0] if parsed else None

    def _parse(self, signature: str) -> tuple[str, bytes] | None:
        """The key ARN and the raw signature of ``aws:ECDSA_SHA_256:<ARN>:<base64>``."""
        prefix = f"aws:{self.algorithm}:"
        arn, colon, body = signature.removeprefix(prefix).rpartition(":")
        if not signature.startswith(prefix) or not colon or not AWS_KEY_ARN.fullmatch(arn):
            return None
        try:
            return arn, base64.b64decode(body, validate=True)
        except binascii.Error:
            return None

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        return [self._verify(message, signature) for message, signature in items]

    def _verify(self, message: bytes, signature: str) -> bool:
        parsed = self._parse(signature) or self._parse_unnamed(signature)
        if parsed is None:
            return False
        arn, raw = parsed
        return self._ask(self._verifying_key(arn), message, raw, arn)

    def _verifying_key(self, arn: str | None) -> str:
        """The key asked to verify a signature that records ``arn`` (None: an unnamed one)."""
        # Whoever has root on a writer's host can make a key of their own in an account of
        # their own and record its ARN: only a listed previous key is asked by its ARN.
        return arn if arn is not None and arn in self._previous else self._key_id

    def _ask(self, key: str, message: bytes, raw: bytes, arn: str | None) -> bool:
        """Whether AWS ``Verify`` with ``key`` finds ``raw`` valid, made by ``arn`` if named."""
        from botocore.exceptions import ClientError  # noqa: PLC0415 - optional extra

        from heimdall_kms.providers.aws.errors import translated  # noqa: PLC0415

        with translated("audit checkpoint verify"):
            try:
                answer = self._client.verify(
                    KeyId=key,
                    Message=message,
                    MessageType="RAW",
                    Signature=raw,
                    SigningAlgorithm=self.algorithm,
                )
            except ClientError as exc:
                # AWS answers a signature that does not verify with this error.
                if exc.response.get("Error", {}).get("Code") == "KMSInvalidSignatureException":
                    return False
                raise
        # Verify answers the ARN of the key it used: the one the signature records, or the
        # signature is another key's, relabelled.
        named = arn is None or answer.get("KeyId") == arn
        return answer.get("SignatureValid") is True and named

    def _parse_unnamed(self, signature: str) -> tuple[None, bytes] | None:
        """The raw signature of ``aws:ECDSA_SHA_256:<base64>``, the form written before
        signatures named their key: it can only be the configured key's."""
        body = signature.removeprefix(f"aws:{self.algorithm}:")
        if body == signature or ":" in body:
            return None
        try:
            return None, base64.b64decode(body, validate=True)
        except binascii.Error:
            return None


def _aws_previous(names: Sequence[str]) -> tuple[str, ...]:
    """The previous signing keys, as key ARNs.

    Raises:
        ConfigurationError: an entry is an alias or key id (an alias moves to the new key, a
            bare id does not say which account's key it is).
    """
    for name in names:
        if not AWS_KEY_ARN.fullmatch(name):
            raise ConfigurationError(
                f"HMD_AUDIT_PREVIOUS_SIGNING_KEYS: {name[:80]!r} is not a key ARN "
                "(arn:aws:kms:REGION:ACCOUNT:key/ID; not an alias or bare key id)"
            )
    return tuple(names)


def _check_signing_key(settings: Settings, anchoring: AuditAnchoring) -> None:
    """Refuse previous keys off AWS, and a signing key that is another key of the tool.

    Raises:
        ConfigurationError: either.
    """
    if anchoring.previous_signing_keys and settings.provider is not ProviderName.AWS:
        raise ConfigurationError(
            "HMD_AUDIT_PREVIOUS_SIGNING_KEYS: only for aws, whose signing keys do not rotate; "
            "the other providers' signatures name their key version, and a rotation keeps "
            "older checkpoints verifiable"
        )
    if anchoring.signing_key in (settings.kms_key_id, settings.hmac_key_id):
        raise ConfigurationError(
            "HMD_AUDIT_SIGNING_KEY: must name a key of its own, not the encryption or "
            "keyed-hashing key"
        )


def _vault_signer(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    if settings.vault is None:
        return None
    from heimdall_kms.providers.vault.auth import login_function  # noqa: PLC0415
    from heimdall_kms.providers.vault.transit import build_client  # noqa: PLC0415 - optional extra

    return VaultSigner(
        build_client(settings.vault),
        anchoring.signing_key,
        mount=settings.vault.transit_mount,
        login=login_function(settings.vault),
    )


def _aws_signer(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    if settings.aws is None:
        return None
    previous = _aws_previous(anchoring.previous_signing_keys)  # a setting's error needs no SDK
    from heimdall_kms.providers.aws.client import build_client as aws_client  # noqa: PLC0415

    return AWSSigner(aws_client(settings.aws), anchoring.signing_key, previous=previous)


def _gcp_signer(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    if settings.gcp is None:
        return None
    from heimdall_kms.audit.cloud_signers import GCPSigner  # noqa: PLC0415
    from heimdall_kms.providers.gcp.client import build_client as gcp_client  # noqa: PLC0415
    from heimdall_kms.providers.gcp.client import check_key_name  # noqa: PLC0415

    return GCPSigner(
        gcp_client(settings.gcp),
        check_key_name(anchoring.signing_key),
        timeout=settings.gcp.timeout_seconds,
    )


def _azure_signer(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    azure = settings.azure
    if not (azure and settings.kms_key_id):
        return None
    from heimdall_kms.audit.cloud_signers import AzureSigner  # noqa: PLC0415
    from heimdall_kms.providers.azure.keys import signing_key_name  # noqa: PLC0415
    from heimdall_kms.providers.azure.provider import build_key_client  # noqa: PLC0415

    key = signing_key_name(anchoring.signing_key, settings.kms_key_id)
    client, _credential = build_key_client(settings.kms_key_id, azure)
    return AzureSigner(client, key)


def _local_signer(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    if settings.local_keyring is None:
        return None
    from heimdall_kms.providers.local import LocalKeyring  # noqa: PLC0415

    keyring = LocalKeyring(settings.local_keyring)
    keyring.require()
    return LocalSigner(keyring, anchoring.signing_key)


# One builder per provider; each answers None when its provider's own settings are missing.
_SIGNERS: dict[ProviderName, Callable[[Settings, AuditAnchoring], Signer | None]] = {
    ProviderName.VAULT: _vault_signer,
    ProviderName.AWS: _aws_signer,
    ProviderName.GCP: _gcp_signer,
    ProviderName.AZURE: _azure_signer,
    ProviderName.LOCAL: _local_signer,
}


def signer_from_settings(settings: Settings) -> Signer | None:
    """The signer ``HMD_AUDIT_SIGNING_KEY`` names on the configured provider, or None.

    Raises:
        ConfigurationError: the key is the encryption key (or malformed for the provider), or
            no provider is configured.
        KMSError: the login to the KMS failed.
    """
    anchoring = settings.audit_anchoring
    if anchoring is None:
        return None
    _check_signing_key(settings, anchoring)
    signer = _build(settings, anchoring)
    if signer is not None:
        return signer
    named = settings.provider.value if settings.provider else "none"
    raise ConfigurationError(
        f"HMD_AUDIT_SIGNING_KEY: signing checkpoints needs a KMS provider (HMD_KMS_PROVIDER is "
        f"{named}; vault, aws, gcp, azure and local sign)"
    )


def _build(settings: Settings, anchoring: AuditAnchoring) -> Signer | None:
    """The configured provider's signer; None without a provider or its settings."""
    provider = settings.provider
    if provider is None:
        return None
    with needs_extra(provider.value, "HMD_AUDIT_SIGNING_KEY"):
        return _SIGNERS[provider](settings, anchoring)
