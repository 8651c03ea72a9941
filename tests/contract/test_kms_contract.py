"""The provider contract: every KeyManagementService must pass these, on a real server or a
wire-level fake doing real cryptography (SPEC §10)."""

from __future__ import annotations

import pytest

from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.errors import (
    AuthenticationError,
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
    RefusedError,
)
from heimdall_kms.jobs.propagation import (
    Effect,
    Propagation,
    confirm_primary,
    confirm_refused,
    retire_canaries,
)
from heimdall_kms.jobs.retire import retire
from heimdall_kms.providers import KeyManagementService, WrappedKey
from tests.contract.backends import Backend

CTX = {"table": "t", "field": "ssn", "record": "1"}
# GCP, AWS and Azure put a new primary or a disabled version into effect eventually: the
# contract waits for the effect (as the lifecycle jobs do), it never assumes it is instant.
WAIT = Propagation(bound_seconds=30.0, first_pause=0.2)


def wrap(kms: KeyManagementService, count: int = 1) -> tuple[list[bytearray], list[WrappedKey]]:
    deks = [primitives.new_dek() for _ in range(count)]
    return deks, kms.wrap_many(deks, [{**CTX, "record": str(i)} for i in range(count)])


def contexts(count: int) -> list[dict[str, str]]:
    return [{**CTX, "record": str(i)} for i in range(count)]


def test_batch_wrap_and_unwrap(backend: Backend) -> None:
    kms = backend.make()
    deks, wrapped = wrap(kms, 40)
    assert len(wrapped) == 40
    assert {w.key_version for w in wrapped} == {kms.describe().latest_version}
    assert len({w.ciphertext for w in wrapped}) == 40
    assert kms.unwrap_many([w.ciphertext for w in wrapped], contexts(40)) == deks
    assert kms.name.value == backend.name


def test_damaged_item_fails_alone(backend: Backend) -> None:
    kms = backend.make()
    deks, wrapped = wrap(kms, 3)
    text = wrapped[1].ciphertext
    damaged = text[:-6] + ("AAAAAA" if not text.endswith("AAAAAA") else "BBBBBB")
    outcomes = kms.unwrap_many([wrapped[0].ciphertext, damaged, wrapped[2].ciphertext], contexts(3))
    assert outcomes[0] == deks[0]
    assert outcomes[2] == deks[2]
    assert isinstance(outcomes[1], IntegrityError | KeyNotFoundError)


def test_context(backend: Backend) -> None:
    kms = backend.make()
    deks, wrapped = wrap(kms, 1)
    (outcome,) = kms.unwrap_many([wrapped[0].ciphertext], [{**CTX, "record": "other"}])
    if backend.binds_context:
        assert isinstance(outcome, IntegrityError)
    else:
        assert outcome == deks[0]  # bound in the value's AES-GCM AAD instead


def test_rotate_describe_rewrap_retire(backend: Backend) -> None:
    kms = backend.make()
    first = kms.describe()
    assert first.min_decryption_version <= first.latest_version
    assert first.latest.created_at is not None
    deks, old = wrap(kms, 5)
    rotated = kms.rotate()
    assert rotated.latest_version > first.latest_version
    confirm_primary(kms, rotated.latest_version, WAIT)
    assert [v.version for v in rotated.versions][-1] == rotated.latest_version
    _, new = wrap(kms, 1)
    assert new[0].key_version == rotated.latest_version
    assert kms.unwrap_many([w.ciphertext for w in old], contexts(5)) == deks
    rewrapped = kms.rewrap_many([w.ciphertext for w in old], contexts(5))
    assert all(not isinstance(r, HeimdallKMSError) for r in rewrapped)
    fresh = [r for r in rewrapped if isinstance(r, WrappedKey)]
    assert {r.key_version for r in fresh} == {rotated.latest_version}
    assert kms.unwrap_many([r.ciphertext for r in fresh], contexts(5)) == deks
    if not getattr(backend, "retires", True):
        with pytest.raises(RefusedError, match="cannot"):
            kms.retire(rotated.latest_version)
        assert kms.unwrap_many([old[0].ciphertext], [contexts(1)[0]]) == [deks[0]]
        kms.health()
        return
    _, canaries = retire_canaries(kms, kms.describe(), rotated.latest_version)
    retired = kms.retire(rotated.latest_version)
    assert retired.min_decryption_version == rotated.latest_version
    confirm_refused(kms, canaries, WAIT)
    assert all(v.version >= rotated.latest_version for v in retired.versions)
    # Both were wrapped under record 0's context; a context-binding KMS needs the same one.
    outcomes = kms.unwrap_many([old[0].ciphertext, fresh[0].ciphertext], [contexts(1)[0]] * 2)
    assert isinstance(outcomes[0], KeyVersionRetiredError)
    assert outcomes[1] == deks[0]
    with pytest.raises(InvalidInputError):
        kms.retire(rotated.latest_version + 5)
    kms.health()


def test_retirement_effect_is_confirmed_or_immediate(backend: Backend) -> None:
    """Every provider that can retire either applies it at once (Vault, local) or lets a
    canary be wrapped under the old version first, so that the refusal is seen, not assumed."""
    if not getattr(backend, "retires", True):
        pytest.skip(f"{backend.name}: this KMS cannot retire a version")
    kms = backend.make()
    rotated = kms.rotate()
    confirm_primary(kms, rotated.latest_version, WAIT)
    result = retire(
        kms,
        [],
        MemoryAuditSink(),
        below_version=rotated.latest_version,
        actor="contract",
        force=True,
        propagation=WAIT,
    )
    assert result.effect in (Effect.CONFIRMED, Effect.IMMEDIATE)
    assert result.info is not None
    assert result.info.min_decryption_version == rotated.latest_version


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("authentication", AuthenticationError),
        ("permission", PermissionDeniedError),
        ("not_found", KeyNotFoundError),
        ("unavailable", KMSUnavailableError),
        ("throttled", RateLimitedError),
    ],
)
def test_error_translation(backend: Backend, how: str, error: type[KMSError]) -> None:
    call = backend.failing(how)
    if call is None:
        pytest.skip(f"{backend.name}: no {how} failure exists for this provider")
    with pytest.raises(error) as caught:
        call()
    assert "\n" not in str(caught.value)
    assert caught.value.__cause__ is None or isinstance(caught.value.__cause__, HeimdallKMSError)
