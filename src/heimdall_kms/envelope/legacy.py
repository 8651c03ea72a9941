"""The legacy env-key envelope written by Heimdall's existing PII engine (SPEC §4.1).

``{"ciphertext": B64, "nonce": B64, "key_id": STR, "algorithm": "AES-256-GCM"}``: AES-256-GCM
under the hex-decoded ``HMD_PII_MASTER_KEY`` (or an older key selected by ``key_id``), a
12-byte random nonce, the 16-byte tag appended to the ciphertext, empty associated data,
standard base64 with padding, UTF-8 plaintext. It binds no context, so a legacy value moved to
another field still decrypts; that is one reason to migrate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from heimdall_kms.envelope import _json
from heimdall_kms.envelope._base import ALGORITHM, Envelope
from heimdall_kms.errors import MalformedEnvelopeError

__all__ = ["LEGACY", "LEGACY_KEYS", "LegacyEnvelope"]

LEGACY = "legacy"
LEGACY_KEYS = frozenset({"ciphertext", "nonce", "key_id", "algorithm"})


@dataclass(frozen=True, slots=True)
class LegacyEnvelope(Envelope):
    encryption_version: ClassVar[str] = LEGACY

    ciphertext: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    key_id: str
    algorithm: str = ALGORITHM

    def aad(self) -> bytes:
        return b""

    def to_dict(self) -> dict[str, Any]:
        # Key order as the existing engine writes it.
        return {
            "ciphertext": _json.b64_text(self.ciphertext),
            "nonce": _json.b64_text(self.nonce),
            "key_id": self.key_id,
            "algorithm": self.algorithm,
        }

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LegacyEnvelope:
        """Build from a parsed legacy JSON object.

        Raises:
            MalformedEnvelopeError: a field is missing, of the wrong type, or unknown.
        """
        unknown = sorted(set(obj) - LEGACY_KEYS)
        if unknown:
            raise MalformedEnvelopeError(
                f"legacy envelope has unexpected field {_json.short(unknown[0])}"
            )
        algorithm = _json.text(obj, "algorithm", max_chars=64)
        if algorithm != ALGORITHM:
            raise MalformedEnvelopeError(f"unsupported algorithm {_json.short(algorithm)}")
        key_id = _json.text(obj, "key_id", max_chars=256)
        if not key_id:
            raise MalformedEnvelopeError("envelope field 'key_id' is empty")
        return cls(
            ciphertext=_json.b64(obj, "ciphertext"),
            nonce=_json.b64(obj, "nonce"),
            key_id=key_id,
            algorithm=algorithm,
        )
