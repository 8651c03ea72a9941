"""The end-to-end story on the embedded default: SQLite plus the local provider.

A small ``customers`` table holds PII the way Heimdall's existing engine left it: some SSNs
already sealed with the env key (legacy envelopes), some still in the clear, an email kept
only as a ``sha256:`` hash, a scrubbed ``[REDACTED]`` value. The demo reads the legacy values
in hybrid mode, seals every SSN as ``kms_v1`` bound to table/field/record, reads them all back
with audited decrypts, shows that a value copied to another record is refused, and sums up.
Printed values are masked: the demo never shows a whole SSN.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from heimdall_kms import crypto as primitives
from heimdall_kms import from_settings
from heimdall_kms.audit import open_sink
from heimdall_kms.config import EncryptionMode, ProviderName, Secret, Settings
from heimdall_kms.envelope import KMS_V1, LEGACY, parse
from heimdall_kms.errors import IntegrityError, MalformedEnvelopeError
from heimdall_kms.service import Crypto

__all__ = ["DemoSummary", "run_demo"]

_ROWS = [
    # id, name, ssn, email, state of the SSN as the old engine left it
    ("c-1001", "Ada", "123-45-6789", "ada@example.com", "legacy"),
    ("c-1002", "Grace", "987-65-4321", "grace@example.com", "legacy"),
    ("c-1003", "Linus", "555-12-3456", "linus@example.com", "legacy"),
    ("c-1004", "Margaret", "222-33-4444", "margaret@example.com", "plain"),
    ("c-1005", "Alan", "111-22-3333", "alan@example.com", "plain"),
    ("c-1006", "Barbara", "[REDACTED]", "barbara@example.com", "scrubbed"),
]
_TABLE = "customers"


@dataclass(frozen=True, slots=True)
class DemoSummary:
    workdir: str
    provider: str
    key_identifier: str
    before: Mapping[str, int]
    after: Mapping[str, int]
    verified: int
    moved_value_refused: bool
    audit_events: Mapping[str, int]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def run_demo(workdir: Path, environ: Mapping[str, str], say: Callable[[str], None]) -> DemoSummary:
    """Run the story in ``workdir`` and return its summary.

    With ``HMD_KMS_PROVIDER`` set in ``environ`` the configured KMS is used; otherwise the
    local provider with a keyring inside ``workdir`` (NOT FOR PRODUCTION).

    Raises:
        HeimdallKMSError: any step failed; nothing outside ``workdir`` is touched.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    settings = _demo_settings(workdir, environ)
    db_path = workdir / "demo.db"
    db_path.unlink(missing_ok=True)
    with sqlite3.connect(db_path) as db:
        _seed(db, settings, say)
        before = _census(db)
        say(f"seeded {len(_ROWS)} customers: {_fmt(before)}")
        crypto = from_settings(settings, audit=open_sink(settings.audit_log), default_actor="demo")
        with crypto:
            assert crypto.kms is not None
            provider, key_id = crypto.kms.name.value, crypto.kms.key_identifier
            say(f"KMS: {provider} key {key_id!r} (hybrid mode: reads legacy, writes kms_v1)")
            _protect(db, crypto, say)
            after = _census(db)
            say(f"after protection: {_fmt(after)}")
            verified = _read_back(db, crypto, say)
            refused = _move_value(db, crypto, say)
    return DemoSummary(
        workdir=str(workdir),
        provider=provider,
        key_identifier=key_id,
        before=before,
        after=after,
        verified=verified,
        moved_value_refused=refused,
        audit_events=_count_audit(Path(settings.audit_log)),
    )


def _demo_settings(workdir: Path, environ: Mapping[str, str]) -> Settings:
    # The demo plays the old engine too, so it has an env key of its own, never the user's.
    legacy_key = Secret(bytes(primitives.new_dek()))
    audit_log = str(workdir / "audit.log")
    if environ.get("HMD_KMS_PROVIDER"):
        configured = Settings.from_env(
            {
                **environ,
                "HMD_ENCRYPTION_MODE": "hybrid",
                "HMD_PII_MASTER_KEY": "",
                "HMD_PII_LEGACY_KEYS": "",
                "HMD_HYBRID_WRITE_FORMAT": "",
            }
        )
        return dataclasses.replace(
            configured, legacy_keys={configured.legacy_key_id: legacy_key}, audit_log=audit_log
        )
    return Settings(
        mode=EncryptionMode.HYBRID,
        legacy_keys={"default-key-v1": legacy_key},
        provider=ProviderName.LOCAL,
        kms_key_id="heimdall-pii",
        local_keyring=workdir / "local-keyring.json",
        audit_log=audit_log,
    )


def _seed(db: sqlite3.Connection, settings: Settings, say: Callable[[str], None]) -> None:
    legacy = dataclasses.replace(settings, mode=EncryptionMode.LEGACY, provider=None)
    db.execute(f"CREATE TABLE {_TABLE} (id TEXT PRIMARY KEY, name TEXT, ssn TEXT, email TEXT)")
    with from_settings(
        legacy, audit=open_sink(settings.audit_log), default_actor="legacy-engine"
    ) as old_engine:
        for row_id, name, ssn, email, state in _ROWS:
            value = ssn
            if state == "legacy":
                value = old_engine.encrypt(
                    ssn, context={"field": "ssn", "record": row_id}
                ).to_json()
            digest = _sha256(email)
            db.execute(f"INSERT INTO {_TABLE} VALUES (?, ?, ?, ?)", (row_id, name, value, digest))  # noqa: S608
    say("the old engine wrote 3 SSNs with the env key, left 2 in the clear, scrubbed 1")


def _sha256(value: str) -> str:
    # The legacy engine's one-way hash form (SPEC §4.1).
    return "sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()


def _protect(db: sqlite3.Connection, crypto: Crypto, say: Callable[[str], None]) -> None:
    rows = db.execute(f"SELECT id, ssn FROM {_TABLE} ORDER BY id").fetchall()  # noqa: S608
    legacy_ids = [row_id for row_id, ssn in rows if _kind(ssn) == LEGACY]
    legacy_values = [ssn for _, ssn in rows if _kind(ssn) == LEGACY]
    plain = crypto.decrypt_many(legacy_values, actor="demo-migrator", reason="demo: migrate to KMS")
    clear = {row_id: ssn for row_id, ssn in rows if _kind(ssn) == "plaintext"}
    todo = {**dict(zip(legacy_ids, plain, strict=True)), **clear}
    items = [(value, _context(row_id)) for row_id, value in todo.items()]
    sealed = crypto.encrypt_many(items, actor="demo-migrator")
    with db:
        for row_id, envelope in zip(todo, sealed, strict=True):
            db.execute(f"UPDATE {_TABLE} SET ssn = ? WHERE id = ?", (envelope.to_json(), row_id))  # noqa: S608
    say(
        f"sealed {len(sealed)} SSNs as kms_v1 in one batched KMS call "
        f"({len(legacy_ids)} read from legacy, {len(clear)} from plaintext)"
    )


def _read_back(db: sqlite3.Connection, crypto: Crypto, say: Callable[[str], None]) -> int:
    rows = [
        (i, s)
        for i, s in db.execute(f"SELECT id, ssn FROM {_TABLE} ORDER BY id")  # noqa: S608
        if _kind(s) == KMS_V1
    ]
    texts = crypto.decrypt_many(
        [s for _, s in rows],
        actor="demo-analyst",
        reason="demo: read back",
        contexts=[_context(i) for i, _ in rows],
    )
    expected = {row_id: ssn for row_id, _, ssn, _, _ in _ROWS}
    for (row_id, _), text in zip(rows, texts, strict=True):
        if text != expected[row_id]:
            raise IntegrityError("demo read back a value that differs from the original")
        say(f"  {row_id}: ssn {_mask(text)}  (decrypt audited: actor demo-analyst)")
    return len(texts)


def _move_value(db: sqlite3.Connection, crypto: Crypto, say: Callable[[str], None]) -> bool:
    (stolen,) = db.execute(f"SELECT ssn FROM {_TABLE} WHERE id = 'c-1001'").fetchone()  # noqa: S608
    try:
        crypto.decrypt(
            stolen,
            actor="demo-attacker",
            reason="demo: value copied to c-1002",
            context=_context("c-1002"),
        )
    except IntegrityError:
        say("c-1001's SSN copied to c-1002 is refused: the record id is bound in the AAD")
        return True
    return False


def _census(db: sqlite3.Connection) -> dict[str, int]:
    counts = Counter(_kind(s) for (s,) in db.execute(f"SELECT ssn FROM {_TABLE}"))  # noqa: S608
    return dict(sorted(counts.items()))


def _kind(value: str | None) -> str:
    if value is None or value == "[REDACTED]":
        return "scrubbed"
    try:
        return parse(value).encryption_version
    except MalformedEnvelopeError:
        return "plaintext"


def _context(row_id: str) -> dict[str, str]:
    return {"table": _TABLE, "field": "ssn", "record": row_id}


def _mask(ssn: str) -> str:
    return "***-**-" + ssn[-4:]


def _fmt(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in counts.items())


def _count_audit(path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            counts[f"{event['event_type']}:{event['result']}"] += 1
    return dict(sorted(counts.items()))
