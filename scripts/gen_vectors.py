#!/usr/bin/env python3
"""Regenerate the envelope test vectors in ``tests/vectors/`` (see its README.md).

* ``kms_v1.json`` is sealed with the package's own AES-GCM core through the underscore hook
  for fixed nonces (``heimdall_kms.primitives._seal_with_nonce``) and the canonical associated
  data (``heimdall_kms.envelope.kms_v1_aad``). The test re-opens every good vector with
  pycryptodome as well.
* ``legacy.json`` is sealed with pycryptodome only, an AES-GCM implementation independent of
  the ``cryptography`` package the product uses, exactly as SPEC section 4.1 describes the
  existing engine's output. Nothing from ``heimdall_kms`` is used for it.

Every key here is a fixed, obviously test-only value (ASCII ``TEST-ONLY ...`` padded with
dots to 32 bytes) and every nonce is fixed and distinct under its key, so the output is
byte-for-byte reproducible. Never use these keys or the fixed-nonce hook for real data.

Usage::

    python scripts/gen_vectors.py            # rewrite tests/vectors/*.json
    python scripts/gen_vectors.py --check    # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES

from heimdall_kms.envelope import kms_v1_aad
from heimdall_kms.primitives import _seal_with_nonce

ROOT = Path(__file__).resolve().parents[1]
VECTOR_DIR = ROOT / "tests" / "vectors"

Vector = dict[str, Any]


def make_test_key(label: str) -> bytes:
    """A 32-byte key that says what it is when read as hex or ASCII."""
    raw = f"TEST-ONLY {label}".encode("ascii")
    if len(raw) > 32:
        raise ValueError(f"label too long for a 32-byte key: {label!r}")
    return raw.ljust(32, b".")


def _nonce(label: str) -> bytes:
    raw = label.encode("ascii")
    if len(raw) > 12:
        raise ValueError(f"nonce label longer than 12 bytes: {label!r}")
    return raw.ljust(12, b".")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _flip(text: str, index: int) -> str:
    """Base64 of the decoded bytes with the lowest bit of byte ``index`` flipped."""
    data = bytearray(_unb64(text))
    data[index] ^= 0x01
    return _b64(bytes(data))


def _cut(text: str, length: int) -> str:
    """Base64 of the first ``length`` decoded bytes."""
    return _b64(_unb64(text)[:length])


def _compact(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# -- kms_v1 ------------------------------------------------------------------------------------

KMS_DEK = make_test_key("kms_v1 DEK #1")
KMS_WRONG_DEK = make_test_key("kms_v1 DEK #2")
# The local provider's master key versions. They only make ``encrypted_dek`` a real wrapped
# key in the local provider's form; the vector test opens values with ``dek_hex`` directly.
LOCAL_KEY_NAME = "heimdall-pii"
LOCAL_MEKS = {
    1: make_test_key("local MEK v1"),
    2: make_test_key("local MEK v2"),
}
TIMESTAMP = "2024-06-01T12:00:00.000000Z"


def local_wrap(dek: bytes, version: int) -> str:
    """``encrypted_dek`` as heimdall_kms.providers.local writes it, with a fixed nonce.

    Form: ``local:v<N>:`` + base64(nonce || AES-256-GCM(MEK vN, DEK)), associated data
    ``heimdall-local-dek|<key name>|v<N>``.
    """
    label = "dek1" if dek == KMS_DEK else "dek2"
    aad = f"heimdall-local-dek|{LOCAL_KEY_NAME}|v{version}".encode()
    sealed, nonce = _seal_with_nonce(LOCAL_MEKS[version], dek, aad, _nonce(f"wrap-{label}"))
    return f"local:v{version}:{_b64(nonce + sealed)}"


def kms_envelope(
    plaintext: bytes,
    context: dict[str, str],
    nonce_label: str,
    *,
    dek: bytes = KMS_DEK,
    key_version: int = 1,
) -> dict[str, Any]:
    """A kms_v1 envelope in the key order of KmsV1Envelope.to_dict."""
    sealed, nonce = _seal_with_nonce(dek, plaintext, kms_v1_aad(context), _nonce(nonce_label))
    return {
        "encryption_version": "kms_v1",
        "provider": "local",
        "key_identifier": LOCAL_KEY_NAME,
        "key_version": key_version,
        "key_id": f"local:{LOCAL_KEY_NAME}:v{key_version}",
        "algorithm": "AES-256-GCM",
        "ciphertext": _b64(sealed),
        "nonce": _b64(nonce),
        "encrypted_dek": local_wrap(dek, key_version),
        "context": dict(context),
        "encryption_timestamp": TIMESTAMP,
    }


def _kms_vector(
    comment: str,
    source: dict[str, Any] | str,
    *,
    stated: dict[str, str] | None = None,
    plaintext: str | None = None,
    error: str | None = None,
    schema_valid: bool | None = None,
    dek: bytes = KMS_DEK,
) -> Vector:
    vector: Vector = {"comment": comment, "dek_hex": dek.hex()}
    vector["envelope" if isinstance(source, dict) else "text"] = source
    vector["context"] = stated
    if plaintext is not None and isinstance(source, dict):
        vector["aad"] = kms_v1_aad(source["context"]).decode("ascii")
    return _with_outcome(vector, comment, schema_valid, plaintext, error)


def _edit(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**envelope, **changes}


def _drop(envelope: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in envelope.items() if name != key}


SSN = "123-45-6789"
SSN_CONTEXT = {"field": "ssn", "record": "r1"}
UNICODE_TEXT = "Zoë Ångström, 山田太郎, Ελένη, 🚀"
NON_UTF8 = b"\xff\xfe not UTF-8 \xc3"
WIDE_CONTEXT = {"table": "users", "field": "email", "record": "1001", "tenant": "acme"}


def kms_v1_good() -> list[Vector]:
    base = kms_envelope(SSN.encode(), SSN_CONTEXT, "kms-v1-01")
    max_context = {f"k{i:02d}": f"v{i:02d}" for i in range(32)}
    return [
        _kms_vector(
            "good: ASCII plaintext, reader states the same context",
            base,
            stated=SSN_CONTEXT,
            plaintext=SSN,
            schema_valid=True,
        ),
        _kms_vector(
            "good: the same envelope as compact JSON text, as stored in a column",
            _compact(base),
            plaintext=SSN,
            schema_valid=True,
        ),
        _kms_vector(
            "good: Unicode plaintext and a non-ASCII context value (escaped in the AAD)",
            kms_envelope(UNICODE_TEXT.encode(), {"field": "name", "record": "ü-42"}, "kms-v1-02"),
            plaintext=UNICODE_TEXT,
            schema_valid=True,
        ),
        _kms_vector(
            "good: empty plaintext (ciphertext is the 16-byte tag alone)",
            kms_envelope(b"", {"field": "middle_name", "record": "r7"}, "kms-v1-03"),
            stated={"field": "middle_name"},
            plaintext="",
            schema_valid=True,
        ),
        _kms_vector(
            "good: context with several keys, reader states a subset of them",
            kms_envelope(b"ops@example.com", WIDE_CONTEXT, "kms-v1-04"),
            stated={"table": "users", "field": "email", "record": "1001"},
            plaintext="ops@example.com",
            schema_valid=True,
        ),
        _kms_vector(
            "good: empty context, reader states nothing",
            kms_envelope(b"bound to nothing", {}, "kms-v1-05"),
            plaintext="bound to nothing",
            schema_valid=True,
        ),
        _kms_vector(
            "good: context with the maximum of 32 entries",
            kms_envelope(b"many keys", max_context, "kms-v1-06"),
            plaintext="many keys",
            schema_valid=True,
        ),
        _kms_vector(
            "good: rewrapped to key_version 2 (new encrypted_dek, ciphertext and nonce untouched)",
            _edit(
                base,
                key_version=2,
                key_id=f"local:{LOCAL_KEY_NAME}:v2",
                encrypted_dek=local_wrap(KMS_DEK, 2),
            ),
            stated=SSN_CONTEXT,
            plaintext=SSN,
            schema_valid=True,
        ),
        _kms_vector(
            "compat: key_id absent (written before key_id existed); read, and written with it",
            _drop(base, "key_id"),
            plaintext=SSN,
            schema_valid=True,
        ),
        _kms_vector(
            "good: unknown extra top-level key is kept (forward compatible, not authenticated)",
            {**base, "x_origin": "etl-batch-7"},
            plaintext=SSN,
            schema_valid=True,
        ),
    ]


def kms_v1_integrity() -> list[Vector]:
    base = kms_envelope(SSN.encode(), SSN_CONTEXT, "kms-v1-01")
    ciphertext = base["ciphertext"]
    size = len(_unb64(ciphertext))
    moved = {"field": "ssn", "record": "r2"}

    def bad(comment: str, source: dict[str, Any], valid: bool, **extra: Any) -> Vector:
        return _kms_vector(comment, source, error="IntegrityError", schema_valid=valid, **extra)

    return [
        bad(
            "tampered ciphertext: a bit of the first byte flipped",
            _edit(base, ciphertext=_flip(ciphertext, 0)),
            True,
        ),
        bad(
            "tampered nonce: a bit of the last byte flipped",
            _edit(base, nonce=_flip(base["nonce"], 11)),
            True,
        ),
        bad(
            "tampered tag: a bit of the last byte flipped",
            _edit(base, ciphertext=_flip(ciphertext, size - 1)),
            True,
        ),
        bad(
            "context moved to another record: envelope context edited r1 -> r2, reader states r2",
            _edit(base, context=moved),
            True,
            stated=moved,
        ),
        bad(
            "envelope context edited: an entry added, reader states nothing",
            _edit(base, context={**SSN_CONTEXT, "tenant": "acme"}),
            True,
        ),
        bad(
            "envelope context edited: an entry removed, reader states nothing",
            _edit(base, context={"field": "ssn"}),
            True,
        ),
        bad(
            "value copied unchanged to record r2: the reader states record r2",
            base,
            True,
            stated=moved,
        ),
        bad(
            "reader states a different field (email) for an ssn value",
            base,
            True,
            stated={"field": "email"},
        ),
        bad(
            "reader states a key the envelope's context lacks",
            base,
            True,
            stated={"tenant": "acme"},
        ),
        bad(
            "ciphertext truncated by one byte (tag cut short)",
            _edit(base, ciphertext=_cut(ciphertext, size - 1)),
            True,
        ),
        bad(
            "ciphertext truncated to 10 bytes, shorter than the tag",
            _edit(base, ciphertext=_cut(ciphertext, 10)),
            False,
        ),
        bad("ciphertext empty", _edit(base, ciphertext=""), False),
        bad("nonce of 8 bytes instead of 12", _edit(base, nonce=_cut(base["nonce"], 8)), False),
        bad(
            "wrong data key: dek_hex (and encrypted_dek) hold another DEK",
            _edit(base, encrypted_dek=local_wrap(KMS_WRONG_DEK, 1)),
            True,
            dek=KMS_WRONG_DEK,
        ),
    ]


def kms_v1_malformed() -> list[Vector]:
    base = kms_envelope(SSN.encode(), SSN_CONTEXT, "kms-v1-01")
    text = _compact(base)
    context_33 = {f"k{i:02d}": "v" for i in range(33)}

    def bad(comment: str, source: dict[str, Any] | str, valid: bool | None) -> Vector:
        return _kms_vector(comment, source, error="MalformedEnvelopeError", schema_valid=valid)

    return [
        {
            **_kms_vector(
                "non-UTF-8 plaintext under a valid tag",
                kms_envelope(NON_UTF8, {"field": "blob"}, "kms-v1-07"),
                error="MalformedEnvelopeError",
                schema_valid=True,
            ),
            "sealed_plaintext_hex": NON_UTF8.hex(),
        },
        bad("truncated JSON text", text[: len(text) // 2], None),
        bad("empty text", "", None),
        bad("duplicate JSON key (key_version twice)", text[:-1] + ',"key_version":2}', None),
        bad("not an object: a JSON array holding the envelope", f"[{text}]", False),
        bad("not an object: a JSON string", '"kms_v1"', False),
        bad("not an object: JSON null", "null", False),
        bad("unknown encryption_version kms_v2", _edit(base, encryption_version="kms_v2"), False),
        bad(
            "encryption_version missing (not legacy either)",
            _drop(base, "encryption_version"),
            False,
        ),
        bad("wrong algorithm AES-128-GCM", _edit(base, algorithm="AES-128-GCM"), False),
        bad("wrong algorithm ChaCha20-Poly1305", _edit(base, algorithm="ChaCha20-Poly1305"), False),
        bad("algorithm missing", _drop(base, "algorithm"), False),
        bad("unknown provider", _edit(base, provider="hsm"), False),
        # key_id is not authenticated; the reader checks it against the fields it names (the
        # schema cannot compare fields, so it has no verdict here).
        bad(
            "key_id naming another key_version",
            _edit(base, key_id=f"local:{LOCAL_KEY_NAME}:v2"),
            None,
        ),
        bad("key_id naming another key", _edit(base, key_id="vault:other:v1"), None),
        bad("key_id not a string", _edit(base, key_id=1), False),
        # key_version is not authenticated either; the reader checks it against the version
        # the wrapped DEK carries (<provider>:v<N>:), which the schema cannot compare.
        bad(
            "key_version 2 over a v1 wrapped DEK (key_id edited to match)",
            _edit(base, key_version=2, key_id=f"local:{LOCAL_KEY_NAME}:v2"),
            None,
        ),
        bad("key_version 0", _edit(base, key_version=0), False),
        bad("key_version -1", _edit(base, key_version=-1), False),
        bad("key_version a string", _edit(base, key_version="1"), False),
        bad("key_version a boolean", _edit(base, key_version=True), False),
        bad(
            "bad base64: ciphertext contains '!'",
            _edit(base, ciphertext="!" + base["ciphertext"][1:]),
            False,
        ),
        bad(
            "bad base64: nonce in the URL-safe alphabet",
            _edit(base, nonce="a-b_" + base["nonce"][4:]),
            False,
        ),
        bad(
            "bad base64: ciphertext's last character removed",
            _edit(base, ciphertext=base["ciphertext"][:-1]),
            False,
        ),
        bad(
            "bad base64: trailing newline after the nonce",
            _edit(base, nonce=base["nonce"] + "\n"),
            False,
        ),
        bad("ciphertext a number, not a string", _edit(base, ciphertext=12345), False),
        bad("encrypted_dek missing", _drop(base, "encrypted_dek"), False),
        bad("context missing", _drop(base, "context"), False),
        bad(
            "context a list of pairs, not an object", _edit(base, context=[["field", "ssn"]]), False
        ),
        bad(
            "context value not a string", _edit(base, context={"field": "ssn", "record": 1}), False
        ),
        bad("context key empty", _edit(base, context={"": "ssn"}), False),
        bad("context with 33 entries (more than 32)", _edit(base, context=context_33), False),
        bad(
            "encryption_timestamp not a time", _edit(base, encryption_timestamp="yesterday"), False
        ),
    ]


def kms_v1_vectors() -> list[Vector]:
    return [*kms_v1_good(), *kms_v1_integrity(), *kms_v1_malformed()]


# -- legacy ------------------------------------------------------------------------------------

LEGACY_PRIMARY_ID = "default-key-v1"
LEGACY_OLD_ID = "old-key-2023"
LEGACY_PRIMARY = make_test_key("legacy default-key-v1")
LEGACY_OLD = make_test_key("legacy old-key-2023")
LEGACY_WRONG = make_test_key("legacy WRONG key")
PRIMARY_ONLY = {LEGACY_PRIMARY_ID: LEGACY_PRIMARY}
KEYRING = {LEGACY_PRIMARY_ID: LEGACY_PRIMARY, LEGACY_OLD_ID: LEGACY_OLD}


def legacy_seal(key: bytes, plaintext: bytes, nonce: bytes) -> tuple[str, str]:
    """SPEC 4.1 with pycryptodome: AES-256-GCM, 16-byte tag appended, empty AAD, base64."""
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=16)
    body, tag = cipher.encrypt_and_digest(plaintext)
    return _b64(body + tag), _b64(nonce)


def legacy_envelope(
    plaintext: bytes,
    nonce_label: str,
    *,
    key: bytes = LEGACY_PRIMARY,
    key_id: str = LEGACY_PRIMARY_ID,
) -> dict[str, Any]:
    """A legacy envelope in the key order the existing engine writes."""
    ciphertext, nonce = legacy_seal(key, plaintext, _nonce(nonce_label))
    return {"ciphertext": ciphertext, "nonce": nonce, "key_id": key_id, "algorithm": "AES-256-GCM"}


def _legacy_vector(
    comment: str,
    source: dict[str, Any] | str,
    *,
    keys: dict[str, bytes] = PRIMARY_ONLY,
    stated: dict[str, str] | None = None,
    plaintext: str | None = None,
    error: str | None = None,
    schema_valid: bool | None = None,
) -> Vector:
    vector: Vector = {"comment": comment, "keys": {kid: key.hex() for kid, key in keys.items()}}
    vector["envelope" if isinstance(source, dict) else "text"] = source
    vector["context"] = stated
    return _with_outcome(vector, comment, schema_valid, plaintext, error)


def legacy_good() -> list[Vector]:
    base = legacy_envelope(SSN.encode(), "legacy-01")
    old = legacy_envelope(b"555-0100", "legacy-02", key=LEGACY_OLD, key_id=LEGACY_OLD_ID)
    return [
        _legacy_vector("good: primary key default-key-v1", base, plaintext=SSN, schema_valid=True),
        _legacy_vector(
            "good: older key id from a multi-key keyring (HMD_PII_LEGACY_KEYS)",
            old,
            keys=KEYRING,
            plaintext="555-0100",
            schema_valid=True,
        ),
        _legacy_vector(
            "good: primary key of a multi-key keyring",
            base,
            keys=KEYRING,
            plaintext=SSN,
            schema_valid=True,
        ),
        _legacy_vector(
            "good: Unicode plaintext",
            legacy_envelope(UNICODE_TEXT.encode(), "legacy-03"),
            plaintext=UNICODE_TEXT,
            schema_valid=True,
        ),
        _legacy_vector(
            "good: empty plaintext (ciphertext is the 16-byte tag alone)",
            legacy_envelope(b"", "legacy-04"),
            plaintext="",
            schema_valid=True,
        ),
        _legacy_vector(
            "good: stored text with json.dumps default spacing",
            json.dumps(base),
            plaintext=SSN,
            schema_valid=True,
        ),
        _legacy_vector(
            "good: legacy binds no context, so a reader-stated context is not checked",
            base,
            stated={"field": "email", "record": "r9"},
            plaintext=SSN,
            schema_valid=True,
        ),
        # The engine deserialises into four required strings and ignores everything else, so
        # these decrypt there and must here (SPEC 4.1). The schema describes what the engine
        # writes, so it still says no.
        _legacy_vector(
            "lenient: algorithm label AES-128-GCM is not enforced on read (always AES-256-GCM)",
            _edit(base, algorithm="AES-128-GCM"),
            plaintext=SSN,
            schema_valid=False,
        ),
        _legacy_vector(
            "lenient: an extra unknown field is ignored",
            {**base, "created_at": "2023-01-01T00:00:00Z"},
            plaintext=SSN,
            schema_valid=False,
        ),
        _legacy_vector(
            "lenient: encryption_version null is read as absent",
            {**base, "encryption_version": None},
            plaintext=SSN,
            schema_valid=False,
        ),
    ]


def legacy_bad() -> list[Vector]:
    base = legacy_envelope(SSN.encode(), "legacy-01")
    ciphertext = base["ciphertext"]
    size = len(_unb64(ciphertext))
    non_utf8 = legacy_envelope(NON_UTF8, "legacy-05")
    long_nonce = dict(base)
    long_nonce["ciphertext"], long_nonce["nonce"] = legacy_seal(
        LEGACY_PRIMARY, SSN.encode(), _nonce("legacy-06") + b"16by"
    )

    def bad(
        comment: str, source: dict[str, Any] | str, error: str, valid: bool | None, **extra: Any
    ) -> Vector:
        return _legacy_vector(comment, source, error=error, schema_valid=valid, **extra)

    integrity, malformed = "IntegrityError", "MalformedEnvelopeError"
    return [
        bad(
            "unknown key_id",
            _edit(base, key_id="key-nobody-has"),
            "KeyNotFoundError",
            True,
            keys=KEYRING,
        ),
        bad(
            "tampered ciphertext: a bit of the first byte flipped",
            _edit(base, ciphertext=_flip(ciphertext, 0)),
            integrity,
            True,
        ),
        bad(
            "tampered tag: a bit of the last byte flipped",
            _edit(base, ciphertext=_flip(ciphertext, size - 1)),
            integrity,
            True,
        ),
        bad(
            "tampered nonce: a bit of the first byte flipped",
            _edit(base, nonce=_flip(base["nonce"], 0)),
            integrity,
            True,
        ),
        bad(
            "wrong key: default-key-v1 is configured with another key",
            base,
            integrity,
            True,
            keys={LEGACY_PRIMARY_ID: LEGACY_WRONG},
        ),
        bad(
            "key_id swapped to another configured key",
            _edit(base, key_id=LEGACY_OLD_ID),
            integrity,
            True,
            keys=KEYRING,
        ),
        bad(
            "ciphertext truncated to 10 bytes, shorter than the tag",
            _edit(base, ciphertext=_cut(ciphertext, 10)),
            integrity,
            False,
        ),
        bad(
            "16-byte nonce (valid GCM elsewhere, not the legacy format)",
            long_nonce,
            integrity,
            False,
        ),
        {
            **bad("non-UTF-8 plaintext under a valid tag", non_utf8, malformed, True),
            "sealed_plaintext_hex": NON_UTF8.hex(),
        },
        bad("missing field: nonce", _drop(base, "nonce"), malformed, False),
        bad("missing field: key_id", _drop(base, "key_id"), malformed, False),
        bad(
            "bad base64: ciphertext contains '*'",
            _edit(base, ciphertext="*" + ciphertext[1:]),
            malformed,
            False,
        ),
        bad(
            "bad base64: nonce with a space inside",
            _edit(base, nonce=base["nonce"][:8] + " " + base["nonce"][8:]),
            malformed,
            False,
        ),
        bad(
            "encryption_version of a later format over the legacy fields: never read as legacy",
            {**base, "encryption_version": "kms_v2"},
            malformed,
            False,
        ),
        bad("key_id empty", _edit(base, key_id=""), malformed, False),
        bad("key_id not a string", _edit(base, key_id=1), malformed, False),
        bad("truncated JSON text", json.dumps(base)[:40], malformed, None),
    ]


def legacy_vectors() -> list[Vector]:
    return [*legacy_good(), *legacy_bad()]


# -- output ------------------------------------------------------------------------------------


def _render(vectors: list[Vector]) -> str:
    comments = [vector["comment"] for vector in vectors]
    if len(set(comments)) != len(comments):
        raise ValueError("vector comments must be unique: they are the test ids")
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


BUILDERS: dict[str, Callable[[], list[Vector]]] = {
    "kms_v1.json": kms_v1_vectors,
    "legacy.json": legacy_vectors,
}


def build() -> dict[str, str]:
    """File name (in tests/vectors/) -> the exact text to write."""
    return {name: _render(builder()) for name, builder in BUILDERS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for name, text in build().items():
        path = VECTOR_DIR / name
        current = path.read_bytes() if path.exists() else None
        if current == text.encode("utf-8"):
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
    verb = "stale" if args.check else "written"
    print(f"{verb}: {', '.join(stale)}" if stale else "vectors up to date")
    return 1 if args.check and stale else 0


def _with_outcome(
    vector: dict[str, Any],
    comment: str,
    schema_valid: bool | None,
    plaintext: str | None,
    error: str | None,
) -> dict[str, Any]:
    """The fields every vector ends with: schema verdict, then the plaintext or the error."""
    if schema_valid is not None:
        vector["schema_valid"] = schema_valid
    if (plaintext is None) == (error is None):
        raise ValueError(f"{comment}: give exactly one of plaintext and error")
    if plaintext is not None:
        vector["plaintext"] = plaintext
    else:
        vector["error"] = error
    return vector


if __name__ == "__main__":
    sys.exit(main())
