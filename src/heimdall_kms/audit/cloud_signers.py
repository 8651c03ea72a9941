"""Audit checkpoint signers on GCP Cloud KMS and Azure Key Vault.

GCP: an ``ASYMMETRIC_SIGN`` CryptoKey (``EC_SIGN_P256_SHA256``, or ``EC_SIGN_ED25519``).
``asymmetricSign`` with its newest enabled version; Cloud KMS has no verify call, so a
signature is checked here (:func:`heimdall_kms.primitives.verify_with_public_key`) against the
public key of the version it names (``getPublicKey``, the audit role's only permission).

Azure: a P-256 ``EC``/``EC-HSM`` key; ``sign`` (ES256, over the SHA-256 digest) with its
newest version, ``verify`` through the SDK with the version the signature names (with
``keys/read`` the SDK checks it with the public key on the client, else it asks the service).

Each signature names the key version that made it (``gcp:v3:…``, ``azure:<version>:…``), so a
new version (rotation) keeps every older checkpoint verifiable. The SDKs are imported by the
caller that builds these (the ``gcp`` and ``azure`` extras).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from heimdall_kms import primitives
from heimdall_kms.audit.checkpoint import VersionedSigner
from heimdall_kms.errors import KeyNotFoundError, KMSError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.wrapped_key import format_wrapped, parse_wrapped

__all__ = ["AzureSigner", "GCPSigner"]

_AZURE = re.compile(r"azure:([0-9A-Za-z]{1,64}):([A-Za-z0-9+/=]+)")
_GCP_ALGORITHMS = ("EC_SIGN_P256_SHA256", "EC_SIGN_ED25519")


def _crc(data: bytes) -> int:
    import google_crc32c  # noqa: PLC0415 - the gcp extra

    return int(google_crc32c.value(data))


class GCPSigner(VersionedSigner):
    """Cloud KMS ``asymmetricSign``, verified with ``getPublicKey``'s PEM."""

    def __init__(self, client: Any, key_name: str, *, timeout: float = 30.0) -> None:
        self._client = client
        self._key = key_name
        self._timeout = timeout

    @property
    def key_identifier(self) -> str:
        return f"gcp:{self._key}"

    def sign(self, message: bytes) -> str:
        from heimdall_kms.providers.gcp.errors import translated  # noqa: PLC0415 - optional extra

        version, algorithm = self._newest()
        request = _sign_request(version, algorithm, message)
        with translated("audit checkpoint sign"):
            answer = self._client.asymmetric_sign(request=request, timeout=self._timeout)
        _check_signed(answer, version)
        number = int(version.rsplit("/", 1)[1])  # Cloud KMS numbers a key's versions
        return format_wrapped(ProviderName.GCP, number, base64.b64encode(answer.signature).decode())

    def _newest(self) -> tuple[str, str]:
        """The newest ENABLED version's name and algorithm (an asymmetric key has no primary).

        Raises:
            KMSError: none is enabled, or it is of an algorithm the verifier cannot check.
        """
        from heimdall_kms.providers.gcp.errors import translated  # noqa: PLC0415

        with translated("audit checkpoint sign (versions)"):
            versions = [
                v
                for v in self._client.list_crypto_key_versions(
                    request={"parent": self._key}, timeout=self._timeout
                )
                if v.state.name == "ENABLED"
            ]
        if not versions:
            raise KMSError(f"GCP KMS audit signing key {self._key} has no enabled version")
        newest = max(versions, key=lambda v: int(v.name.rsplit("/", 1)[1]))
        if newest.algorithm.name not in _GCP_ALGORITHMS:
            raise KMSError(
                f"GCP KMS audit signing key {self._key}: algorithm {newest.algorithm.name}, "
                f"expected {' or '.join(_GCP_ALGORITHMS)}"
            )
        return str(newest.name), str(newest.algorithm.name)

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        keys: dict[int, bytes | None] = {}  # one getPublicKey per version named
        return [self._verify(message, signature, keys) for message, signature in items]

    def _verify(self, message: bytes, signature: str, keys: dict[int, bytes | None]) -> bool:
        parsed = _gcp_signature(signature)
        if parsed is None:
            return False
        version, raw = parsed
        if version not in keys:
            keys[version] = self._public_key(f"{self._key}/cryptoKeyVersions/{version}")
        pem = keys[version]
        return pem is not None and primitives.verify_with_public_key(pem, message, raw)

    def _public_key(self, version: str) -> bytes | None:
        """The version's PEM; None for a version that does not exist (its signatures are
        forged, not unverifiable)."""
        from heimdall_kms.providers.gcp.errors import translated  # noqa: PLC0415

        try:
            with translated("audit checkpoint verify (public key)"):
                answer = self._client.get_public_key(
                    request={"name": version}, timeout=self._timeout
                )
        except KeyNotFoundError:
            return None
        pem = str(answer.pem).encode()
        if answer.pem_crc32c != _crc(pem) or answer.algorithm.name not in _GCP_ALGORITHMS:
            raise KMSError("GCP KMS audit checkpoint verify: the public key failed its checks")
        return pem


class AzureSigner(VersionedSigner):
    """Key Vault ``sign``/``verify`` (ES256) with a P-256 key apart from the master key."""

    algorithm = "ES256"

    def __init__(self, client: Any, name: str) -> None:
        self._client = client  # an azure.keyvault.keys.KeyClient for the key's vault
        self._name = name

    @property
    def key_identifier(self) -> str:
        return f"azure:{self._client.vault_url}/keys/{self._name}"

    def sign(self, message: bytes) -> str:
        from heimdall_kms.providers.azure.errors import call  # noqa: PLC0415 - optional extra

        latest = call("audit checkpoint sign", lambda: self._client.get_key(self._name))
        version = str(latest.properties.version)
        crypto = self._crypto(version)
        digest = hashlib.sha256(message).digest()
        answer = call("audit checkpoint sign", lambda: crypto.sign(_es256(), digest))
        return f"azure:{version}:{base64.b64encode(answer.signature).decode()}"

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        return [self._verify(message, signature) for message, signature in items]

    def _verify(self, message: bytes, signature: str) -> bool:
        from heimdall_kms.providers.azure.errors import call  # noqa: PLC0415 - optional extra

        parsed = _azure_signature(signature)
        if parsed is None:
            return False
        version, raw = parsed
        crypto = self._crypto(version)
        digest = hashlib.sha256(message).digest()
        try:
            answer = call("audit checkpoint verify", lambda: crypto.verify(_es256(), digest, raw))
        except KeyNotFoundError:
            return False  # a version this key never had: forged
        return answer.is_valid is True

    def _crypto(self, version: str) -> Any:
        return self._client.get_cryptography_client(self._name, key_version=version)


def _sign_request(version: str, algorithm: str, message: bytes) -> dict[str, Any]:
    """``asymmetricSign``'s request: P-256 signs the SHA-256 digest, Ed25519 the message."""
    if algorithm == "EC_SIGN_P256_SHA256":
        digest = hashlib.sha256(message).digest()
        return {"name": version, "digest": {"sha256": digest}, "digest_crc32c": _crc(digest)}
    return {"name": version, "data": message, "data_crc32c": _crc(message)}


def _check_signed(answer: Any, version: str) -> None:
    """Cloud KMS's integrity checks both ways: what it signed is what was sent, and the
    signature arrived as it left.

    Raises:
        KMSError: either failed.
    """
    if (
        answer.name != version
        or not (answer.verified_digest_crc32c or answer.verified_data_crc32c)
        or answer.signature_crc32c != _crc(answer.signature)
    ):
        raise KMSError("GCP KMS audit checkpoint sign: the answer failed its checksums")


def _gcp_signature(signature: str) -> tuple[int, bytes] | None:
    """The key version and the raw signature of ``gcp:v<N>:<base64>``."""
    form = parse_wrapped(signature)
    if form is None or form.provider != ProviderName.GCP:
        return None
    raw = _b64(form.body)
    return None if raw is None else (form.version, raw)


def _azure_signature(signature: str) -> tuple[str, bytes] | None:
    """The key version and the raw signature of ``azure:<version>:<base64>``."""
    match = _AZURE.fullmatch(signature)
    if match is None:
        return None
    raw = _b64(match.group(2))
    if raw is None or len(raw) != 64:  # ES256: r | s, 32 bytes each
        return None
    return match.group(1), raw


def _es256() -> Any:
    from azure.keyvault.keys.crypto import SignatureAlgorithm  # noqa: PLC0415 - the azure extra

    return SignatureAlgorithm.es256


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
