"""The end-to-end story on the embedded default: SQLite plus the local provider.

1. The old engine (legacy mode, env key) has written a ``customers`` table: SSNs as env-key
   envelopes, some under an older key id, emails as ``sha256:`` hashes, a few ``[REDACTED]``.
2. The application moves to hybrid mode: it still reads those values, and new ones go to the
   KMS.
3. ``status`` counts what is stored; ``migrate`` re-encrypts every legacy value through the
   KMS, batch by batch, with progress; ``status`` then proves zero legacy values remain.
4. The application switches to KMS-only mode with no env key configured: every SSN reads back
   (audited), a legacy value is refused, and a value copied to another record is refused.
5. The key lifecycle (:mod:`heimdall_kms.demo_lifecycle`): rotate, see retirement refused,
   rewrap every DEK inside the KMS, retire, read everything back.
6. ``audit verify``: the demo's audit chain is intact.

The demo's own key (:mod:`heimdall_kms.demo_key`): through Vault a throwaway Transit key it
creates and deletes, else a keyring in the work directory. The configured key, its versions,
the configured audit log, database and keyring are never touched; SSNs are only shown masked.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from heimdall_kms import primitives
from heimdall_kms.audit import open_sink
from heimdall_kms.audit.verify import verify
from heimdall_kms.composition import build_crypto, job_services
from heimdall_kms.config import EncryptionMode, ProviderName, Secret, Settings
from heimdall_kms.demo_key import KEYRING_NAME, demo_key
from heimdall_kms.demo_lifecycle import PhaseMeter, ProgressFactory, no_progress, run_lifecycle
from heimdall_kms.demo_seed import NEW_ID, OLD_KEY_ID, TABLE, customers, hybrid_app, seed
from heimdall_kms.errors import IntegrityError, ModeViolationError
from heimdall_kms.jobs.census import Census, take_census
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.metrics import unexported_metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.store import Target, open_store

__all__ = ["DemoSummary", "customers", "run_demo"]

_TABLE = TABLE


@dataclass(frozen=True, slots=True)
class DemoSummary:
    workdir: str
    provider: str
    key_identifier: str
    throwaway_key: bool  # created for the demo and deleted at its end
    run_id: str
    before: Mapping[str, int]
    after: Mapping[str, int]
    left_alone: int  # values that are not envelopes ([REDACTED]): migrate leaves them as they are
    migrated: int
    kms_calls: int
    verified: int
    legacy_refused_in_kms_mode: bool
    moved_value_refused: bool
    lifecycle: Mapping[str, object]
    audit_events: Mapping[str, int]
    audit_chain_lines: int  # `audit verify` found the chain intact over this many lines
    files: tuple[str, ...]  # what the demo left in workdir

    def to_dict(self) -> dict[str, object]:
        document = dataclasses.asdict(self)
        document["files"] = list(self.files)
        return document


@dataclass(frozen=True, slots=True)
class _Migrated:
    provider: str
    run_id: str
    before: Census
    after: Census
    migrated: int
    kms_calls: int


def run_demo(
    workdir: Path,
    environ: Mapping[str, str],
    say: Callable[[str], None],
    progress: ProgressFactory = no_progress,
) -> DemoSummary:
    """Run the story in ``workdir`` on the demo's own key and return its summary.

    With ``HMD_KMS_PROVIDER=vault`` in ``environ`` the story runs on a throwaway Transit key
    it creates and deletes; otherwise on the local provider with a keyring inside ``workdir``.

    Raises:
        HeimdallKMSError: a step failed (a throwaway key is deleted all the same).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    base = _demo_settings(workdir, environ)
    with demo_key(base, workdir, say) as key:
        hybrid = key.settings
        db_path = workdir / "demo.db"
        db_path.unlink(missing_ok=True)
        originals = seed(db_path, hybrid, say)
        provider = key.open_provider()  # once: closed below, after every chapter
        try:
            migrated = _migrate(db_path, hybrid, provider, originals, say, progress)
            verified, legacy_refused, moved_refused = _kms_only(
                db_path, hybrid, provider, originals, say
            )
            lifecycle = _lifecycle(db_path, hybrid, provider, originals, say, progress)
        finally:
            provider.close()
    chain = verify(Path(base.audit_log))
    say(f"6. heimdall-kms audit verify {base.audit_log}: intact, {chain.lines:,} chained lines")
    files = ["demo.db", "audit.log"] + ([] if key.throwaway else [KEYRING_NAME])
    return DemoSummary(
        workdir=str(workdir),
        provider=migrated.provider,
        key_identifier=key.name,
        throwaway_key=key.throwaway,
        run_id=migrated.run_id,
        before=migrated.before.to_dict()["encryption_version"],
        after=migrated.after.to_dict()["encryption_version"],
        left_alone=int(migrated.after.to_dict()["skipped"]),
        migrated=migrated.migrated,
        kms_calls=migrated.kms_calls,
        verified=verified,
        legacy_refused_in_kms_mode=legacy_refused,
        moved_value_refused=moved_refused,
        lifecycle=lifecycle,
        audit_events=_count_audit(Path(base.audit_log)),
        audit_chain_lines=chain.lines,
        files=tuple(name for name in files if (workdir / name).exists()),
    )


def _demo_settings(workdir: Path, environ: Mapping[str, str]) -> Settings:
    """The demo's settings: its own env keys, audit log and database, never the user's.

    The configured provider's connection settings (Vault address, token) are kept; the key is
    chosen by :func:`heimdall_kms.demo_key.demo_key`.
    """
    legacy_keys = {
        "default-key-v1": Secret(bytes(primitives.new_dek())),
        OLD_KEY_ID: Secret(bytes(primitives.new_dek())),
    }
    audit_log = str(workdir / "audit.log")
    if environ.get("HMD_KMS_PROVIDER", "") not in ("", ProviderName.LOCAL.value):
        overrides = {
            "HMD_ENCRYPTION_MODE": "hybrid",
            "HMD_PII_MASTER_KEY": "",
            "HMD_PII_LEGACY_KEYS": "",
            "HMD_PII_MASTER_KEY_FILE": "",
            "HMD_PII_LEGACY_KEYS_FILE": "",
            "HMD_HYBRID_WRITE_FORMAT": "",
        }
        configured = Settings.from_env({**environ, **overrides})
        return dataclasses.replace(
            configured,
            legacy_keys=legacy_keys,
            audit_log=audit_log,
            legacy_key_id="default-key-v1",
            database_url=None,
            local_keyring=None,
        )
    return Settings(
        mode=EncryptionMode.HYBRID,
        legacy_keys=legacy_keys,
        provider=None,
        audit_log=audit_log,
    )


def _migrate(  # noqa: PLR0917 - private, called once
    db_path: Path,
    hybrid: Settings,
    provider: KeyManagementService,
    originals: dict[str, str],
    say: Callable[[str], None],
    progress: ProgressFactory,
) -> _Migrated:
    store = open_store(f"sqlite:///{db_path}", Target(_TABLE, "ssn"))
    try:
        before = take_census(store)
        say(f"1. the old engine left {before.total:,} SSNs: {_fmt(before)}")
        kms = PhaseMeter(provider)
        services = job_services(
            hybrid, kms, open_sink(hybrid.audit_log), unexported_metrics(), actor="demo-app"
        )
        with services.crypto as crypto:
            name, key_id = kms.name.value, kms.key_identifier
            hybrid_app(db_path, crypto, originals)
            say(
                f"2. hybrid mode on {name} key {key_id!r}: the app still reads legacy "
                f"values, and writes its new customer {NEW_ID} as kms_v1"
            )
            say("3. heimdall-kms migrate: one transaction and one batched KMS call per batch")
            with progress("migrate") as view:
                report = run_migration(services, [store], MigrationOptions(batch_size=250), view)
        if report.stop_error is not None:
            raise report.stop_error
        after = take_census(store)
        say(
            f"   migrated {report.totals.completed:,} values with {report.kms_calls} KMS "
            f"calls; census now: {_fmt(after)}"
        )
    finally:
        store.close()
    return _Migrated(name, report.run_id, before, after, report.totals.completed, report.kms_calls)


def _lifecycle(  # noqa: PLR0917 - private, called once
    db_path: Path,
    hybrid: Settings,
    provider: KeyManagementService,
    originals: Mapping[str, str],
    say: Callable[[str], None],
    progress: ProgressFactory,
) -> Mapping[str, object]:
    settings = dataclasses.replace(hybrid, mode=EncryptionMode.KMS, legacy_keys={})
    store = open_store(f"sqlite:///{db_path}", Target(_TABLE, "ssn"))
    try:
        sink = open_sink(settings.audit_log, settings)
        done = run_lifecycle(settings, provider, store, sink, originals, say, progress)
    finally:
        store.close()
    return done.to_dict()


def _kms_only(
    db_path: Path,
    hybrid: Settings,
    provider: KeyManagementService,
    originals: Mapping[str, str],
    say: Callable[[str], None],
) -> tuple[int, bool, bool]:
    kms_mode = dataclasses.replace(hybrid, mode=EncryptionMode.KMS, legacy_keys={})
    with sqlite3.connect(db_path) as db:
        rows = dict(db.execute(f"SELECT id, ssn FROM {_TABLE} WHERE ssn != '[REDACTED]'"))  # noqa: S608
        (old_value,) = db.execute(
            "SELECT old_value FROM heimdall_kms_journal ORDER BY row_key LIMIT 1"
        ).fetchone()
    sink = open_sink(hybrid.audit_log)
    with build_crypto(
        kms_mode, kms=PhaseMeter(provider), audit=sink, metrics=unexported_metrics()
    ) as crypto:
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


def _refused(attempt: Callable[[], object], expected: type[Exception]) -> bool:
    try:
        attempt()
    except expected:
        return True
    return False


def _mask(ssn: str) -> str:
    return "***-**-" + ssn[-4:]


_NOT_ENVELOPE_NAMES = {"null": "NULL", "sha256_hash": "sha256: hashes", "redacted": "[REDACTED]"}


def _fmt(census: Census) -> str:
    document = census.to_dict()
    versions = document["encryption_version"]
    skipped = document["skipped"]
    kinds = ", ".join(
        f"{count:,} {_NOT_ENVELOPE_NAMES.get(kind, kind)}"
        for kind, count in document["not_envelope"].items()
        if count
    )
    alone = f"; {skipped:,} left alone ({kinds}: not envelopes, so never re-encrypted)"
    return f"{versions['legacy']:,} legacy, {versions['kms_v1']:,} kms_v1" + (
        alone if skipped else ""
    )


def _count_audit(path: Path) -> dict[str, int]:
    counts: Counter[str] = Counter()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            event = json.loads(line)
            counts[f"{event['event_type']}:{event['result']}"] += 1
    return dict(sorted(counts.items()))
