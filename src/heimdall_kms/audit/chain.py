"""The hash chain that makes the audit log tamper-evident.

Every line is the event's JSON plus ``seq`` (1, 2, 3, ... per log), ``prev_hash`` (the
previous line's ``hash``; 64 zeros for the first) and ``hash`` = SHA-256 over ``prev_hash``
and the canonical JSON of the line without ``hash``. Editing a line breaks its hash; removing,
inserting or reordering lines breaks ``seq`` and ``prev_hash``. Truncating the end leaves a
valid shorter chain, so the writer also keeps a checkpoint file next to the log
(``<log>.head``: the last ``seq`` and ``hash``), rewritten atomically after every batch;
``audit verify`` compares the log's end with it.

What this does not stop: someone who can rewrite the whole log *and* its checkpoint can
forge a consistent chain. Ship the log (or stderr) to an append-only store as well; see
``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["GENESIS", "canonical", "chain_hash", "seal_line", "seal_split"]

GENESIS = "0" * 64


# One encoder for every line: json.dumps would build a new encoder per call.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical(document: Mapping[str, Any]) -> bytes:
    """Sorted-key compact UTF-8 JSON: the bytes the hash covers."""
    return _ENCODE(document).encode()


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(body)).hexdigest()


def seal_line(event: Mapping[str, Any], seq: int, prev_hash: str) -> tuple[str, str]:
    """The line to write (with its newline) and its hash."""
    if "hash" in event:
        # A key the line itself defines: keep the literal definition for this odd case.
        body = {**event, "seq": seq, "prev_hash": prev_hash}
        digest = chain_hash(prev_hash, body)
        return canonical({**body, "hash": digest}).decode() + "\n", digest
    before = {key: value for key, value in event.items() if key < "hash"}
    after = {key: value for key, value in event.items() if key > "hash"}
    after["seq"] = seq
    after["prev_hash"] = prev_hash
    return seal_split(before, after, prev_hash)


def seal_split(
    before: Mapping[str, Any], after: Mapping[str, Any], prev_hash: str
) -> tuple[str, str]:
    """:func:`seal_line` for a body already split around where ``hash`` sorts.

    ``before`` holds the top-level keys that sort before ``"hash"``, ``after`` those that sort
    after it (including ``seq`` and ``prev_hash``). Both halves are encoded once; the hashed
    body and the written line are the same bytes with and without the ``hash`` member, so the
    result is byte-for-byte what sealing the whole document would give.
    """
    head = _ENCODE(before)[:-1]  # "{...": the closing brace dropped
    tail = _ENCODE(after)[1:]  # "...}": the opening brace dropped
    comma = "," if len(head) > 1 else ""
    # ASCII only, as in chain_hash: a damaged tail must not be continued.
    digest = hashlib.sha256(
        prev_hash.encode("ascii") + b"\n" + (head + comma + tail).encode()
    ).hexdigest()
    return f'{head}{comma}"hash":"{digest}",{tail}\n', digest
