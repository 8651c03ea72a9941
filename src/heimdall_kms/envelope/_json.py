"""Strict JSON reading and field checks shared by the envelope formats."""

from __future__ import annotations

import binascii
import json
from collections.abc import Callable, Mapping
from json.scanner import make_scanner
from typing import Any, cast

from heimdall_kms.errors import MalformedEnvelopeError

# An envelope holds one field value. Bounding the text before it is decoded keeps a hostile
# 1 GB "envelope" from costing 1 GB of JSON parsing (tink bounds its encrypted DEK alike). The
# bound is generous because the existing engine wrote values of any size and every one of them
# must stay readable and migratable (SPEC §4.1); a larger value fails its own row, never a run.
MAX_ENVELOPE_CHARS = 64 * 1024 * 1024
MAX_ENCRYPTED_DEK_CHARS = 8192
MAX_CONTEXT_ENTRIES = 32
MAX_CONTEXT_KEY_CHARS = 128
MAX_CONTEXT_VALUE_CHARS = 1024
# The whole context as JSON (non-ASCII escaped: its largest form). It goes into the value's
# audit line, which must stay well inside what the audit log's chain reader reads back.
MAX_CONTEXT_JSON_CHARS = 16 * 1024


def load_object(source: str | bytes | Mapping[str, Any]) -> dict[str, Any]:
    """Return the envelope's JSON object, refusing oversized, duplicate-key or non-object input."""
    if isinstance(source, Mapping):
        return dict(source)
    if isinstance(source, bytes):
        if len(source) > MAX_ENVELOPE_CHARS:
            raise MalformedEnvelopeError(_too_large())
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEnvelopeError("envelope is not UTF-8 text") from None
    if not isinstance(source, str):
        raise MalformedEnvelopeError("envelope must be JSON text or a mapping")
    if len(source) > MAX_ENVELOPE_CHARS:
        raise MalformedEnvelopeError(_too_large())
    try:
        if source[:1] == "{":
            # The stored form (nothing before the object): the decoder's scanner, without
            # decode()'s two Python frames and whitespace scans; text after the object (the
            # scanner stops there) is read as decode() reads it, which refuses all but blanks.
            value, end = _SCAN(source, 0)
            if end != len(source):
                value = _DECODER.decode(source)
        else:
            value = _DECODER.decode(source)
    except (ValueError, RecursionError, StopIteration):  # JSONDecodeError, 4300+ digit ints
        raise MalformedEnvelopeError("envelope is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedEnvelopeError("envelope must be a JSON object")
    return value


def _too_large() -> str:
    return f"envelope is larger than {MAX_ENVELOPE_CHARS} characters"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins would read different envelopes.
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedEnvelopeError(f"envelope repeats the key {short(key)}")
            seen.add(key)
    return result


# One decoder for every envelope: json.loads with a hook would build a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)
# (text, index) -> (value, end): the scanner decode() calls (JSONDecoder makes its own so).
_SCAN: Callable[[str, int], tuple[Any, int]] = make_scanner(cast(Any, _DECODER))


def text(obj: Mapping[str, Any], key: str, *, max_chars: int = MAX_ENVELOPE_CHARS) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise MalformedEnvelopeError(f"envelope field {key!r} is missing or not a string")
    if len(value) > max_chars:
        raise MalformedEnvelopeError(
            f"envelope field {key!r} is longer than {max_chars} characters"
        )
    return value


def b64(obj: Mapping[str, Any], key: str) -> bytes:
    """Decode standard base64 with padding, rejecting any other alphabet or stray characters."""
    value = text(obj, key)
    try:
        # What base64.b64decode(value, validate=True) does (a non-ASCII str is a ValueError),
        # without its per-call conversion.
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raw = None
    # Only the canonical encoding is accepted, so one envelope has exactly one stored text
    # (strict decoding still takes non-zero padding bits: "QR==" is "A").
    if raw is None or binascii.b2a_base64(raw, newline=False).decode("ascii") != value:
        raise MalformedEnvelopeError(f"envelope field {key!r} is not valid base64")
    return raw


def b64_text(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def short(value: object, limit: int = 40) -> str:
    """A bounded repr for echoing attacker-controlled, non-secret input in an error message."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
