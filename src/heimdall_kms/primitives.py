"""The only module that touches the ``cryptography`` package.

Everything else works through these few functions, so the primitives in use can be reviewed
in one place (ruff's TID251 rule bans ``cryptography`` imports elsewhere). Nonces are made
here, never passed in by callers, except through the underscore hook the test-vector
generator uses to make reproducible vectors.

Wiping keys is best effort. DEKs travel as ``bytearray`` so that :func:`wipe` can overwrite
them in place, but CPython and OpenSSL may hold further copies (the ``bytes`` object the AEAD
constructor needs, base64 strings returned by a KMS, freed heap pages) that Python cannot
reach. ``docs/design/KMS-Vault-Plan.md`` explains what this does and does not protect against.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from heimdall_kms.errors import IntegrityError

__all__ = [
    "DEK_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "derive_key",
    "mac",
    "new_dek",
    "new_deks",
    "open_",
    "open_each",
    "open_under",
    "seal",
    "seal_each",
    "sign_ed25519",
    "verify_ed25519",
    "verify_with_public_key",
    "wipe",
    "wipe_all",
]

DEK_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16

_INTEGRITY_MESSAGE = "envelope failed authentication (tampered, truncated, or wrong field/context)"


def new_dek() -> bytearray:
    """Return a fresh 256-bit data key from the operating system's CSPRNG."""
    return bytearray(os.urandom(DEK_BYTES))


def new_deks(count: int) -> list[bytearray]:
    """``count`` fresh 256-bit data keys from the operating system's CSPRNG.

    Where the system allows, one ``readv`` of ``/dev/urandom`` fills every buffer in place:
    one system call per batch instead of one per key, and no intermediate ``bytes`` object
    holding key material that :func:`wipe` could not reach. The file is used only when it is
    the kernel's random character device (checked on the open descriptor; symlinks are not
    followed). Elsewhere, one ``os.urandom`` (``getrandom(2)``) per key, whose ``bytes``
    result is a copy Python cannot wipe.
    """
    deks = [bytearray(DEK_BYTES) for _ in range(count)]
    if not deks:
        return deks
    source = _open_urandom()
    try:
        for start in range(0, count, _IOV_MAX):
            part = deks[start : start + _IOV_MAX]
            filled = os.readv(source, part) if source is not None else 0
            if filled != DEK_BYTES * len(part):  # not available, or a short read: key by key
                for dek in part:
                    dek[:] = os.urandom(DEK_BYTES)
    finally:
        if source is not None:
            os.close(source)
    return deks


_IOV_MAX = 1024
_URANDOM = "/dev/urandom"
_pool_ready: list[bool] = []


def _open_urandom() -> int | None:
    # Opened per batch, never cached: a cached descriptor can be closed behind our back (a
    # daemon closing every descriptor) and its number reused for another file, whose bytes
    # would then become keys. os.urandom blocks until the kernel's pool is initialised, and
    # /dev/urandom may not on old kernels, so it is read only after that.
    if not hasattr(os, "readv"):
        return None
    if not _pool_ready:
        os.urandom(1)
        _pool_ready.append(True)
    try:
        fd = os.open(_URANDOM, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        if _is_urandom(os.fstat(fd)):
            return fd
    except OSError:
        pass
    # A regular file, a pipe or another device in its place (a container or chroot with a
    # planted /dev): its bytes are not keys. os.urandom (getrandom(2)) takes over.
    os.close(fd)
    return None


def _is_urandom(info: os.stat_result) -> bool:
    """The kernel's random device: a character device, on Linux ``1:9`` (``1:8`` is
    /dev/random, as good since Linux 5.6)."""
    device = (os.major(info.st_rdev), os.minor(info.st_rdev))
    on_linux = sys.platform.startswith("linux")
    return stat.S_ISCHR(info.st_mode) and (not on_linux or device in ((1, 9), (1, 8)))


def seal(key: bytes | bytearray, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """Encrypt with AES-256-GCM under a fresh random nonce.

    Returns:
        ``(ciphertext_with_tag, nonce)``.
    """
    return _seal_with_nonce(key, plaintext, aad, os.urandom(NONCE_BYTES))


def seal_each(
    keys: Sequence[bytearray], plaintexts: Sequence[bytes], aads: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """:func:`seal` for many values, each under its own key: the nonces come from one read of
    the CSPRNG instead of one per value."""
    if not len(keys) == len(plaintexts) == len(aads):
        raise ValueError("seal_each needs one key, plaintext and AAD per value")
    if any(len(key) != DEK_BYTES for key in keys):
        raise ValueError("AES-256-GCM key must be 32 bytes")
    pool = os.urandom(NONCE_BYTES * len(keys))
    nonces = [pool[start : start + NONCE_BYTES] for start in range(0, len(pool), NONCE_BYTES)]
    return [
        (AESGCM(bytes(key)).encrypt(nonce, plaintext, aad), nonce)
        for key, plaintext, aad, nonce in zip(keys, plaintexts, aads, nonces, strict=True)
    ]


def _seal_with_nonce(
    key: bytes | bytearray, plaintext: bytes, aad: bytes, nonce: bytes
) -> tuple[bytes, bytes]:
    # Only the vector generator may call this directly: a fixed nonce reused with the same key
    # destroys GCM's confidentiality and authenticity.
    _check_key(key)
    if len(nonce) != NONCE_BYTES:
        raise ValueError("AES-GCM nonce must be 12 bytes")
    return AESGCM(bytes(key)).encrypt(nonce, plaintext, aad), nonce


def open_(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Decrypt and authenticate AES-256-GCM output.

    Raises:
        IntegrityError: the tag does not verify (tampered data, wrong key, nonce or AAD) or the
            input is too short to hold a tag. The message is deliberately unspecific.
    """
    _check_key(key)
    if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        raise IntegrityError(_INTEGRITY_MESSAGE)
    try:
        return AESGCM(bytes(key)).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise IntegrityError(_INTEGRITY_MESSAGE) from None


def open_each(
    keys: Sequence[bytearray],
    nonces: Sequence[bytes],
    ciphertexts: Sequence[bytes],
    aads: Sequence[bytes],
) -> list[bytes | IntegrityError]:
    """:func:`open_` for many values, each under its own key: each value's plaintext, or the
    :class:`IntegrityError` it raised, in order (one call per batch, not one per value)."""
    if not len(keys) == len(nonces) == len(ciphertexts) == len(aads):
        raise ValueError("open_each needs one key, nonce, ciphertext and AAD per value")
    if any(len(key) != DEK_BYTES for key in keys):
        raise ValueError("AES-256-GCM key must be 32 bytes")
    opened: list[bytes | IntegrityError] = []
    for key, nonce, ciphertext, aad in zip(keys, nonces, ciphertexts, aads, strict=True):
        if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
            opened.append(IntegrityError(_INTEGRITY_MESSAGE))
            continue
        try:
            opened.append(AESGCM(bytes(key)).decrypt(nonce, ciphertext, aad))
        except InvalidTag:
            opened.append(IntegrityError(_INTEGRITY_MESSAGE))
    return opened


def open_under(
    key: bytes | bytearray, nonces: Sequence[bytes], ciphertexts: Sequence[bytes]
) -> list[bytes | IntegrityError]:
    """:func:`open_` for many values under one key, with empty associated data (the legacy
    format): each value's plaintext, or the :class:`IntegrityError` it raised, in order. The
    key schedule is made once for the batch, not once per value."""
    if len(nonces) != len(ciphertexts):
        raise ValueError("open_under needs one nonce per ciphertext")
    _check_key(key)
    aead = AESGCM(bytes(key))
    opened: list[bytes | IntegrityError] = []
    for nonce, ciphertext in zip(nonces, ciphertexts, strict=True):
        if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
            opened.append(IntegrityError(_INTEGRITY_MESSAGE))
            continue
        try:
            opened.append(aead.decrypt(nonce, ciphertext, b""))
        except InvalidTag:
            opened.append(IntegrityError(_INTEGRITY_MESSAGE))
    return opened


def wipe(buffer: bytearray) -> None:
    """Overwrite a key buffer with zeros in place (best effort; see the module docstring)."""
    # Same-length slice assignment writes into the existing buffer; it does not reallocate.
    buffer[:] = bytes(len(buffer))


def wipe_all(buffers: Iterable[bytearray]) -> None:
    """:func:`wipe` for a batch's key buffers (one call, not one per key)."""
    for buffer in buffers:
        buffer[:] = _DEK_ZEROS if len(buffer) == DEK_BYTES else bytes(len(buffer))


_DEK_ZEROS = bytes(DEK_BYTES)


def wipe_if_dek(result: object) -> None:
    """Wipe ``result`` if it is a DEK (a ``bytearray``): the ``discard`` of a fan-out whose
    per-item results are DEKs, per-item errors or wrapped keys."""
    if isinstance(result, bytearray):
        wipe(result)


def derive_key(key: bytes | bytearray, purpose: bytes) -> bytes:
    """A 32-byte subkey for one purpose (HKDF-SHA256), so one master key never does two jobs."""
    return HKDF(algorithm=hashes.SHA256(), length=DEK_BYTES, salt=None, info=purpose).derive(
        bytes(key)
    )


def mac(key: bytes | bytearray, data: bytes) -> bytes:
    """HMAC-SHA256."""
    signer = _hmac.HMAC(bytes(key), hashes.SHA256())
    signer.update(data)
    return signer.finalize()


def _check_key(key: bytes | bytearray) -> None:
    if len(key) != DEK_BYTES:
        raise ValueError("AES-256-GCM key must be 32 bytes")


def sign_ed25519(seed: bytes | bytearray, message: bytes) -> bytes:
    """An Ed25519 signature (64 bytes) of ``message`` by the key made from a 32-byte seed."""
    _check_seed(seed)
    return Ed25519PrivateKey.from_private_bytes(bytes(seed)).sign(message)


def verify_ed25519(seed: bytes | bytearray, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` by the seed's key."""
    _check_seed(seed)
    public = Ed25519PrivateKey.from_private_bytes(bytes(seed)).public_key()
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _check_seed(seed: bytes | bytearray) -> None:
    if len(seed) != DEK_BYTES:
        raise ValueError("an Ed25519 seed must be 32 bytes")


def verify_with_public_key(pem: bytes, message: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a signature of ``message`` by the PEM public key: ECDSA P-256
    with SHA-256 (a DER signature, as Cloud KMS's ``EC_SIGN_P256_SHA256`` answers) or Ed25519.

    Raises:
        ValueError: not a PEM public key of those two kinds.
    """
    public = load_pem_public_key(pem)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1":
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, Ed25519PublicKey):
            public.verify(signature, message)
        else:
            raise ValueError("a public key of another kind than ECDSA P-256 or Ed25519")
    except InvalidSignature:
        return False
    return True
