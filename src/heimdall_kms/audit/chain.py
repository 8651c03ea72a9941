"""The hash chain that makes the audit log tamper-evident.

Every line is the event's JSON plus ``seq`` (1, 2, 3, ... per log), ``prev_hash`` (the
previous line's ``hash``; 64 zeros for the first) and ``hash`` = SHA-256 over ``prev_hash``
and the canonical JSON of the line without ``hash``. Editing a line breaks its hash; removing,
inserting or reordering lines breaks ``seq`` and ``prev_hash``. Truncating the end leaves a
valid shorter chain, so the writer also keeps a checkpoint file next to the log
(``<log>.head``: the last ``seq`` and ``hash``), overwritten after every batch;
``audit verify`` compares the log's end with it.

What this alone does not stop: someone who can rewrite the whole log *and* its checkpoint
can forge a consistent chain. Signed checkpoints sent off the host (HMD_AUDIT_SIGNING_KEY,
HMD_AUDIT_ANCHOR: :mod:`heimdall_kms.audit.checkpointer`, :mod:`heimdall_kms.audit.anchored`)
close that gap; see ``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["GENESIS", "canonical", "chain_hash", "encode_json", "seal_line"]

GENESIS = "0" * 64


# One encoder for every line: json.dumps would build a new encoder per call.
encode_json = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
"""Sorted-key compact JSON text, non-ASCII kept as is: the encoding of every audit line."""


def canonical(document: Mapping[str, Any]) -> bytes:
    """Sorted-key compact UTF-8 JSON: the bytes the hash covers."""
    return encode_json(document).encode()


def chain_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    # ASCII only: a damaged tail (a non-hex prev_hash) must not be continued.
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + canonical(body)).hexdigest()


def seal_line(event: Mapping[str, Any], seq: int, prev_hash: str) -> tuple[str, str]:
    """The line to write (with its newline) and its hash: the definition of the chain.

    The audit sinks write events through :func:`heimdall_kms.audit.lines.chain_events`, which
    gives the same bytes faster.
    """
    body = {**event, "seq": seq, "prev_hash": prev_hash}
    digest = chain_hash(prev_hash, body)
    return canonical({**body, "hash": digest}).decode() + "\n", digest
