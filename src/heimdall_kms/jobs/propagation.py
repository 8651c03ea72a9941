"""Confirming that a key change is in effect at the KMS, not only accepted by it.

Cloud KMS documents that a new primary version and a disabled version take effect
eventually (usually within a minute, rarely hours); AWS KMS the same for key state, aliases
and tags. Reading the key back (``describe``) shows the change at once, while ``encrypt``
still uses the old primary and ``decrypt`` still accepts a disabled version. So the effect
itself is checked, by the operation it is about:

* after a rotation, **canary wraps** of fresh random DEKs (wiped at once) must land on the
  new version, ``CONFIRMATIONS`` times in a row, since requests may reach parts of the
  service that have and have not seen the change (:func:`confirm_primary`);
* after a retirement, **canaries wrapped under each retired version before it** must be
  refused by unwrap (:func:`retire_canaries`, :func:`confirm_refused`).

Vault Transit and the local keyring apply a change at once: they are not checked
(:func:`applies_at_once`). Each check is retried with backoff for at most
``Propagation.bound_seconds`` (``HMD_KMS_PROPAGATION_SECONDS``), reporting progress; past
the bound it raises :class:`NotInEffectError`: the change was made, it is only not in effect
yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from heimdall_kms import primitives
from heimdall_kms.config import ProviderName
from heimdall_kms.errors import KeyVersionRetiredError, NotInEffectError
from heimdall_kms.providers.base import (
    KeyContext,
    KeyInfo,
    KeyWrapper,
    WrappedKey,
)
from heimdall_kms.providers.wrapper import innermost

__all__ = [
    "Canary",
    "Effect",
    "Propagation",
    "VersionPinnedWrap",
    "applies_at_once",
    "confirm_primary",
    "confirm_refused",
    "retire_canaries",
]

# Providers whose key changes apply at once (Vault Transit's key config, the local keyring).
_IMMEDIATE = {ProviderName.VAULT, ProviderName.LOCAL}
_CANARY_CONTEXT: KeyContext = {}
CONFIRMATIONS = 3


class Effect(StrEnum):
    """How a retirement's effect was established."""

    CONFIRMED = "confirmed"  # a canary under a retired version was refused
    IMMEDIATE = "immediate"  # the KMS applies the change at once (Vault, local)
    # No canary could be wrapped: the provider cannot wrap under a named version, or every
    # version below N was already disabled (a canary needs an enabled version).
    UNCONFIRMED = "unconfirmed"


@runtime_checkable
class VersionPinnedWrap(Protocol):
    """A provider that can wrap with one named (enabled) version, not only the primary."""

    @property
    def pins_versions(self) -> bool:
        """False where this provider's configuration cannot (an AWS native key)."""

    def wrap_at_version(
        self, deks: Sequence[bytearray], contexts: Sequence[KeyContext], version: int
    ) -> list[WrappedKey]: ...


@dataclass(frozen=True, slots=True)
class Propagation:
    """The bounded wait: at most ``bound_seconds``, backoff from ``first_pause`` doubling up to
    ``max_pause``; ``progress`` receives one line per wait."""

    bound_seconds: float = 300.0
    progress: Callable[[str], None] | None = None
    first_pause: float = 0.5
    max_pause: float = 10.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True, slots=True)
class Canary:
    """A DEK wrapped under a version about to be retired (the DEK itself is already wiped)."""

    version: int
    ciphertext: str

    def __repr__(self) -> str:
        return f"Canary(version={self.version})"


def applies_at_once(kms: KeyWrapper) -> bool:
    """Whether the provider puts a key change into effect as it accepts it (Vault, local)."""
    return kms.name in _IMMEDIATE


def confirm_primary(kms: KeyWrapper, version: int, wait: Propagation) -> None:
    """Return once fresh DEKs wrap under ``version`` (or newer); at once where the provider
    :func:`applies_at_once`.

    Raises:
        NotInEffectError: still another version after the bound. KMSError: a wrap failed.
    """
    if applies_at_once(kms):
        return
    start = wait.clock()
    pause = wait.first_pause
    while True:
        confirmed, landed = _lands_on(kms, version)
        if confirmed:
            return
        elapsed = wait.clock() - start
        if elapsed >= wait.bound_seconds:
            raise NotInEffectError(
                f"v{version} of {kms.key_identifier} was created, but the KMS still wraps "
                f"with v{landed} after {wait.bound_seconds:.0f} s: the rotation happened and "
                "is not yet in effect; new values keep using the old version until it is"
            )
        _report(wait, f"waiting for v{version} to become primary ({elapsed:.0f} s)")
        pause = _pause(wait, pause, start)


def _lands_on(kms: KeyWrapper, version: int) -> tuple[bool, int]:
    """Wrap canaries until ``CONFIRMATIONS`` in a row land on ``version`` or newer (True), or
    one lands on an older version (False); with the version the last one landed on."""
    landed = _canary_wrap(kms)
    streak = 0
    while landed >= version:
        streak += 1
        if streak == CONFIRMATIONS:
            return True, landed
        landed = _canary_wrap(kms)
    return False, landed


def retire_canaries(
    kms: KeyWrapper, info: KeyInfo, below_version: int
) -> tuple[Effect, list[Canary]]:
    """Before a retirement: one canary wrapped under each enabled version below N.

    Returns ``Effect.IMMEDIATE`` or ``Effect.UNCONFIRMED`` (and no canaries) when the provider
    needs no check, or no canary can be wrapped (see :class:`Effect`).

    Raises:
        KMSError: a pinned wrap failed.
    """
    if applies_at_once(kms):
        return Effect.IMMEDIATE, []
    pinned = _pinned(kms)
    if pinned is None:
        return Effect.UNCONFIRMED, []
    canaries = [_pinned_canary(pinned, version) for version in _below(info, below_version)]
    return (Effect.CONFIRMED if canaries else Effect.UNCONFIRMED), canaries


def _below(info: KeyInfo, below_version: int) -> list[int]:
    """The versions below N that can still decrypt, oldest first."""
    return sorted(v.version for v in info.versions if v.version < below_version)


def _pinned_canary(pinned: VersionPinnedWrap, version: int) -> Canary:
    """A fresh DEK wrapped under ``version`` (the DEK itself wiped at once)."""
    dek = primitives.new_dek()
    try:
        (wrapped,) = pinned.wrap_at_version([dek], [_CANARY_CONTEXT], version)
    finally:
        primitives.wipe(dek)
    return Canary(version, wrapped.ciphertext)


def _still_decrypting(kms: KeyWrapper, canaries: list[Canary]) -> list[Canary]:
    """The canaries that unwrap yet (their DEKs wiped at once).

    Raises:
        HeimdallKMSError: a canary failed in another way than as retired.
    """
    outcomes = kms.unwrap_many([c.ciphertext for c in canaries], [_CANARY_CONTEXT] * len(canaries))
    still = []
    for canary, outcome in zip(canaries, outcomes, strict=True):
        if isinstance(outcome, bytearray):
            primitives.wipe(outcome)
            still.append(canary)
        elif not isinstance(outcome, KeyVersionRetiredError):
            raise outcome
    return still


def confirm_refused(kms: KeyWrapper, canaries: Sequence[Canary], wait: Propagation) -> None:
    """Return once every canary is refused by unwrap as retired.

    Raises:
        NotInEffectError: a retired version still unwraps after the bound. HeimdallKMSError:
            a canary failed in another way than as retired (the check cannot conclude).
    """
    start = wait.clock()
    pause = wait.first_pause
    pending = list(canaries)
    while pending:
        pending = _still_decrypting(kms, pending)
        if not pending:
            return
        elapsed = wait.clock() - start
        versions = ", ".join(f"v{c.version}" for c in pending)
        if elapsed >= wait.bound_seconds:
            raise NotInEffectError(
                f"the versions of {kms.key_identifier} were disabled, but {versions} still "
                f"decrypt after {wait.bound_seconds:.0f} s: the retirement happened and is not "
                "yet in effect"
            )
        _report(wait, f"waiting for {versions} to stop decrypting ({elapsed:.0f} s)")
        pause = _pause(wait, pause, start)


def _canary_wrap(kms: KeyWrapper) -> int:
    dek = primitives.new_dek()
    try:
        (wrapped,) = kms.wrap_many([dek], [_CANARY_CONTEXT])
    finally:
        primitives.wipe(dek)
    return wrapped.key_version


def _pinned(kms: KeyWrapper) -> VersionPinnedWrap | None:
    # Wrappers (retries, metering) do not pass this through: the provider underneath does it.
    current = innermost(kms)
    if isinstance(current, VersionPinnedWrap) and current.pins_versions:
        return current
    return None


def _report(wait: Propagation, line: str) -> None:
    if wait.progress is not None:
        wait.progress(line)


def _pause(wait: Propagation, pause: float, start: float) -> float:
    left = wait.bound_seconds - (wait.clock() - start)
    wait.sleep(max(0.0, min(pause, left)))
    return min(pause * 2, wait.max_pause)
