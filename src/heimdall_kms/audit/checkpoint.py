"""Signed checkpoints: the chain head (seq, hash, time, host, process) signed by a KMS key.

A checkpoint is one JSON object. What is signed is the canonical JSON (sorted keys, compact,
UTF-8) of every member except ``signature``, so the log's identity and the key are covered
too (the key's version is in the signature): a checkpoint cannot be moved to another log or
re-labelled with another key.
Checkpoints are written to ``<log>.checkpoints`` (one per line) and to the off-host anchor
(:mod:`heimdall_kms.audit.anchor`); ``docs/audit.md`` explains the design.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from heimdall_kms.audit.chain import canonical

__all__ = [
    "Checkpoint",
    "Signer",
    "VersionedSigner",
    "checkpoints_path",
    "default_log_id",
    "new_checkpoint",
    "parse_checkpoint",
]

_FORMAT = "heimdall-audit-checkpoint/1"


class Signer(Protocol):
    """A KMS signing key: signs new checkpoints, verifies any version's signature."""

    @property
    def key_identifier(self) -> str: ...

    def sign(self, message: bytes) -> str:
        """The signature of ``message`` by the key's current version (the version is in it).

        Raises:
            KMSError: the KMS refused or is unreachable.
        """

    def signing_key_of(self, signature: str) -> str | None:
        """The key a signature records as the one that made it, where signatures name their
        key (AWS, where a rotation is a new key: its ARN); None where they name only a version
        of this signer's key. Whether that key is trusted is for :meth:`verify_many` to say."""

    def verify_many(self, items: Sequence[tuple[bytes, str]]) -> list[bool]:
        """For each ``(message, signature)``: whether it is this key's signature of the
        message (at any version that can still verify: rotating the key keeps old
        checkpoints verifiable). Batched where the KMS allows.

        Raises:
            KMSError: the KMS refused or is unreachable (not an answer either way).
        """


class VersionedSigner:
    """A signer whose signatures name a version of its own key, never another key (Vault,
    local, GCP, Azure: a rotation is a new version of the same key)."""

    def signing_key_of(self, signature: str) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    log_id: str
    seq: int
    hash: str
    time: str  # RFC 3339 UTC, when the head was signed
    host: str
    pid: int
    key: str
    signature: str  # names the key version (vault:v2:..., local:v1:...) or, on AWS, the key's ARN

    def message(self) -> bytes:
        """The bytes the signature covers."""
        body = asdict(self)
        del body["signature"]
        return canonical({"format": _FORMAT, **body})

    def to_json(self) -> str:
        return json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)

    @property
    def moment(self) -> datetime:
        return datetime.fromisoformat(self.time)


def new_checkpoint(log_id: str, seq: int, digest: str, signer: Signer) -> Checkpoint:
    """Sign the head ``seq``/``digest`` of ``log_id`` now, as this host and process.

    Raises:
        KMSError: the signing key could not be used.
    """
    unsigned = Checkpoint(
        log_id=log_id,
        seq=seq,
        hash=digest,
        time=datetime.now(UTC).isoformat(timespec="microseconds"),
        host=socket.gethostname(),
        pid=os.getpid(),
        key=signer.key_identifier,
        signature="",
    )
    return replace(unsigned, signature=signer.sign(unsigned.message()))


def parse_checkpoint(text: str | bytes) -> Checkpoint:
    """A checkpoint from its JSON.

    Raises:
        ValueError: not a checkpoint of this format.
    """
    try:
        document = json.loads(text)
    except RecursionError:  # nested deeper than the parser goes: no checkpoint is
        raise ValueError("not a heimdall audit checkpoint") from None
    if not isinstance(document, dict) or document.pop("format", None) != _FORMAT:
        raise ValueError("not a heimdall audit checkpoint")
    checkpoint = _typed(document)
    if checkpoint.moment.tzinfo is None:  # fromisoformat raises ValueError on a malformed time
        raise ValueError("not a heimdall audit checkpoint (a time without a time zone)")
    return checkpoint


def checkpoints_path(log: Path) -> Path:
    return log.with_name(log.name + ".checkpoints")


def default_log_id(log: Path) -> str:
    """``<host>:<absolute path>``: which log the anchor's rows are about (HMD_AUDIT_LOG_ID)."""
    return f"{socket.gethostname()}:{os.path.abspath(log)}"


def _typed(document: dict[str, Any]) -> Checkpoint:
    """The checkpoint of exactly these fields, each of its declared type (a bool is no int)."""
    try:
        checkpoint = Checkpoint(**document)
    except TypeError:
        raise ValueError("not a heimdall audit checkpoint") from None
    types = (str, int, str, str, str, int, str, str)
    for value, kind in zip(asdict(checkpoint).values(), types, strict=True):
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError("not a heimdall audit checkpoint")
    return checkpoint
