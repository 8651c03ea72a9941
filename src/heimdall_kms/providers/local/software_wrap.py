"""A DEK wrapped in software, under a master key this process holds. NOT FOR PRODUCTION.

AES-256-GCM under the master key with an AAD naming the key and version; the nonce and the
ciphertext, base64, behind ``<provider>:v<N>:``. The local provider and
:class:`heimdall_kms.testing.FakeKMS` wrap this way; a real KMS never lets its master key out.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence

from heimdall_kms import primitives
from heimdall_kms.errors import HeimdallKMSError, IntegrityError
from heimdall_kms.providers.base import WrappedKey
from heimdall_kms.wrapped_key import WrappedCodec

__all__ = ["BODY", "rewrap_each", "unwrap", "well_formed", "wrap"]

# The body after ``<provider>:v<n>:`` (heimdall_kms.wrapped_key): base64 of nonce + ciphertext.
BODY = re.compile(r"[A-Za-z0-9+/=]+")


def wrap(
    master: bytes | bytearray, codec: WrappedCodec, version: int, dek: bytearray, aad: bytes
) -> WrappedKey:
    ciphertext, nonce = primitives.seal(master, bytes(dek), aad)
    body = base64.b64encode(nonce + ciphertext).decode("ascii")
    return WrappedKey(codec.write(version, body), version)


def well_formed(body: str) -> bool:
    """Whether ``body`` can be a wrap's base64 at all: a damaged value is told apart from one
    whose version is retired or missing before any key is looked up."""
    return BODY.fullmatch(body) is not None


def unwrap(master: bytes | bytearray, body: str, aad: bytes) -> bytearray | IntegrityError:
    """The DEK, or the error for this item: not base64, not authentic, not a DEK's length."""
    if not well_formed(body):
        return IntegrityError("wrapped data key is not base64")
    try:
        blob = base64.b64decode(body, validate=True)
    except binascii.Error:
        return IntegrityError("wrapped data key is not valid base64")
    nonce, ciphertext = blob[: primitives.NONCE_BYTES], blob[primitives.NONCE_BYTES :]
    try:
        plain = primitives.open_(master, nonce, ciphertext, aad)
    except IntegrityError as exc:
        return exc
    if len(plain) != primitives.DEK_BYTES:
        return IntegrityError("unwrapped data key has the wrong length")
    return bytearray(plain)


def rewrap_each(
    wrapped: Sequence[str],
    unwrap_one: Callable[[str], bytearray | HeimdallKMSError],
    wrap_one: Callable[[bytearray], WrappedKey],
) -> list[WrappedKey | HeimdallKMSError]:
    """Unwrap and wrap again each item, wiping each DEK at once; per-item errors in place.

    (A real KMS re-wraps server-side; an in-process stand-in has to see the DEK.)
    """
    results: list[WrappedKey | HeimdallKMSError] = []
    for item in wrapped:
        dek = unwrap_one(item)
        if isinstance(dek, HeimdallKMSError):
            results.append(dek)
            continue
        try:
            results.append(wrap_one(dek))
        finally:
            primitives.wipe(dek)
    return results
