"""How long a value's new ``kms_v1`` text will be, told before anything is sealed (a dry run).

A dry run seals nothing, so it cannot measure the new text of a value; it can compute it. The
text is :meth:`KmsV1Envelope.to_json` put in the value's slot, and every part of it but the
wrapped DEK has a length known beforehand: the ciphertext is the plaintext's UTF-8 bytes and a
16-byte tag, the nonce 12 bytes (both base64), the context is the row's, the provider, key
identifier and key version are the configured key's, the timestamp has a fixed width
(:func:`utc_timestamp`). So the text is built here with random-free stand-ins of those lengths
(zero bytes, a wrapped DEK of ``A``\\ s: base64's characters, which JSON never escapes) and
measured; ``tests/integration/test_dry_run_fit.py`` compares the figure with envelopes really
sealed.

The wrapped DEK's length is the provider's: the local provider and Vault Transit's symmetric
key types always give 80 characters of base64 (12-byte nonce, the 32-byte DEK, 16-byte tag),
its RSA types the modulus' length. AWS and GCP do not document the length of their
ciphertexts, and Azure's wrapped form holds the version's id, so for them (and for a key whose
type or version the KMS would not tell) the job measures it: one wrap of a throwaway random DEK
with the configured key (:func:`measure`), whose length is then taken as exact for the version
that wrapped it, the one that wraps at that moment (a rotation between the dry run and the run
can change it). The context is taken to leave the length alone (no KMS here carries it in the
ciphertext: each must be given it again to unwrap; tested against moto and the GCP and Azure
fakes), so one wrap stands for every value. Where no wrap can be made (an identity that may not
wrap), only a lower bound is known (the DEK itself, base64: 44 characters), and a value is said
to fit only when it is certain to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from heimdall_kms import primitives
from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope
from heimdall_kms.envelope.kms_v1 import utc_timestamp
from heimdall_kms.errors import InvalidInputError, PermissionDeniedError
from heimdall_kms.jobs.classify import Slot
from heimdall_kms.kinds import ProviderName
from heimdall_kms.primitives import NONCE_BYTES
from heimdall_kms.providers.base import KeyInfo, KeyWrapper, WrappedKey
from heimdall_kms.wrapped_key import format_wrapped, parse_wrapped

__all__ = [
    "TAG_BYTES",
    "Need",
    "SizeModel",
    "WrappedChars",
    "legacy_need",
    "measure",
    "measured",
    "size_model",
    "unfit",
    "wrapped_chars",
]

TAG_BYTES = 16  # AES-256-GCM's tag, appended to the ciphertext
_MAX_VERSION = 999_999_999  # the wrapped form's nine digits (heimdall_kms.wrapped_key)


@dataclass(frozen=True, slots=True)
class WrappedChars:
    """The length of a wrapped DEK's body (after ``<provider>:v<N>:``): at least ``least``,
    at most ``most`` (None: the provider does not say)."""

    least: int
    most: int | None


def _b64_chars(size: int) -> int:
    return 4 * -(-size // 3)


_AEAD_WRAP = WrappedChars(80, 80)  # base64 of a 12-byte nonce, the 32-byte DEK, a 16-byte tag
_VAULT_TYPES = {
    "aes128-gcm96": _AEAD_WRAP,
    "aes256-gcm96": _AEAD_WRAP,
    "chacha20-poly1305": _AEAD_WRAP,
    # RSA-OAEP: one block of the modulus' length.
    "rsa-2048": WrappedChars(_b64_chars(256), _b64_chars(256)),
    "rsa-3072": WrappedChars(_b64_chars(384), _b64_chars(384)),
    "rsa-4096": WrappedChars(_b64_chars(512), _b64_chars(512)),
}
# Any wrapped DEK carries at least the DEK: a lower bound for every provider.
_AT_LEAST_THE_DEK = WrappedChars(_b64_chars(32), None)


def wrapped_chars(provider: ProviderName, key_type: str | None) -> WrappedChars:
    """The body length of the wrapped DEKs this provider's key gives (``key_type``: what the
    KMS said the key is, where it says)."""
    if provider is ProviderName.LOCAL:
        return _AEAD_WRAP  # heimdall_kms.providers.local.software_wrap
    if provider is ProviderName.VAULT and key_type in _VAULT_TYPES:
        return _VAULT_TYPES[key_type]
    return _AT_LEAST_THE_DEK


@dataclass(frozen=True, slots=True)
class Need:
    """The characters a value's new text needs: at least ``least``, at most ``most`` (None:
    not known); equal when the length is known exactly."""

    least: int
    most: int | None

    def fits(self, limit: int) -> bool:
        """Whether the text certainly fits a column holding ``limit`` characters."""
        return self.most is not None and self.most <= limit


@dataclass(frozen=True, slots=True)
class SizeModel:
    """The new texts' lengths for one key: who wraps, under which versions, how long."""

    provider: ProviderName
    key_identifier: str
    versions: tuple[int, int]  # the least and the most version a new wrap may carry
    body: WrappedChars

    @property
    def exact(self) -> bool:
        """Whether every new text's length is known to the character (one version, one
        wrapped length)."""
        least, most = self.versions
        return least == most and self.body.least == self.body.most

    def sealed(self, slot: Slot, plaintext_bytes: int, context: Mapping[str, str]) -> Need:
        """The need of a value sealed afresh (``migrate``, ``reencrypt --mode full``)."""
        least, most = self.versions
        return Need(
            self._sealed_chars(slot, plaintext_bytes, context, least, self.body.least),
            None
            if self.body.most is None
            else self._sealed_chars(slot, plaintext_bytes, context, most, self.body.most),
        )

    def rewrapped(self, slot: Slot, envelope: KmsV1Envelope) -> Need:
        """The need of ``envelope`` with its DEK wrapped again (``reencrypt --mode rewrap``):
        everything but the wrapped DEK and the version is kept."""
        least, most = self.versions
        return Need(
            self._rewrapped_chars(slot, envelope, least, self.body.least),
            None
            if self.body.most is None
            else self._rewrapped_chars(slot, envelope, most, self.body.most),
        )

    def _sealed_chars(
        self,
        slot: Slot,
        plaintext_bytes: int,
        context: Mapping[str, str],
        version: int,
        body: int,
    ) -> int:
        stand_in = KmsV1Envelope.sealed(
            provider=self.provider,
            key_identifier=self.key_identifier,
            key_version=version,
            ciphertext=bytes(plaintext_bytes + TAG_BYTES),
            nonce=bytes(NONCE_BYTES),
            encrypted_dek=format_wrapped(self.provider, version, "A" * body),
            context=context,
            encryption_timestamp=utc_timestamp(),
        )
        return len(slot.put(stand_in.to_json()))

    def _rewrapped_chars(self, slot: Slot, envelope: KmsV1Envelope, version: int, body: int) -> int:
        dek = format_wrapped(envelope.provider, version, "A" * body)
        return len(slot.put(envelope.rewrapped(dek, version).to_json()))


def size_model(kms: KeyWrapper, info: KeyInfo | None) -> SizeModel:
    """The model for ``kms``'s key; ``info``: what the KMS said of it (None: not asked, so any
    version may wrap)."""
    if info is None:
        return SizeModel(
            kms.name, kms.key_identifier, (1, _MAX_VERSION), wrapped_chars(kms.name, None)
        )
    latest = info.latest_version
    return SizeModel(
        kms.name, kms.key_identifier, (latest, latest), wrapped_chars(kms.name, info.key_type)
    )


def measure(
    kms: KeyWrapper, context: Mapping[str, str], latest: int | None = None
) -> SizeModel | None:
    """The model for ``kms``'s key from one wrap of a throwaway random DEK (wiped at once; the
    wrap is thrown away), made under ``context`` (a value's own, so that any policy the run
    passes it passes too): its version and its length, exact (:func:`measured`; ``latest``:
    the latest version the KMS reported, where it did). None when the identity may not wrap,
    or the KMS refuses that context (that value's row says so in the run): the length then
    stays unknown.

    Raises:
        KMSError: the wrap failed otherwise.
    """
    dek = primitives.new_dek()
    try:
        (wrapped,) = kms.wrap_many([dek], [context])
    except (PermissionDeniedError, InvalidInputError):
        return None
    finally:
        primitives.wipe(dek)
    return measured(kms, wrapped, latest)


def measured(kms: KeyWrapper, wrapped: WrappedKey, latest: int | None = None) -> SizeModel | None:
    """The model for ``kms``'s key from one wrap it made (a throwaway DEK's): that wrap's
    version and length, exact. None when the wrap is not of the form this provider writes, or
    is not under ``latest`` (a new version not yet in effect everywhere: the run may wrap
    under either, and the other's length is not measured), so nothing is taken from it."""
    form = parse_wrapped(wrapped.ciphertext)
    if form is None or form.provider != kms.name.value or form.version != wrapped.key_version:
        return None
    if latest is not None and form.version != latest:
        return None
    body = WrappedChars(len(form.body), len(form.body))
    return SizeModel(kms.name, kms.key_identifier, (form.version, form.version), body)


def legacy_need(slot: Slot, envelope: KmsV1Envelope, key_id: str) -> Need:
    """The need of ``envelope``'s value written back in the legacy format under the env key
    ``key_id`` (``reencrypt --mode legacy``): the same plaintext, so a ciphertext of the same
    length, and nothing provider-specific."""
    ciphertext = bytes(len(envelope.ciphertext))
    stand_in = LegacyEnvelope(ciphertext=ciphertext, nonce=bytes(NONCE_BYTES), key_id=key_id)
    chars = len(slot.put(stand_in.to_json()))
    return Need(chars, chars)


def unfit(where: str, need: Need, limit: int, *, predicted: bool) -> str:
    """Why a value's new text does not fit (``predicted``: will not, or may not) the column
    ``where`` of ``varchar(limit)``."""
    holds = f"{where} holds at most {limit} (varchar({limit}))"
    widen = "widen the column to text or a longer varchar"
    if not predicted:
        return (
            f"its new value is {need.least} characters and {holds}: {widen}; "
            "the value is left as it was"
        )
    if need.least > limit:
        size = f"{need.least}" if need.most == need.least else f"at least {need.least}"
        return f"its new value will be {size} characters and {holds}: {widen} first"
    size = (
        f"between {need.least} and {need.most} characters"
        if need.most is not None
        else f"at least {need.least} characters (the wrapped key's length is not known: no "
        "wrap with the key's latest version could be made to measure it)"
    )
    return f"its new value will be {size} and {holds}: it may not fit; {widen} first"
