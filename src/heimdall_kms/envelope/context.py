"""The encryption context a value is bound to: a flat mapping of text to text, bounded.

:func:`check_context` is the one gate every context passes (a caller's, a stored envelope's),
and returns it as a :class:`~heimdall_kms.context_json.CheckedContext`, read-only, whose AAD
encoding is made once.
"""

from __future__ import annotations

from collections.abc import Mapping

from heimdall_kms.context_json import CheckedContext, aad_json
from heimdall_kms.envelope import _json
from heimdall_kms.errors import InvalidInputError

__all__ = ["check_context"]

_MAX_KEY = _json.MAX_CONTEXT_KEY_CHARS
_MAX_VALUE = _json.MAX_CONTEXT_VALUE_CHARS


def check_context(context: object, *, error: type[Exception] = InvalidInputError) -> CheckedContext:
    """Return the context as a :class:`CheckedContext` or raise ``error`` saying what is wrong."""
    if type(context) is CheckedContext:
        return context  # checked when it was made, and read-only since
    if type(context) is not dict and not isinstance(context, Mapping):
        raise error("context must be a mapping of strings to strings")
    if len(context) > _json.MAX_CONTEXT_ENTRIES:
        raise error(f"context has more than {_json.MAX_CONTEXT_ENTRIES} entries")
    chars = 0  # of the keys and values, for the bound on the whole (below)
    for key, value in context.items():
        # Plain ASCII text within the bounds is decided here (isascii() is O(1), and ASCII
        # text always encodes); anything else (other text, str subclasses, not text at all)
        # goes through the full rule, which accepts it or says what is wrong. One pass: this
        # runs once per value sealed.
        if (
            type(key) is type(value) is str
            and 0 < (key_chars := len(key)) <= _MAX_KEY
            and (value_chars := len(value)) <= _MAX_VALUE
            and key.isascii()
            and value.isascii()
        ):
            chars += key_chars + value_chars
        elif _usable(key, value):
            chars += len(key) + len(value)
        else:
            raise _entry_error(key, value, error)
    checked = CheckedContext(context)
    # A character is at most 12 in the JSON (an escaped surrogate pair), each entry adds 6
    # (quotes, colon, comma): only a context that could be over the bound is encoded to see.
    if (
        12 * chars + 6 * len(checked) + 2 > _json.MAX_CONTEXT_JSON_CHARS
        and len(aad_json(checked)) > _json.MAX_CONTEXT_JSON_CHARS
    ):
        raise error(f"context is larger than {_json.MAX_CONTEXT_JSON_CHARS} characters as JSON")
    return checked


def _usable(key: object, value: object) -> bool:
    """The full rule for one entry: a non-empty key and a value, both text within bounds."""
    return bool(key) and _text(key, _MAX_KEY) and _text(value, _MAX_VALUE)


def _text(text: object, max_chars: int) -> bool:
    """Text of at most ``max_chars`` that can be written out as UTF-8. isascii() is O(1) and
    ASCII text always is; lone surrogates survive json.loads but not an audit line or a
    database."""
    return isinstance(text, str) and len(text) <= max_chars and (text.isascii() or _utf8(text))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entry_error(key: object, value: object, error: type[Exception]) -> Exception:
    """What is wrong with an entry :func:`check_context` refused."""
    if not (isinstance(key, str) and key and len(key) <= _MAX_KEY):
        return error(
            f"context key {_json.short(key)} must be a non-empty string "
            f"of at most {_MAX_KEY} characters"
        )
    if not (isinstance(value, str) and len(value) <= _MAX_VALUE):
        return error(
            f"context value for {key!r} must be a string of at most {_MAX_VALUE} characters"
        )
    return error(f"context entry {_json.short(key)} is not valid Unicode text")
