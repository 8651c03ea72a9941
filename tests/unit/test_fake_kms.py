"""heimdall_kms.testing.FakeKMS beyond the provider contract (which it also runs, in
tests/contract as the ``fake`` backend): what makes it a usable fake for users and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import (
    IntegrityError,
    InvalidInputError,
    KeyNotFoundError,
    KMSUnavailableError,
)
from heimdall_kms.kinds import ProviderName
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.base import Batching, HashKey, KeyedHashing, batching_of
from heimdall_kms.service import Crypto
from heimdall_kms.testing import FakeKMS

CTX = {"field": "ssn", "record": "r1"}


def wrap_one(kms: FakeKMS) -> tuple[bytearray, str]:
    dek = primitives.new_dek()
    (wrapped,) = kms.wrap_many([dek], [CTX])
    return dek, wrapped.ciphertext


class TestFakeKMSAsAProvider:
    def test_it_is_a_key_management_service_with_keyed_hashing(self) -> None:
        """It satisfies the contract's protocols, so code typed against them accepts it."""
        kms: KeyManagementService = FakeKMS()
        assert isinstance(kms, KeyedHashing)
        assert kms.name is ProviderName.LOCAL
        assert kms.key_identifier == "heimdall-pii"

    def test_the_facade_runs_on_it(self) -> None:
        """Crypto encrypts and decrypts through it, writing the fake's name into envelopes."""
        kms = FakeKMS()
        crypto = Crypto(Settings(provider=ProviderName.LOCAL), kms=kms, audit=MemoryAuditSink())
        envelope = crypto.encrypt("123-45-6789", context=CTX)
        assert envelope.to_dict()["provider"] == "local"
        assert crypto.decrypt(envelope, actor="t", reason="test", context=CTX) == "123-45-6789"

    def test_it_says_how_to_batch(self) -> None:
        """The batching it is built with is what callers read."""
        kms = FakeKMS(batching=Batching(size=7, in_flight=3))
        assert batching_of(kms) == Batching(size=7, in_flight=3)

    def test_it_writes_the_name_it_is_given(self) -> None:
        """A fake can stand for another provider's name (the wrapped form follows)."""
        kms = FakeKMS(name=ProviderName.VAULT)
        _, wrapped = wrap_one(kms)
        assert wrapped.startswith("vault:v1:")
        assert kms.describe().provider is ProviderName.VAULT


class TestFakeKMSKeys:
    def test_each_fake_has_its_own_master_key(self) -> None:
        """A DEK wrapped by one fake does not unwrap in another of the same name."""
        _, wrapped = wrap_one(FakeKMS())
        (outcome,) = FakeKMS().unwrap_many([wrapped], [CTX])
        assert isinstance(outcome, IntegrityError)

    def test_a_wrapped_key_is_bound_to_its_version(self) -> None:
        """Relabelling a v1 wrapped key as v2 fails authentication instead of decrypting."""
        kms = FakeKMS()
        _, wrapped = wrap_one(kms)
        kms.rotate()
        (outcome,) = kms.unwrap_many([wrapped.replace(":v1:", ":v2:", 1)], [CTX])
        assert isinstance(outcome, IntegrityError)

    def test_an_unknown_version_and_a_foreign_form_fail_in_place(self) -> None:
        """Per-item errors, not exceptions: a version never made, another provider's form."""
        kms = FakeKMS()
        dek, wrapped = wrap_one(kms)
        outcomes = kms.unwrap_many(
            [wrapped.replace(":v1:", ":v9:", 1), "vault:v1:AAAA", wrapped], [CTX] * 3
        )
        assert isinstance(outcomes[0], KeyNotFoundError)
        assert isinstance(outcomes[1], IntegrityError)
        assert outcomes[2] == dek

    def test_versions_carry_the_clock_of_their_creation(self) -> None:
        """describe() reports each version's creation time from the given clock."""
        times = iter([datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)])
        kms = FakeKMS(clock=lambda: next(times))
        info = kms.rotate()
        assert [v.created_at for v in info.versions] == [
            datetime(2026, 1, 1, tzinfo=UTC),
            datetime(2026, 2, 1, tzinfo=UTC),
        ]

    def test_retire_never_lowers_the_minimum_and_checks_its_range(self) -> None:
        """Retiring below 3 then below 2 keeps 3; 0 and past the latest are refused."""
        kms = FakeKMS()
        kms.rotate()
        kms.rotate()
        kms.retire(3)
        assert kms.retire(2).min_decryption_version == 3
        for bad in (0, 4):
            with pytest.raises(InvalidInputError):
                kms.retire(bad)


class TestFakeKMSKeyedHashing:
    def test_hashes_are_stable_keyed_and_apart_from_the_wrap_key(self) -> None:
        """Same value, same tag; another hashing key or another fake, another tag."""
        kms = FakeKMS()
        key = HashKey("heimdall-pii-hmac", 1)
        first, again = kms.hmac_many([b"123-45-6789", b"123-45-6789"], key)
        assert first == again and first.startswith("local:v1:")
        (other_key,) = kms.hmac_many([b"123-45-6789"], HashKey("other", 1))
        (other_fake,) = FakeKMS().hmac_many([b"123-45-6789"], key)
        assert len({first, other_key, other_fake}) == 3

    def test_an_unknown_hashing_version_is_refused(self) -> None:
        """Only version 1 of a hashing key exists."""
        with pytest.raises(KeyNotFoundError):
            FakeKMS().hmac_many([b"x"], HashKey("heimdall-pii-hmac", 2))


class TestFakeKMSCounting:
    def test_each_batch_is_one_call(self) -> None:
        """calls counts requests, not values: what a benchmark or a batching test reads."""
        kms = FakeKMS()
        deks = primitives.new_deks(5)
        wrapped = [w.ciphertext for w in kms.wrap_many(deks, [CTX] * 5)]
        kms.unwrap_many(wrapped, [CTX] * 5)
        kms.rewrap_many(wrapped, [CTX] * 5)
        kms.hmac_many([b"a", b"b"], HashKey("h", 1))
        assert (kms.calls.wrap, kms.calls.unwrap, kms.calls.rewrap, kms.calls.hmac) == (1, 1, 1, 1)

    def test_concurrent_callers_are_all_counted_and_answered(self) -> None:
        """Sealing runs KMS calls on worker threads; the fake keeps its state under a lock."""
        kms = FakeKMS()
        failures: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(20):
                    dek, wrapped = wrap_one(kms)
                    assert kms.unwrap_many([wrapped], [CTX]) == [dek]
            except BaseException as exc:  # reported below, on the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert (kms.calls.wrap, kms.calls.unwrap) == (80, 80)


class TestFakeKMSClose:
    def test_close_refuses_every_later_call(self) -> None:
        """After close() the keys are wiped, so nothing may wrap with a zeroed key."""
        kms = FakeKMS()
        _, wrapped = wrap_one(kms)
        kms.close()
        with pytest.raises(KMSUnavailableError):
            kms.wrap_many([primitives.new_dek()], [CTX])
        with pytest.raises(KMSUnavailableError):
            kms.unwrap_many([wrapped], [CTX])
        with pytest.raises(KMSUnavailableError):
            kms.rotate()

    def test_its_repr_shows_no_key_material(self) -> None:
        """repr names the key and the version count, never a master key."""
        kms = FakeKMS("k")
        assert repr(kms) == "FakeKMS('k', versions=1)"


class TestTestingPackage:
    def test_importing_it_for_the_fake_loads_no_kms_sdk(self) -> None:
        """``from heimdall_kms.testing import FakeKMS`` needs neither hvac nor boto3."""
        code = (
            "import sys\nfrom heimdall_kms.testing import FakeKMS\nFakeKMS().health()\n"
            "sdks = ('hvac', 'boto3', 'botocore', 'requests')\n"
            "print(','.join(m for m in sdks if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == ""

    def test_an_unknown_name_is_an_attribute_error(self) -> None:
        """The lazy namespace names only what it has."""
        import heimdall_kms.testing as testing

        with pytest.raises(AttributeError):
            _ = testing.NoSuchThing
