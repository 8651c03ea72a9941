"""The legacy env-key envelope written by Heimdall's existing PII engine (SPEC §4.1).

``{"ciphertext": B64, "nonce": B64, "key_id": STR, "algorithm": "AES-256-GCM"}``: AES-256-GCM
under the hex-decoded ``HMD_PII_MASTER_KEY`` (or an older key selected by ``key_id``), a
12-byte random nonce, the 16-byte tag appended to the ciphertext, empty associated data,
standard base64 with padding, UTF-8 plaintext. It binds no context, so a legacy value moved to
another field still decrypts; that is one reason to migrate.

It is read as the engine reads it: extra fields ignored, ``encryption_version`` absent or
``null``, any ``algorithm`` string (the label is not used: the cipher is always AES-256-GCM).
Writing always gives exactly the four fields with ``AES-256-GCM``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from heimdall_kms.envelope import _json
from heimdall_kms.envelope._base import ALGORITHM, Envelope
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.frozen_slots import new_instance, slot_setters
from heimdall_kms.kinds import EnvelopeFormat

__all__ = ["LEGACY", "LEGACY_KEYS", "LegacyEnvelope"]

LEGACY = EnvelopeFormat.LEGACY
LEGACY_KEYS = frozenset({"ciphertext", "nonce", "key_id", "algorithm"})


@dataclass(frozen=True, slots=True)
class LegacyEnvelope(Envelope):
    encryption_version: ClassVar[EnvelopeFormat] = LEGACY

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
        """Build from a parsed legacy JSON object, exactly as leniently as the engine reads it.

        The engine deserialises into four required strings (``serde_json``): unknown extra
        fields are ignored (and dropped here), and the ``algorithm`` label is never looked at
        (it always used AES-256-GCM), so neither is refused (SPEC §4.1).

        Raises:
            MalformedEnvelopeError: one of the four fields is missing or not a string, base64
                is not canonical, or ``key_id`` is empty (no key can be selected by it).
        """
        _json.text(obj, "algorithm")  # required as a string; its value is not used
        key_id = _json.text(obj, "key_id", max_chars=256)
        if not key_id:
            raise MalformedEnvelopeError("envelope field 'key_id' is empty")
        ciphertext, nonce = _json.b64(obj, "ciphertext"), _json.b64(obj, "nonce")
        if cls is not LegacyEnvelope:  # a subclass's own fields are its __init__'s to set
            return cls(ciphertext=ciphertext, nonce=nonce, key_id=key_id)
        # What cls(...) makes, without the frozen __init__'s object.__setattr__ per field:
        # every legacy value a job migrates is read here (test_classify compares them).
        envelope = new_instance(cls)
        _set_ciphertext(envelope, ciphertext)
        _set_nonce(envelope, nonce)
        _set_key_id(envelope, key_id)
        _set_algorithm(envelope, ALGORITHM)
        return envelope


_set_ciphertext, _set_nonce, _set_key_id, _set_algorithm = slot_setters(
    LegacyEnvelope, "ciphertext", "nonce", "key_id", "algorithm"
)
