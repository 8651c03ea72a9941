"""Sealing values under fresh DEKs that the KMS wraps, batch by batch.

The values are split into the provider's batches (its ``Batching`` hint). Each batch's DEKs are
made when its wrap call is queued; up to ``in_flight`` calls run while the batch before is
sealed, and a batch's DEKs are wiped as soon as it is sealed, so no DEK outlives its batch,
however long the input.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence

from heimdall_kms import primitives
from heimdall_kms.context_json import CheckedContext
from heimdall_kms.envelope import Envelope, KmsV1Envelope, kms_v1_aad
from heimdall_kms.envelope.kms_v1 import utc_timestamp
from heimdall_kms.errors import KMSError
from heimdall_kms.kinds import ProviderName
from heimdall_kms.overlap import in_order
from heimdall_kms.providers import KeyWrapper
from heimdall_kms.providers.base import WrappedKey, batching_of

__all__ = ["seal_batches"]


def seal_batches(kms: KeyWrapper, values: Sequence[tuple[bytes, CheckedContext]]) -> list[Envelope]:
    """``kms_v1`` envelopes for ``(plaintext, checked context)`` pairs, in order.

    Raises:
        KMSError: a wrap call failed, or answered with the wrong number of keys.
    """
    batching = batching_of(kms)
    size = max(1, batching.size)
    issued: list[list[bytearray]] = []

    def wrap_jobs() -> Iterator[Callable[[], list[WrappedKey]]]:
        for start in range(0, len(values), size):
            deks = primitives.new_deks(min(size, len(values) - start))
            issued.append(deks)
            contexts = [ctx for _, ctx in values[start : start + size]]
            yield functools.partial(kms.wrap_many, deks, contexts)

    seal = functools.partial(
        _sealed, provider=kms.name, key_identifier=kms.key_identifier, timestamp=utc_timestamp()
    )
    envelopes: list[Envelope] = []
    sealed = 0  # batches whose DEKs are wiped already
    try:
        with contextlib.closing(in_order(wrap_jobs(), batching.in_flight)) as results:
            for batch, wrapped in enumerate(results):
                deks = issued[batch]
                if len(wrapped) != len(deks):
                    raise KMSError("the KMS returned a different number of wrapped keys")
                envelopes += seal(deks, values[batch * size : batch * size + len(deks)], wrapped)
                sealed = batch + 1
        return envelopes
    finally:
        for deks in issued[sealed:]:
            primitives.wipe_all(deks)


def _sealed(
    deks: list[bytearray],
    chunk: Sequence[tuple[bytes, CheckedContext]],
    wrapped: Sequence[WrappedKey],
    *,
    provider: ProviderName,
    key_identifier: str,
    timestamp: str,
) -> list[KmsV1Envelope]:
    """One batch's envelopes: each value sealed under its DEK, which is wiped right after."""
    contexts = [ctx for _, ctx in chunk]
    sealed = primitives.seal_each(
        deks, [plaintext for plaintext, _ in chunk], [kms_v1_aad(ctx) for ctx in contexts]
    )
    primitives.wipe_all(deks)
    return KmsV1Envelope.sealed_batch(
        provider=provider,
        key_identifier=key_identifier,
        key_versions=[key.key_version for key in wrapped],
        sealed=sealed,
        encrypted_deks=[key.ciphertext for key in wrapped],
        contexts=contexts,
        encryption_timestamp=timestamp,
    )
