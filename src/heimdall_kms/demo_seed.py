"""The demo's data: the old engine's ``customers`` table, and the app's first hybrid-mode steps."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from heimdall_kms import from_settings
from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.config import EncryptionMode, Settings
from heimdall_kms.service import Crypto

__all__ = ["NEW_ID", "TABLE", "customers", "hybrid_app", "seed"]

TABLE = "customers"
NEW_ID = "c-99999"
_CUSTOMERS = 2000
OLD_KEY_ID = "key-2023"
_KEY_IDS = ("default-key-v1", OLD_KEY_ID)


def customers() -> dict[str, str]:
    """The demo's made-up customers: id -> SSN (deterministic, so tests can look for leaks)."""
    return {
        f"c-{i:05d}": f"{100 + i % 800:03d}-{i % 90 + 10:02d}-{i:04d}"
        for i in range(1, _CUSTOMERS + 1)
    }


def seed(db_path: Path, hybrid: Settings, say: Callable[[str], None]) -> dict[str, str]:
    """The old engine's table. Returns id -> SSN, kept in memory to verify the read-back."""
    originals = customers()
    ids = list(originals)
    redacted = set(ids[::97])
    values = _stored_values(hybrid, originals, redacted)
    rows = [(i, values[i], _email_hash(i)) for i in ids]
    with sqlite3.connect(db_path) as db:
        db.execute(f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, ssn TEXT, email TEXT)")
        db.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", rows)  # noqa: S608
    say(
        f"0. seeded {_CUSTOMERS:,} customers as the old engine wrote them (env keys "
        f"'default-key-v1' and {OLD_KEY_ID!r}; emails as sha256: hashes; a few [REDACTED])"
    )
    return {i: originals[i] for i in ids if i not in redacted}


def _stored_values(
    hybrid: Settings, originals: dict[str, str], redacted: set[str]
) -> dict[str, str]:
    """Each customer's SSN as the old engine stored it: sealed with its env key, or redacted."""
    audit = open_sink(hybrid.audit_log)
    engines = _legacy_engines(hybrid, audit)
    values = {i: "[REDACTED]" for i in redacted}
    for key_id, chunk in _by_key(list(originals), redacted).items():
        sealed = engines[key_id].encrypt_many([(originals[i], {}) for i in chunk])
        values.update({i: env.to_json() for i, env in zip(chunk, sealed, strict=True)})
    audit.close()
    return values


def _legacy_engines(hybrid: Settings, audit: AuditSink) -> dict[str, Crypto]:
    """The old engine, once per env key it wrote with (sharing one audit sink)."""
    return {
        key_id: from_settings(
            dataclasses.replace(
                hybrid, mode=EncryptionMode.LEGACY, provider=None, legacy_key_id=key_id
            ),
            audit=audit,
            default_actor="legacy-engine",
        )
        for key_id in _KEY_IDS
    }


def _by_key(ids: list[str], redacted: set[str]) -> dict[str, list[str]]:
    """Which customers each env key sealed: every fifth with the old key, the rest the other."""
    return {
        key_id: [
            i
            for n, i in enumerate(ids)
            if (n % 5 == 0) == (key_id == OLD_KEY_ID) and i not in redacted
        ]
        for key_id in _KEY_IDS
    }


def _email_hash(customer: str) -> str:
    return "sha256:" + hashlib.sha256(f"{customer}@example.com".encode()).hexdigest()


def hybrid_app(db_path: Path, crypto: Crypto, originals: dict[str, str]) -> None:
    """What the application does in hybrid mode: read an old value, write a new one."""
    with sqlite3.connect(db_path) as db:
        (old,) = db.execute(f"SELECT ssn FROM {TABLE} WHERE id = 'c-00002'").fetchone()  # noqa: S608
        crypto.decrypt(old, actor="demo-app", reason="demo: customer lookup")
        originals[NEW_ID] = "078-05-1120"
        envelope = crypto.encrypt(
            originals[NEW_ID], context={"table": TABLE, "field": "ssn", "record": NEW_ID}
        )
        db.execute(f"INSERT INTO {TABLE} VALUES (?, ?, NULL)", (NEW_ID, envelope.to_json()))  # noqa: S608
