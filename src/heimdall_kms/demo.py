"""The end-to-end story on the embedded default: SQLite plus the local provider.

1. The old engine (legacy mode, env key) has written a ``customers`` table: SSNs as env-key
   envelopes, some under an older key id, emails as ``sha256:`` hashes, a few ``[REDACTED]``.
2. The application moves to hybrid mode: it still reads those values, and new ones go to the
   KMS.
3. ``status`` counts what is stored; ``migrate`` re-encrypts every legacy value through the
   KMS, batch by batch, with progress; ``status`` then proves zero legacy values remain.
4. The application switches to KMS-only mode with no env key configured: every SSN reads back
   (audited), a legacy value is refused, and a value copied to another record is refused.
5. The key lifecycle: rotate, see retirement refused while values need the old version,
   rewrap every DEK inside the KMS (ciphertexts untouched), retire, read everything back.

Nothing outside the work directory is touched, and SSNs are only ever shown masked.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from heimdall_kms import crypto as primitives
from heimdall_kms import from_settings
from heimdall_kms.audit import open_sink
from heimdall_kms.config import EncryptionMode, ProviderName, Secret, Settings
from heimdall_kms.errors import IntegrityError, ModeViolationError, RefusedError
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import ProgressCallback
from heimdall_kms.jobs.rotation import retire, rotate
from heimdall_kms.providers import load_provider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store

__all__ = ["DemoSummary", "customers", "run_demo"]

_TABLE = "customers"
_CUSTOMERS = 2000
_OLD_KEY_ID = "key-2023"
_NEW_ID = "c-99999"


@dataclass(frozen=True, slots=True)
class DemoSummary:
    workdir: str
    provider: str
    key_identifier: str
    run_id: str
    before: Mapping[str, int]
    after: Mapping[str, int]
    migrated: int
    kms_calls: int
    verified: int
    legacy_refused_in_kms_mode: bool
    moved_value_refused: bool
    lifecycle: Mapping[str, object]
    audit_events: Mapping[str, int]

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def run_demo(
    workdir: Path,
    environ: Mapping[str, str],
    say: Callable[[str], None],
    progress: ProgressCallback | None = None,
) -> DemoSummary:
    """Run the story in ``workdir`` and return its summary.

    With ``HMD_KMS_PROVIDER`` set in ``environ`` the configured KMS is used; otherwise the
    local provider with a keyring inside ``workdir`` (NOT FOR PRODUCTION).

    Raises:
        HeimdallKMSError: a step failed.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    hybrid = _demo_settings(workdir, environ)
    db_path = workdir / "demo.db"
    db_path.unlink(missing_ok=True)
    originals = _seed(db_path, hybrid, say)
    store = open_store(f"sqlite:///{db_path}", Target(_TABLE, "ssn"))
    try:
        before = take_census(store)
        say(f"1. the old engine left {before.total:,} SSNs: {_fmt(before.to_dict())}")
        kms = MeteredProvider(load_provider(hybrid))
        with Crypto(
            hybrid, kms=kms, audit=open_sink(hybrid.audit_log), default_actor="demo-app"
        ) as crypto:
            provider, key_id = kms.name.value, kms.key_identifier
            _hybrid_app(db_path, crypto, originals)
            say(
                f"2. hybrid mode on {provider} key {key_id!r}: the app still reads legacy "
                f"values, and writes its new customer {_NEW_ID} as kms_v1"
            )
            say("3. heimdall-kms migrate: one transaction and one batched KMS call per batch")
            report = run_migration(crypto, [store], MigrationOptions(batch_size=250), progress)
        if report.stop_error is not None:
            raise report.stop_error
        after = take_census(store)
        say(
            f"   migrated {report.total('completed'):,} values with {report.kms_calls} KMS "
            f"calls; census now: {_fmt(after.to_dict())}"
        )
    finally:
        store.close()
    verified, legacy_refused, moved_refused = _kms_only(db_path, hybrid, originals, say)
    lifecycle = _rotation(db_path, hybrid, originals, say, progress)
    return DemoSummary(
        workdir=str(workdir),
        provider=provider,
        key_identifier=key_id,
        run_id=report.run_id,
        before=before.to_dict()["encryption_version"],
        after=after.to_dict()["encryption_version"],
        migrated=report.total("completed"),
        kms_calls=report.kms_calls,
        verified=verified,
        legacy_refused_in_kms_mode=legacy_refused,
        moved_value_refused=moved_refused,
        lifecycle=lifecycle,
        audit_events=_count_audit(Path(hybrid.audit_log)),
    )


def _demo_settings(workdir: Path, environ: Mapping[str, str]) -> Settings:
    # The demo plays the old engine too, so it has env keys of its own, never the user's.
    legacy_keys = {
        "default-key-v1": Secret(bytes(primitives.new_dek())),
        _OLD_KEY_ID: Secret(bytes(primitives.new_dek())),
    }
    audit_log = str(workdir / "audit.log")
    if environ.get("HMD_KMS_PROVIDER"):
        overrides = {
            "HMD_ENCRYPTION_MODE": "hybrid",
            "HMD_PII_MASTER_KEY": "",
            "HMD_PII_LEGACY_KEYS": "",
            "HMD_HYBRID_WRITE_FORMAT": "",
        }
        configured = Settings.from_env({**environ, **overrides})
        return dataclasses.replace(
            configured, legacy_keys=legacy_keys, audit_log=audit_log, legacy_key_id="default-key-v1"
        )
    return Settings(
        mode=EncryptionMode.HYBRID,
        legacy_keys=legacy_keys,
        provider=ProviderName.LOCAL,
        kms_key_id="heimdall-pii",
        local_keyring=workdir / "local-keyring.json",
        audit_log=audit_log,
    )


def customers() -> dict[str, str]:
    """The demo's made-up customers: id -> SSN (deterministic, so tests can look for leaks)."""
    return {
        f"c-{i:05d}": f"{100 + i % 800:03d}-{i % 90 + 10:02d}-{i:04d}"
        for i in range(1, _CUSTOMERS + 1)
    }


def _seed(db_path: Path, hybrid: Settings, say: Callable[[str], None]) -> dict[str, str]:
    """The old engine's table. Returns id -> SSN, kept in memory to verify the read-back."""
    originals = customers()
    audit = open_sink(hybrid.audit_log)
    engines = {
        key_id: from_settings(
            dataclasses.replace(
                hybrid, mode=EncryptionMode.LEGACY, provider=None, legacy_key_id=key_id
            ),
            audit=audit,
            default_actor="legacy-engine",
        )
        for key_id in ("default-key-v1", _OLD_KEY_ID)
    }
    ids = list(originals)
    redacted = set(ids[::97])
    by_key = {
        key_id: [
            i
            for n, i in enumerate(ids)
            if (n % 5 == 0) == (key_id == _OLD_KEY_ID) and i not in redacted
        ]
        for key_id in engines
    }
    values = {i: "[REDACTED]" for i in redacted}
    for key_id, chunk in by_key.items():
        sealed = engines[key_id].encrypt_many([(originals[i], {}) for i in chunk])
        values.update({i: env.to_json() for i, env in zip(chunk, sealed, strict=True)})
    rows = [
        (i, values[i], "sha256:" + hashlib.sha256(f"{i}@example.com".encode()).hexdigest())
        for i in ids
    ]
    audit.close()
    with sqlite3.connect(db_path) as db:
        db.execute(f"CREATE TABLE {_TABLE} (id TEXT PRIMARY KEY, ssn TEXT, email TEXT)")
        db.executemany(f"INSERT INTO {_TABLE} VALUES (?, ?, ?)", rows)  # noqa: S608
    say(
        f"0. seeded {_CUSTOMERS:,} customers as the old engine wrote them (env keys "
        f"'default-key-v1' and {_OLD_KEY_ID!r}; emails as sha256: hashes; a few [REDACTED])"
    )
    return {i: originals[i] for i in ids if i not in redacted}


def _hybrid_app(db_path: Path, crypto: Crypto, originals: dict[str, str]) -> None:
    """What the application does in hybrid mode: read an old value, write a new one."""
    with sqlite3.connect(db_path) as db:
        (old,) = db.execute(f"SELECT ssn FROM {_TABLE} WHERE id = 'c-00002'").fetchone()  # noqa: S608
        crypto.decrypt(old, actor="demo-app", reason="demo: customer lookup")
        originals[_NEW_ID] = "078-05-1120"
        envelope = crypto.encrypt(
            originals[_NEW_ID], context={"table": _TABLE, "field": "ssn", "record": _NEW_ID}
        )
        db.execute(f"INSERT INTO {_TABLE} VALUES (?, ?, NULL)", (_NEW_ID, envelope.to_json()))  # noqa: S608


def _kms_only(
    db_path: Path, hybrid: Settings, originals: Mapping[str, str], say: Callable[[str], None]
) -> tuple[int, bool, bool]:
    kms_mode = dataclasses.replace(hybrid, mode=EncryptionMode.KMS, legacy_keys={})
    with sqlite3.connect(db_path) as db:
        rows = dict(db.execute(f"SELECT id, ssn FROM {_TABLE} WHERE ssn != '[REDACTED]'"))  # noqa: S608
        (old_value,) = db.execute(
            "SELECT old_value FROM heimdall_kms_journal ORDER BY row_key LIMIT 1"
        ).fetchone()
    with from_settings(kms_mode, audit=open_sink(hybrid.audit_log)) as crypto:
        ids = sorted(rows)
        texts = crypto.decrypt_many(
            [rows[i] for i in ids],
            actor="demo-analyst",
            reason="demo: read back in kms mode",
            contexts=[{"record": i} for i in ids],
        )
        if [originals[i] for i in ids] != texts:
            raise IntegrityError("demo read back a value that differs from the original")
        say(
            f"4. HMD_ENCRYPTION_MODE=kms, no env key: {len(texts):,} SSNs read back and match "
            f"(e.g. {ids[0]}: {_mask(texts[0])}); every decrypt audited with actor and reason"
        )
        legacy_refused = _refused(
            lambda: crypto.decrypt(old_value, actor="demo", reason="x"), ModeViolationError
        )
        say("   an old env-key value (from the rollback journal) is refused in kms mode")
        moved_refused = _refused(
            lambda: crypto.decrypt(
                rows[ids[0]],
                actor="demo-attacker",
                reason="demo: value copied to another record",
                context={"record": ids[1]},
            ),
            IntegrityError,
        )
        say(f"   {ids[0]}'s SSN read as {ids[1]}'s is refused: the record id is bound in the AAD")
    return len(texts), legacy_refused, moved_refused


def _rotation(
    db_path: Path,
    hybrid: Settings,
    originals: Mapping[str, str],
    say: Callable[[str], None],
    progress: ProgressCallback | None,
) -> dict[str, object]:
    """Rotate, see retirement refused, rewrap, retire, and read everything back."""
    settings = dataclasses.replace(hybrid, mode=EncryptionMode.KMS, legacy_keys={})
    store = open_store(f"sqlite:///{db_path}", Target(_TABLE, "ssn"))
    sink = open_sink(settings.audit_log)
    kms = MeteredProvider(load_provider(settings))
    try:
        before = {row.key: row.value for rows in store.scan(5000) for row in rows}
        turned = rotate(
            kms,
            sink,
            actor="demo-admin",
            if_due=False,
            cadence=timedelta(days=90),
            reason="demo: routine rotation",
        )
        say(
            f"5. heimdall-kms rotate: v{turned.old_version} -> v{turned.new_version}; old "
            "values still decrypt, new ones use the new version"
        )
        try:
            retire(kms, [store], sink, below_version=turned.new_version, actor="demo-admin")
            refused = False
        except RefusedError:
            refused = True
        say(
            f"   retire --below-version {turned.new_version} is refused: stored values still "
            f"need v{turned.old_version}"
        )
        with Crypto(settings, kms=kms, audit=sink, default_actor="demo-admin") as crypto:
            report = run_reencrypt(crypto, [store], ReencryptOptions(batch_size=250), progress)
            if report.stop_error is not None:
                raise report.stop_error
            after = {row.key: row.value for rows in store.scan(5000) for row in rows}
            untouched = all(_ciphertext(after[i]) == _ciphertext(before[i]) for i in originals)
            say(
                f"   reencrypt --mode rewrap: {report.total('completed'):,} DEKs re-wrapped inside "
                f"the KMS; every ciphertext byte-identical: {'yes' if untouched else 'NO'}"
            )
            retire(kms, [store], sink, below_version=turned.new_version, actor="demo-admin")
            ids = sorted(originals)
            texts = crypto.decrypt_many(
                [after[i] or "" for i in ids],
                actor="demo-analyst",
                reason="demo: read back after retirement",
            )
            readable = texts == [originals[i] for i in ids]
        say(
            f"   retire --below-version {turned.new_version}: done; all {len(texts):,} values "
            f"still decrypt: {'yes' if readable else 'NO'}"
        )
    finally:
        store.close()
    return {
        "rotated_to": turned.new_version,
        "retire_refused_first": refused,
        "rewrapped": report.total("completed"),
        "ciphertexts_untouched": untouched,
        "retired_below": turned.new_version,
        "readable_after_retire": readable,
    }


def _ciphertext(value: str | None) -> str:
    return str(json.loads(value or "{}").get("ciphertext"))


def _refused(attempt: Callable[[], object], expected: type[Exception]) -> bool:
    try:
        attempt()
    except expected:
        return True
    return False


def _mask(ssn: str) -> str:
    return "***-**-" + ssn[-4:]


def _fmt(census: Mapping[str, object]) -> str:
    versions = census["encryption_version"]
    assert isinstance(versions, dict)
    return (
        f"{versions['legacy']:,} legacy, {versions['kms_v1']:,} kms_v1, "
        f"{census['skipped']:,} left alone"
    )


def _count_audit(path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            counts[f"{event['event_type']}:{event['result']}"] += 1
    return dict(sorted(counts.items()))
