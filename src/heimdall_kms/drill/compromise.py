"""``heimdall-kms drill compromise``: the key-compromise runbook, executed end to end.

Seeds a table, has two services read from it (the compromise window), declares the current
key version compromised, rotates, fully re-encrypts every affected value with fresh DEKs,
proves no replaced envelope was kept where a rollback could restore it, retires the
compromised version, proves its wrapped DEKs no longer unwrap in the KMS and that every value
still decrypts, and lists the decrypts of the window from the audit log — the blast radius.
Each step is timed against the P1 SLA: rotation within 4 hours of the declaration,
re-encryption within 24 hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from heimdall_kms.audit.query import AuditFilter, query
from heimdall_kms.drill.environment import DrillEnvironment
from heimdall_kms.drill.report import DrillReport, Step
from heimdall_kms.drill.sample import synthetic_ssns
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import IntegrityError, KeyVersionRetiredError
from heimdall_kms.jobs.census import take_census
from heimdall_kms.jobs.estimate import Projection, TargetCount
from heimdall_kms.jobs.journal import journaled_below
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.store import FieldStore

__all__ = ["REENCRYPT_SLA", "ROTATE_SLA", "run_compromise_drill", "seed"]

ROTATE_SLA = 4 * 3600.0
REENCRYPT_SLA = 24 * 3600.0
_BATCH = 250  # rows per batch of the drill's re-encryption
_READERS = (("svc-reporting", "nightly report"), ("analyst-eve", "ticket SUP-1234"))


def seed(env: DrillEnvironment, records: int) -> dict[str, str]:
    """A table of kms_v1 SSNs; returns id -> plaintext, kept in memory to verify later."""
    plain = synthetic_ssns(records)
    target = env.target
    sealed = env.crypto.encrypt_many(
        [(text, target.context(row)) for row, text in plain.items()], actor="drill-seed"
    )
    env.put({row: e.to_json() for row, e in zip(plain, sealed, strict=True)})
    return plain


def run_compromise_drill(
    env: DrillEnvironment,
    *,
    records: int = 500,
    targets: Sequence[TargetCount] = (),
    unmeasured: Sequence[str] = (),
) -> DrillReport:
    """Run every step; a failed step raises, and the report so far says which one.

    With ``targets`` (the configured targets and their kms_v1 counts, from their census), the
    report projects their full re-encryption at the rate the drill's own step measured;
    ``unmeasured``: the targets whose database's own reads and writes that rate leaves out.

    Raises:
        HeimdallKMSError: a step failed.
    """
    report = _CompromiseDrill(env, records).run()
    if targets:
        report.projection = project(report, targets, unmeasured)
    return report


def project(
    report: DrillReport, targets: Sequence[TargetCount], unmeasured: Sequence[str] = ()
) -> Projection:
    """The targets at the values/s of the drill's ``re-encrypt (full)`` step (0 if it failed)."""
    step = next((s for s in report.steps if s.name == "re-encrypt (full)"), None)
    done, seconds = _measured(step)
    rate = done / seconds if done and seconds > 0 else 0.0
    source = (
        f"the drill's full re-encryption: {done:,} values in {seconds:g}s ({_batches(done)} "
        f"batches of {_BATCH}: read, decrypt, seal, compare-and-swap, audit, commit) in its "
        f"throwaway SQLite database, one process, {report.provider}"
    )
    return Projection(tuple(targets), rate, source, unmeasured=tuple(unmeasured))


def _batches(values: int) -> int:
    return -(-values // _BATCH)


def _measured(step: Step | None) -> tuple[int, float]:
    """The values a re-encryption step re-encrypted (0 if it failed) and its seconds (0 if it
    never ran)."""
    if step is None:
        return 0, 0.0
    return (int(step.details.get("re_encrypted", 0)) if step.ok else 0), step.seconds


class _CompromiseDrill:
    def __init__(self, env: DrillEnvironment, records: int) -> None:
        self.env = env
        self.records = records
        kms = env.kms
        self.report = DrillReport(
            "compromise",
            kms.name.value,
            kms.key_identifier,
            slas={"rotate": ROTATE_SLA, "re-encrypt (full)": REENCRYPT_SLA},
        )
        self.plain: dict[str, str] = {}
        self.old_wrapped: list[str] = []
        self.window_start = datetime.now(UTC)
        self.window_end = self.window_start
        self.compromised = 0
        self.new_version = 0
        self.run_id = ""

    def run(self) -> DrillReport:
        store = self.env.store()
        try:
            self.report.run_steps(
                [
                    ("seed", self.seed),
                    ("declare", self.declare),
                    ("rotate", self.rotate),
                    ("re-encrypt (full)", lambda: self.reencrypt(store)),
                    ("prove nothing restorable", lambda: self.nothing_restorable(store)),
                    ("census", lambda: self.census(store)),
                    ("retire", lambda: self.retire(store)),
                    ("prove old DEKs refused", self.old_deks_refused),
                    ("prove every value decrypts", self.all_decrypt),
                    ("blast radius", self.blast_radius),
                    ("verify audit chain", self.env.verify_audit),
                ]
            )
        finally:
            store.close()
        return self.report

    def seed(self) -> dict[str, object]:
        self.window_start = datetime.now(UTC) - timedelta(seconds=1)
        self.plain = seed(self.env, self.records)
        stored = [parse(value) for value in self.env.values().values()]
        self.old_wrapped = [e.encrypted_dek for e in stored if isinstance(e, KmsV1Envelope)]
        self._read_in_window()
        return {"records": self.records, "readers": [actor for actor, _ in _READERS]}

    def _read_in_window(self) -> None:
        """The services that read during the window: each decrypts the first fifth."""
        current = self.env.values()
        rows = sorted(self.plain)[: self.records // 5]
        for actor, reason in _READERS:
            self.env.crypto.decrypt_many([current[r] for r in rows], actor=actor, reason=reason)

    def declare(self) -> dict[str, object]:
        self.compromised = self.env.kms.describe().latest_version
        self.window_end = datetime.now(UTC)
        return {
            "compromised_version": self.compromised,
            "window": [self.window_start.isoformat(), self.window_end.isoformat()],
        }

    def rotate(self) -> dict[str, object]:
        turned = rotate(
            self.env.kms,
            self.env.audit,
            actor="drill-incident-commander",
            if_due=False,
            cadence=timedelta(days=90),
            reason=f"P1 drill: key version {self.compromised} compromised",
        )
        self.new_version = turned.new_version
        return {"old_version": turned.old_version, "new_version": turned.new_version}

    def reencrypt(self, store: FieldStore) -> dict[str, object]:
        job = run_reencrypt(
            self.env.crypto,
            [store],
            ReencryptOptions(
                batch_size=_BATCH, actor="drill-incident-commander", mode=ReencryptMode.FULL
            ),
        )
        if job.stop_error is not None:
            raise job.stop_error
        self.run_id = job.run_id
        return {
            "re_encrypted": job.totals.completed,
            "failed": job.failure_count,
            "run_id": job.run_id,
        }

    def nothing_restorable(self, store: FieldStore) -> dict[str, object]:
        """No journal row keeps a replaced (compromised) envelope for a rollback to restore."""
        journaled = store.journal(self.run_id) if store.has_journal() else []
        kms = self.env.kms
        below = journaled_below([store], kms.name.value, kms.key_identifier, self.compromised + 1)
        if journaled or below:
            raise IntegrityError("compromised envelopes are still kept in the journal")
        return {"journaled_by_the_run": len(journaled), "journaled_compromised": 0}

    def census(self, store: FieldStore) -> dict[str, object]:
        census = take_census(store)
        below = sum(n for (_, _, v), n in census.key_versions.items() if v <= self.compromised)
        if below:
            raise IntegrityError(f"{below} values still under the compromised version")
        return {"values_under_compromised_versions": below}

    def retire(self, store: FieldStore) -> dict[str, object]:
        retired = retire(
            self.env.kms,
            [store],
            self.env.audit,
            below_version=self.new_version,
            actor="drill-incident-commander",
            reason="P1 drill",
        )
        return retired.to_dict()

    def old_deks_refused(self) -> dict[str, object]:
        outcomes = self.env.kms.unwrap_many(self.old_wrapped, [{}] * len(self.old_wrapped))
        refused = sum(isinstance(o, KeyVersionRetiredError) for o in outcomes)
        if refused != len(self.old_wrapped):
            raise IntegrityError("an old wrapped DEK still unwraps after retirement")
        return {"old_wrapped_deks": len(self.old_wrapped), "refused_by_kms": refused}

    def all_decrypt(self) -> dict[str, object]:
        current = self.env.values()
        ids = sorted(self.plain)
        texts = self.env.crypto.decrypt_many(
            [current[i] for i in ids],
            actor="drill-verifier",
            reason="P1 drill: post-incident verification",
        )
        if texts != [self.plain[i] for i in ids]:
            raise IntegrityError("a value decrypted to something else after re-encryption")
        return {"verified": len(texts)}

    def blast_radius(self) -> dict[str, object]:
        found = blast_radius(self.env, self.window_start, self.window_end, self.compromised)
        self.report.findings["blast_radius"] = found
        return found


def blast_radius(
    env: DrillEnvironment, start: datetime, end: datetime, version: int
) -> dict[str, object]:
    """Who decrypted what under the compromised version during the window (from the audit)."""
    events = _decrypts_under(env, start, end, version)
    by_actor = Counter(str(e["actor"]) for e in events)
    by_field = Counter(str(e.get("field_identifier")) for e in events)
    records = sorted({str((e.get("context") or {}).get("record")) for e in events})
    return {
        "decrypts": len(events),
        "by_actor": dict(by_actor),
        "by_field": dict(by_field),
        "records_exposed": len(records),
        "first_records": records[:10],
    }


def _decrypts_under(
    env: DrillEnvironment, start: datetime, end: datetime, version: int
) -> list[dict[str, Any]]:
    """The successful decrypts of the window under ``version`` or an older one."""
    return [
        e
        for e in query(
            env.audit_log,
            AuditFilter(event_types=["crypto.decrypt"], since=start, until=end, result="success"),
        )
        if isinstance(e.get("key_version"), int) and e["key_version"] <= version
    ]
