"""Values inside JSON documents: the dotted ``--json-path`` and envelopes nobody asked about.

Heimdall's ingest stores the engine's output inside a property bag,
``{"field_type": "ssn", "raw": "<envelope>"}``. :func:`locate` finds the exact characters of
the value at a dotted path in the document's own text, so a job can replace that value and
keep every other byte of the document as it was. :func:`holds_envelope` tells whether a parsed
document holds an envelope-shaped value anywhere (as an object, or escaped in a string): a gate
reports such a document instead of counting it as someone's harmless data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

__all__ = [
    "DocumentError",
    "Span",
    "has_envelope_key",
    "holds_envelope",
    "locate",
    "names_envelope_key",
    "without_path",
]

_WS = re.compile(r"[ \t\n\r]*")
# Keys only an envelope (of either format) has; finding one means an envelope sits there.
_MARKERS = ("ciphertext", "encryption_version")
# One of those keys written as a JSON key ("ciphertext":), in any case, in text that escapes or
# wraps it: a BOM or other text before an envelope, an envelope inside a string, a UTF-16 one.
# The colon tells a key from prose that quotes the word ('what "ciphertext" means').
_NAMED_KEY = re.compile(r'"(?:ciphertext|encryption_version)"\s*:', re.IGNORECASE)
_UNICODE_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
# Deeper than this the walk stops and answers "may hold one": a gate fails closed on what it
# cannot see into.
_MAX_DEPTH = 64
_DECODER = json.JSONDecoder()


class DocumentError(ValueError):
    """The stored text is not a JSON object whose path can be read unambiguously."""


@dataclass(frozen=True, slots=True)
class Span:
    """Where the value at a path sits in the document's text: ``document[start:end]``."""

    start: int
    end: int


def locate(document: str, path: tuple[str, ...]) -> Span | None:
    """The span of the value at ``path``, or None where the document has no such key.

    Raises:
        DocumentError: the text is not one JSON object, a key on the path is repeated (two
            readers could disagree on which one counts), or a key on the way is not an object.
    """
    found, end = _find(document, _skip(document, 0), path[0])
    if _skip(document, end) != len(document):
        raise DocumentError("not valid JSON")
    for depth, key in enumerate(path[1:], 1):
        if found is None:
            return None
        if not document.startswith("{", found.start):
            raise DocumentError(f"the value at {path[depth - 1][:40]!r} is not an object")
        found, _ = _find(document, found.start, key)
    return found


def _find(text: str, index: int, wanted: str) -> tuple[Span | None, int]:
    """The span of key ``wanted`` in the object starting at ``index``, and the object's end."""
    if not text.startswith("{", index):
        raise DocumentError("not a JSON object")
    found: Span | None = None
    index = _skip(text, index + 1)
    if text.startswith("}", index):
        return None, index + 1
    while True:
        key, value = _member(text, index)
        if key == wanted:
            if found is not None:
                raise DocumentError(f"the document repeats the key {key[:40]!r}")
            found = value
        index, closed = _after_member(text, value.end)
        if closed:
            return found, index


def _member(text: str, index: int) -> tuple[str, Span]:
    """The key at ``index`` of an object's ``"key": value`` member, and its value's span."""
    if not text.startswith('"', index):
        raise DocumentError("not valid JSON")
    try:
        key, index = scanstring(text, index + 1)
    except ValueError:
        raise DocumentError("not valid JSON") from None
    index = _skip(text, index)
    if not text.startswith(":", index):
        raise DocumentError("not valid JSON")
    value_start = _skip(text, index + 1)
    try:
        _, value_end = _DECODER.raw_decode(text, value_start)
    except (ValueError, RecursionError):
        raise DocumentError("not valid JSON") from None
    return key, Span(value_start, value_end)


def _after_member(text: str, index: int) -> tuple[int, bool]:
    """Where the next member starts, or the object's end and True when it closes there."""
    index = _skip(text, index)
    if text.startswith(",", index):
        return _skip(text, index + 1), False
    if text.startswith("}", index):
        return index + 1, True
    raise DocumentError("not valid JSON")


def _skip(text: str, index: int) -> int:
    match = _WS.match(text, index)
    return match.end() if match else index


def without_path(document: Any, path: tuple[str, ...]) -> Any:
    """The parsed document with the value at ``path`` left out (shallow copies on the way)."""
    if not isinstance(document, dict) or path[0] not in document:
        return document
    rest = dict(document)
    if len(path) == 1:
        del rest[path[0]]
    else:
        rest[path[0]] = without_path(rest[path[0]], path[1:])
    return rest


def names_envelope_key(text: str) -> bool:
    """Whether ``text`` names an envelope's key as a JSON key, its case, escapes (quotes
    escaped once or more, ``\\uXXXX``) and NUL bytes (UTF-16 read as UTF-8) aside.

    Text that does so but is not read as an envelope is text no reader understands: a gate
    reports it, never counts it as someone's plaintext.
    """
    if _NAMED_KEY.search(text):
        return True
    if "\\" not in text and "\x00" not in text:
        return False
    plain = _UNICODE_ESCAPE.sub(lambda found: chr(int(found[1], 16)), text)
    return bool(_NAMED_KEY.search(plain.replace("\\", "").replace("\x00", "")))


def has_envelope_key(node: dict[str, Any]) -> bool:
    """Whether a JSON object has one of an envelope's keys, in any case."""
    if any(marker in node for marker in _MARKERS):
        return True
    return any(key.lower() in _MARKERS for key in node)


def holds_envelope(node: Any, depth: int = 0) -> bool:
    """Whether an envelope-shaped value sits anywhere in ``node`` (parsed JSON).

    An object with an envelope's key counts, and so does a string that is (or, damaged, looks
    like) the JSON text of one. Past the depth bound the answer is True: unseen is not harmless.
    """
    if depth > _MAX_DEPTH:
        return True
    if isinstance(node, dict):
        if has_envelope_key(node):
            return True
        return any(holds_envelope(value, depth + 1) for value in node.values())
    if isinstance(node, list):
        return any(holds_envelope(value, depth + 1) for value in node)
    if isinstance(node, str):
        return _text_holds_envelope(node, depth)
    return False


def _text_holds_envelope(text: str, depth: int) -> bool:
    """Whether a string is (or, damaged, looks like) the JSON text of an envelope."""
    if not any(marker in text for marker in _MARKERS) and not names_envelope_key(text):
        return False
    stripped = text.strip()
    if not stripped.startswith(("{", "[", '"')):
        # Text before it (a BOM, a label): not an envelope any reader takes, not harmless.
        return names_envelope_key(text)
    try:
        inner = json.loads(stripped)
    except (ValueError, RecursionError):
        # Escaped text naming an envelope's key that does not parse: a damaged envelope.
        return True
    return holds_envelope(inner, depth + 1)
