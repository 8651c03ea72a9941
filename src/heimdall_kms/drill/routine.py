"""``drill rotation`` (the routine 90-day path) and ``drill migration`` (env keys to the KMS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

from heimdall_kms.composition import build_crypto
from heimdall_kms.config import EncryptionMode
from heimdall_kms.drill.compromise import seed
from heimdall_kms.drill.environment import DrillEnvironment
from heimdall_kms.drill.report import DrillReport
from heimdall_kms.drill.sample import seed_legacy
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import IntegrityError, KeyVersionRetiredError, ModeViolationError
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.journal import purge, rollback
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.service import Crypto

__all__ = ["run_migration_drill", "run_rotation_drill"]

Steps = list[tuple[str, Callable[[], dict[str, object]]]]


def _run(report: DrillReport, steps: Steps) -> DrillReport:
    report.run_steps(steps)
    return report


def run_rotation_drill(env: DrillEnvironment, *, records: int = 500) -> DrillReport:
    """Seed, rotate, rewrap (ciphertexts untouched), retire, verify.

    Raises:
        HeimdallKMSError: a step failed.
    """
    kms, crypto = env.kms, env.crypto
    report = DrillReport("rotation", kms.name.value, kms.key_identifier)
    store = env.store()
    state: dict[str, object] = {}

    def do_seed() -> dict[str, object]:
        state["plain"] = seed(env, records)
        state["before"] = env.values()
        return {"records": records}

    def do_rotate() -> dict[str, object]:
        turned = rotate(
            kms,
            env.audit,
            actor="drill-operator",
            if_due=False,
            cadence=timedelta(days=90),
            reason="routine rotation drill",
        )
        state["new"] = turned.new_version
        return turned.to_dict()

    def do_rewrap() -> dict[str, object]:
        job = run_reencrypt(crypto, [store], ReencryptOptions(actor="drill-operator"))
        if job.stop_error is not None:
            raise job.stop_error
        before, after = state["before"], env.values()
        assert isinstance(before, dict)
        same = all(_ciphertext(after[i]) == _ciphertext(before[i]) for i in before)
        if not same:
            raise IntegrityError("a rewrap changed a ciphertext")
        return {"rewrapped": job.totals.completed, "ciphertexts_untouched": same}

    def do_retire() -> dict[str, object]:
        new = int(str(state["new"]))
        return retire(
            kms,
            [store],
            env.audit,
            below_version=new,
            actor="drill-operator",
            reason="routine rotation drill",
        ).to_dict()

    def do_verify() -> dict[str, object]:
        return _verify_all(env, crypto, state)

    try:
        return _run(
            report,
            [
                ("seed", do_seed),
                ("rotate", do_rotate),
                ("re-encrypt (rewrap)", do_rewrap),
                ("retire", do_retire),
                ("prove old DEKs refused and every value decrypts", do_verify),
                ("verify audit chain", env.verify_audit),
            ],
        )
    finally:
        store.close()


def run_migration_drill(env: DrillEnvironment, *, records: int = 500) -> DrillReport:
    """Seed legacy values, dry-run, migrate, census at zero, read in kms mode, roll back,
    migrate again, purge the journal.

    Raises:
        HeimdallKMSError: a step failed.
    """
    crypto = env.crypto
    report = DrillReport("migration", env.kms.name.value, env.kms.key_identifier)
    store = env.store()
    plain = {f"r-{i:06d}": f"{i:09d}" for i in range(records)}
    state: dict[str, object] = {}

    def do_seed() -> dict[str, object]:
        seed_legacy(env.settings, env.table, plain, env.audit, env.metrics)
        return {"legacy_values": records}

    def do_migrate(dry_run: bool) -> dict[str, object]:
        job = run_migration(
            crypto, [store], MigrationOptions(dry_run=dry_run, actor="drill-migrator")
        )
        if job.stop_error is not None or job.failure_count:
            raise job.stop_error or IntegrityError(f"{job.failure_count} values failed")
        state["run"] = job.run_id
        return {"run_id": job.run_id, "completed": job.totals.completed, "dry_run": dry_run}

    def do_census() -> dict[str, object]:
        census = take_census(store)
        if census.legacy:
            raise IntegrityError("legacy values remain after the migration")
        return {"legacy": census.legacy, "kms_v1": census.kinds[ValueKind.KMS_V1]}

    def do_kms_only() -> dict[str, object]:
        kms_only = build_crypto(
            replace(env.settings, mode=EncryptionMode.KMS, legacy_keys={}),
            kms=env.kms,
            audit=env.audit,
            metrics=env.metrics,
        )
        current = env.values()
        ids = sorted(plain)
        texts = kms_only.decrypt_many(
            [current[i] for i in ids], actor="drill-app", reason="kms-only read"
        )
        if texts != [plain[i] for i in ids]:
            raise IntegrityError("a migrated value decrypts to something else")
        return {"verified_in_kms_mode": len(texts)}

    def do_rollback() -> dict[str, object]:
        result = rollback([store], str(state["run"]), env.audit, "drill-migrator")
        if result.totals.conflicts:
            raise IntegrityError("rollback met values changed since the run")
        return {"restored": result.totals.restored}

    def do_purge() -> dict[str, object]:
        return {
            "deleted": purge(
                [store], env.audit, "drill-migrator", older_than_days=0, run_id=None
            ).total_deleted
        }

    try:
        return _run(
            report,
            [
                ("seed legacy values", do_seed),
                ("dry run", lambda: do_migrate(True)),
                ("migrate", lambda: do_migrate(False)),
                ("census at zero", do_census),
                ("read in kms mode, no env key", do_kms_only),
                ("roll back", do_rollback),
                ("migrate again", lambda: do_migrate(False)),
                ("census at zero again", do_census),
                ("purge the journal", do_purge),
                ("verify audit chain", env.verify_audit),
            ],
        )
    finally:
        store.close()


def _verify_all(
    env: DrillEnvironment, crypto: Crypto, state: dict[str, object]
) -> dict[str, object]:
    refused, old = _refused_old_deks(env, state["before"])
    texts, expected = _decrypted_all(env, crypto, state["plain"])
    if refused != old or texts != expected:
        raise IntegrityError("old DEKs still unwrap, or a value no longer decrypts")
    return {"old_deks_refused": refused, "verified": len(texts)}


def _decrypted_all(
    env: DrillEnvironment, crypto: Crypto, plain: object
) -> tuple[list[str], list[str]]:
    """Every seeded value decrypted from the table, and the plaintexts seeded, in id order."""
    assert isinstance(plain, dict)
    current = env.values()
    ids = sorted(plain)
    texts = crypto.decrypt_many(
        [current[i] for i in ids], actor="drill-verifier", reason="rotation drill verification"
    )
    return texts, [plain[i] for i in ids]


def _refused_old_deks(env: DrillEnvironment, before: object) -> tuple[int, int]:
    """How many of the DEKs wrapped before the rotation the KMS refuses to unwrap, of how many."""
    assert isinstance(before, dict)
    old = [e.encrypted_dek for e in map(parse, before.values()) if isinstance(e, KmsV1Envelope)]
    refused = sum(
        isinstance(o, KeyVersionRetiredError) for o in env.kms.unwrap_many(old, [{}] * len(old))
    )
    return refused, len(old)


def _ciphertext(value: str) -> bytes:
    envelope = parse(value)
    if not isinstance(envelope, KmsV1Envelope):
        raise ModeViolationError("a drill value is not kms_v1")
    return envelope.ciphertext
