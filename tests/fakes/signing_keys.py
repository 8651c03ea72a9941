"""The asymmetric signing keys of the fakes: ECDSA P-256 with SHA-256, and Ed25519.

pycryptodome, independent of the ``cryptography`` package heimdall-kms verifies with. Cloud
KMS and Key Vault both sign a SHA-256 *digest* the client computed for ECDSA (Cloud KMS
``EC_SIGN_P256_SHA256`` answers a DER signature, Key Vault ``ES256`` the raw 64 bytes r|s)
and the message itself for Ed25519 (Cloud KMS ``EC_SIGN_ED25519``, RFC 8032).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from Crypto.Hash import SHA256
from Crypto.PublicKey import ECC
from Crypto.Signature import DSS, eddsa

__all__ = ["Curve", "Encoding", "SigningKey"]


class Curve(StrEnum):
    P256 = "P-256"
    ED25519 = "Ed25519"


class Encoding(StrEnum):
    DER = "der"  # Cloud KMS
    RAW = "binary"  # Key Vault (JWS): r | s, 32 bytes each


class _Digest:
    """A SHA-256 digest computed elsewhere, in the shape DSS takes a hash object."""

    oid = SHA256.new().oid
    digest_size = 32

    def __init__(self, value: bytes) -> None:
        self._value = value

    def digest(self) -> bytes:
        return self._value


@dataclass
class SigningKey:
    curve: Curve
    key: ECC.EccKey = field(repr=False)

    @classmethod
    def generate(cls, curve: Curve) -> SigningKey:
        return cls(curve, ECC.generate(curve=curve.value))

    def sign_digest(self, digest: bytes, encoding: Encoding) -> bytes:
        """ECDSA over a SHA-256 digest."""
        if self.curve is not Curve.P256 or len(digest) != 32:
            raise ValueError("an ECDSA P-256 key signs a 32-byte SHA-256 digest")
        return bytes(DSS.new(self.key, "fips-186-3", encoding=encoding.value).sign(_Digest(digest)))

    def sign_data(self, data: bytes) -> bytes:
        """Ed25519 (RFC 8032) over the message itself."""
        if self.curve is not Curve.ED25519:
            raise ValueError("only an Ed25519 key signs the message itself")
        return bytes(eddsa.new(self.key, "rfc8032").sign(data))

    def verify_digest(self, digest: bytes, signature: bytes, encoding: Encoding) -> bool:
        verifier = DSS.new(self.key.public_key(), "fips-186-3", encoding=encoding.value)
        try:
            verifier.verify(_Digest(digest), signature)
        except ValueError:
            return False
        return True

    def public_pem(self) -> str:
        return str(self.key.public_key().export_key(format="PEM")) + "\n"

    def public_xy(self) -> tuple[bytes, bytes]:
        """The P-256 point's coordinates, 32 bytes each (a JWK's ``x`` and ``y``)."""
        point = self.key.public_key().pointQ
        return int(point.x).to_bytes(32, "big"), int(point.y).to_bytes(32, "big")
