"""An encryption context once checked, and its sorted-key compact JSON, made once.

Every value's context is encoded twice over: in its AAD (non-ASCII escaped) and in its audit
line (non-ASCII kept, the same text when nothing needed escaping). :class:`CheckedContext` is
what :func:`heimdall_kms.envelope.check_context` returns: a read-only ``dict`` that keeps its
AAD encoding once made, so the audit line reuses it wherever the context travels (the sealed
envelope, the opened one, the audit event) and nobody passes the encoding along.

The output equals ``json.dumps(context, sort_keys=True, separators=(",", ":"))``
(``ensure_ascii`` as named) without the general encoder's per-call set-up;
``tests/unit/test_context_json.py`` checks that for generated contexts. This module imports
nothing of the package.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import NoReturn

try:
    from _json import make_encoder as c_make_encoder  # what json.encoder runs on
except ImportError:  # pragma: no cover - a Python without the json accelerator
    c_make_encoder = None  # type: ignore[assignment, misc]

__all__ = [
    "CheckedContext",
    "aad_json",
    "context_json",
    "context_json_ascii",
    "line_json",
    "stored_json",
]

_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_UNICODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_UNSORTED = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _not_text(value: object) -> NoReturn:
    raise TypeError("not text")


def _c_encoder(
    quote: Callable[[str], str], *, sort_keys: bool = True
) -> Callable[[CheckedContext], str]:
    """The C encoder the general one runs on, made once: compact, no markers (it is given
    checked contexts only, text to text: nothing to recurse into). Where the json accelerator
    is missing, the encoders below."""
    if c_make_encoder is None:
        if not sort_keys:
            return _UNSORTED
        return context_json_ascii if quote is encode_basestring_ascii else context_json
    chunks = c_make_encoder(None, _not_text, quote, None, ":", ",", sort_keys, False, True)
    return lambda context: "".join(chunks(context, 0))


class CheckedContext(dict[str, str]):
    """A context :func:`heimdall_kms.envelope.check_context` accepted: read-only, so the
    encoding it keeps stays true (a ``dict`` still, so reading it costs what a dict does)."""

    # Built by dict's own constructor (no __init__ here: one is made per value); the encoding
    # is set on the instance when first made, until then this class default answers.
    _aad_json: str | None = None

    def __reduce__(self) -> tuple[type[CheckedContext], tuple[dict[str, str]]]:
        return CheckedContext, (dict(self),)

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("a checked encryption context is read-only; build a new one")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only


def aad_json(context: Mapping[str, str]) -> str:
    """The context as the AAD encodes it; made once per :class:`CheckedContext`."""
    if type(context) is not CheckedContext:
        return context_json_ascii(context)
    encoded = context._aad_json
    if encoded is None:
        encoded = context._aad_json = _checked_ascii(context)
    return encoded


def line_json(context: Mapping[str, str]) -> str:
    """The context as an audit line writes it: the AAD's encoding where that escaped nothing
    (``\\uXXXX``), else encoded again with non-ASCII kept."""
    if type(context) is not CheckedContext:
        return context_json(context)
    encoded = context._aad_json
    # The AAD's form equals this one exactly when it escaped nothing as \uXXXX.
    return encoded if encoded is not None and "\\u" not in encoded else _checked_unicode(context)


def stored_json(context: CheckedContext) -> str:
    """The context as a stored envelope writes it: its keys in their own order, non-ASCII
    kept (``json.dumps(dict(context), separators=(",", ":"), ensure_ascii=False)``)."""
    return _checked_stored(context)


def context_json_ascii(context: Mapping[str, str]) -> str:
    """Non-ASCII characters escaped as ``\\uXXXX`` (the AAD's form)."""
    quote = encode_basestring_ascii
    try:
        return "{" + ",".join([quote(k) + ":" + quote(v) for k, v in sorted(context.items())]) + "}"
    except TypeError:  # not text (an envelope built by hand): what the general encoder makes of it
        return _ASCII(dict(context))


def context_json(context: Mapping[str, str]) -> str:
    """Non-ASCII characters kept as they are (the audit line's form)."""
    quote = encode_basestring
    try:
        return "{" + ",".join([quote(k) + ":" + quote(v) for k, v in sorted(context.items())]) + "}"
    except TypeError:
        return _UNICODE(dict(context))


_checked_ascii = _c_encoder(encode_basestring_ascii)
_checked_unicode = _c_encoder(encode_basestring)
_checked_stored = _c_encoder(encode_basestring, sort_keys=False)
