"""The batch primitives: DEKs filled in place from the CSPRNG, and sealing many values."""

from __future__ import annotations

import pytest

from heimdall_kms import primitives
from heimdall_kms.errors import IntegrityError


def test_new_deks_are_distinct_full_length_keys() -> None:
    deks = primitives.new_deks(1500)  # more than one readv (1024 buffers at most)
    assert len(deks) == 1500
    assert all(isinstance(d, bytearray) and len(d) == primitives.DEK_BYTES for d in deks)
    assert len({bytes(d) for d in deks}) == 1500


def test_new_deks_fall_back_to_urandom_on_a_short_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(primitives.os, "readv", lambda fd, buffers: 7)
    deks = primitives.new_deks(3)
    assert len({bytes(d) for d in deks}) == 3
    assert not any(d == bytearray(primitives.DEK_BYTES) for d in deks)


def test_seal_each_seals_every_value_under_its_own_key_and_a_fresh_nonce() -> None:
    keys = primitives.new_deks(50)
    plaintexts = [f"value-{i}".encode() for i in range(50)]
    aads = [f"ctx-{i}".encode() for i in range(50)]
    sealed = primitives.seal_each(keys, plaintexts, aads)
    assert len({nonce for _, nonce in sealed}) == 50
    for key, plaintext, aad, (ciphertext, nonce) in zip(
        keys, plaintexts, aads, sealed, strict=True
    ):
        assert len(nonce) == primitives.NONCE_BYTES
        assert primitives.open_(key, nonce, ciphertext, aad) == plaintext
    with pytest.raises(IntegrityError):
        primitives.open_(keys[1], sealed[0][1], sealed[0][0], aads[0])  # another value's key
    with pytest.raises(IntegrityError):
        primitives.open_(keys[0], sealed[0][1], sealed[0][0], aads[1])  # another value's AAD


def test_seal_each_refuses_mismatched_inputs_and_short_keys() -> None:
    with pytest.raises(ValueError, match="one key, plaintext and AAD"):
        primitives.seal_each(primitives.new_deks(2), [b"a"], [b"", b""])
    with pytest.raises(ValueError, match="32 bytes"):
        primitives.seal_each([bytearray(16)], [b"a"], [b""])


class TestOpenEach:
    def test_opens_what_open_opens_and_returns_each_failure_in_its_place(self) -> None:
        keys = primitives.new_deks(4)
        sealed = primitives.seal_each(keys, [b"a", b"b", b"c", b"d"], [b"x", b"y", b"z", b"w"])
        nonces = [nonce for _, nonce in sealed]
        ciphertexts = [ct for ct, _ in sealed]
        ciphertexts[1] = ciphertexts[1][:-1] + bytes([ciphertexts[1][-1] ^ 1])  # a bad tag
        nonces[2] = nonces[2][:11]  # too short a nonce
        aads = [b"x", b"y", b"z", b"not w"]  # the wrong AAD
        opened = primitives.open_each(keys, nonces, ciphertexts, aads)
        assert opened[0] == b"a" == primitives.open_(keys[0], nonces[0], ciphertexts[0], b"x")
        for failed, index in zip(opened[1:], (1, 2, 3), strict=True):
            assert isinstance(failed, IntegrityError)
            with pytest.raises(IntegrityError) as raised:
                primitives.open_(keys[index], nonces[index], ciphertexts[index], aads[index])
            assert str(failed) == str(raised.value)

    def test_refuses_mismatched_inputs_and_short_keys(self) -> None:
        key = primitives.new_deks(1)
        with pytest.raises(ValueError, match="one key, nonce"):
            primitives.open_each(key, [], [b""], [b""])
        with pytest.raises(ValueError, match="32 bytes"):
            primitives.open_each([bytearray(16)], [bytes(12)], [bytes(32)], [b""])


class TestOpenUnder:
    def test_opens_what_open_opens_and_returns_each_failure_in_its_place(self) -> None:
        key = primitives.new_dek()
        sealed = [primitives.seal(key, text, b"") for text in (b"a", b"b", b"c", b"d")]
        nonces = [nonce for _, nonce in sealed]
        ciphertexts = [ct for ct, _ in sealed]
        ciphertexts[1] = ciphertexts[1][:-1] + bytes([ciphertexts[1][-1] ^ 1])  # a bad tag
        nonces[2] = nonces[2][:11]  # too short a nonce
        ciphertexts[3] = ciphertexts[3][:15]  # too short to hold a tag
        opened = primitives.open_under(key, nonces, ciphertexts)
        assert opened[0] == b"a" == primitives.open_(key, nonces[0], ciphertexts[0], b"")
        for failed, index in zip(opened[1:], (1, 2, 3), strict=True):
            assert isinstance(failed, IntegrityError)
            with pytest.raises(IntegrityError) as raised:
                primitives.open_(key, nonces[index], ciphertexts[index], b"")
            assert str(failed) == str(raised.value)

    def test_refuses_mismatched_inputs_and_short_keys(self) -> None:
        with pytest.raises(ValueError, match="one nonce per ciphertext"):
            primitives.open_under(primitives.new_dek(), [], [b""])
        with pytest.raises(ValueError, match="32 bytes"):
            primitives.open_under(bytearray(16), [bytes(12)], [bytes(32)])
