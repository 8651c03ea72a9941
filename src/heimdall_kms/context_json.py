"""Sorted-key compact JSON of an encryption context: a flat mapping of text to text.

Every value gets it twice (its AAD and its audit line), so this skips the general encoder's
per-call set-up. The output equals ``json.dumps(context, sort_keys=True, separators=(",",
":"))`` (``ensure_ascii`` as named); ``tests/unit/test_context_json.py`` checks that for
generated contexts. Only for contexts :func:`heimdall_kms.envelope.check_context` accepted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from json.encoder import encode_basestring, encode_basestring_ascii

__all__ = ["context_json", "context_json_ascii"]

_ASCII = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
_UNICODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


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
