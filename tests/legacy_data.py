"""Legacy env-key envelopes made with pycryptodome, an AES-GCM implementation independent of
the ``cryptography`` package heimdall_kms uses, exactly as SPEC §4.1 describes the existing
engine's output, so the tests never check heimdall_kms's crypto against itself."""

from __future__ import annotations

import base64
import json
import os

from Crypto.Cipher import AES

__all__ = ["legacy_envelope"]


def legacy_envelope(key_hex: str, plaintext: str, key_id: str = "default-key-v1") -> str:
    """A legacy env-key envelope as the existing engine writes it (SPEC §4.1)."""
    nonce = os.urandom(12)
    cipher = AES.new(bytes.fromhex(key_hex), AES.MODE_GCM, nonce=nonce)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext.encode("utf-8"))
    return json.dumps(
        {
            "ciphertext": base64.b64encode(ciphertext + tag).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "key_id": key_id,
            "algorithm": "AES-256-GCM",
        }
    )
