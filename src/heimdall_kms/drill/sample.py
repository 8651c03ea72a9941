"""A throwaway SQLite table of seeded values, and a real migration of it, timed.

The drills seed their table here; ``migrate --estimate`` measures its rate here: the real
migration job (read a batch, decrypt with the env key, seal through the configured KMS,
compare-and-swap, journal, audit, commit) over legacy values sealed with a throwaway env key,
in a directory of its own, deleted afterwards. The configured database, env key, audit
log and metrics are never touched; the KMS only wraps DEKs that are thrown away.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from heimdall_kms.audit import AuditSink, open_sink
from heimdall_kms.composition import build_crypto, job_services
from heimdall_kms.config import EncryptionMode, Secret, Settings
from heimdall_kms.errors import IntegrityError
from heimdall_kms.jobs.estimate import MeasuredRate
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.metrics import Metrics, unexported_metrics
from heimdall_kms.primitives import new_dek, wipe
from heimdall_kms.store import FieldStore, Target, open_store

__all__ = [
    "TABLE",
    "ScratchTable",
    "measure_migration",
    "sample_batches",
    "seed_legacy",
    "synthetic_ssns",
]

TABLE = "drill_customers"


@dataclass(frozen=True, slots=True)
class ScratchTable:
    """``TABLE`` (``id``, ``ssn``) in the SQLite file ``database``."""

    database: Path

    @property
    def target(self) -> Target:
        return Target(TABLE, "ssn")

    def store(self) -> FieldStore:
        return open_store(f"sqlite:///{self.database}", self.target)

    def create(self) -> None:
        with sqlite3.connect(self.database) as db:
            db.execute(f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, ssn TEXT)")

    def values(self) -> dict[str, str]:
        with sqlite3.connect(self.database) as db:
            return dict(db.execute(f"SELECT id, ssn FROM {TABLE}"))  # noqa: S608

    def put(self, rows: Mapping[str, str]) -> None:
        with sqlite3.connect(self.database) as db:
            db.executemany(f"INSERT INTO {TABLE} VALUES (?, ?)", rows.items())  # noqa: S608


def seed_legacy(
    settings: Settings,
    table: ScratchTable,
    plain: Mapping[str, str],
    audit: AuditSink,
    metrics: Metrics,
) -> None:
    """Store ``plain`` (id -> text) as the legacy engine wrote it: env-key envelopes under
    ``settings``' env key, bound to no context."""
    old_engine = build_crypto(
        replace(settings, mode=EncryptionMode.LEGACY),
        kms=None,
        audit=audit,
        metrics=metrics,
        default_actor="legacy-engine",
    )
    sealed = old_engine.encrypt_many([(text, {}) for text in plain.values()])
    table.put({row: e.to_json() for row, e in zip(plain, sealed, strict=True)})


def sample_batches(batch_size: int) -> int:
    """How many batches the measurement runs: at least 8, and at least 4,000 values."""
    return max(8, -(-4000 // batch_size))


def synthetic_ssns(count: int) -> dict[str, str]:
    """``count`` made-up SSN-shaped values by row id (``r-000000`` ...)."""
    return {
        f"r-{i:06d}": f"{100 + i % 800:03d}-{i % 90 + 10:02d}-{i % 10000:04d}" for i in range(count)
    }


def measure_migration(
    settings: Settings, workdir: Path, kms: MeteredProvider, *, batch_size: int
) -> MeasuredRate:
    """Time a real migration of :func:`sample_batches` batches of seeded legacy values
    through ``kms`` (the provider of ``settings`` as a job uses it; closed here), in a
    throwaway SQLite database in ``workdir`` (an empty directory the caller deletes
    afterwards; see the module).

    Raises:
        ConfigurationError: not in hybrid mode.
        KMSError, StoreError, AuditWriteError: the sample run stopped.
        IntegrityError: a sample value did not migrate.
    """
    # A throwaway env key and audit log: the configured ones are never used here. The key
    # stays in this one bytearray (Secret holds it, no copy) and is wiped when the run is
    # over, on every path. Best effort, as for every DEK (heimdall_kms.primitives): each
    # seal and open under it hands the AEAD a ``bytes`` copy that Python cannot wipe.
    env_key = new_dek()
    try:
        try:
            table = ScratchTable(workdir / "sample.db")
            table.create()
            sample = replace(
                settings,
                legacy_keys={settings.legacy_key_id: Secret(env_key)},
                audit_log=str(workdir / "audit.log"),
            )
            metrics = unexported_metrics()
            audit = open_sink(sample.audit_log)  # the run's events, chained, in ``workdir``
            plain = synthetic_ssns(sample_batches(batch_size) * batch_size)
            seed_legacy(sample, table, plain, audit, metrics)
            services = job_services(sample, kms, audit, metrics, actor="heimdall-estimate")
        except BaseException:
            kms.close()
            raise
        return _timed(services, table, MigrationOptions(batch_size, actor="heimdall-estimate"))
    finally:
        wipe(env_key)


def _timed(services: JobServices, table: ScratchTable, options: MigrationOptions) -> MeasuredRate:
    """Migrate every value of ``table``, timing each batch; closes the services."""
    clock = _BatchClock()
    store = table.store()
    try:
        with services.crypto:
            job = run_migration(services, [store], options, clock)
    finally:
        store.close()
    if job.stop_error is not None:
        raise job.stop_error
    if job.failure_count or job.totals.completed != job.totals.total:
        raise IntegrityError(
            f"the sample migration completed {job.totals.completed} of {job.totals.total} values"
        )
    return MeasuredRate(job.totals.completed, clock.seconds, clock.batch_rates())


class _BatchClock:
    """The progress callback of the sample run: when the target started and each batch
    committed, and how many values were done by then (the last call, the empty read at the
    end, adds none)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def __call__(self, target: TargetReport) -> None:
        self.marks.append((time.perf_counter(), target.completed))

    @property
    def seconds(self) -> float:
        return self.marks[-1][0] - self.started if self.marks else 0.0

    def batch_rates(self) -> tuple[float, ...]:
        pairs = zip(self.marks, self.marks[1:], strict=False)
        return tuple((n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in pairs if n1 > n0 and t1 > t0)
