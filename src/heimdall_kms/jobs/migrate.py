"""The migration worker: every legacy env-key envelope of a target becomes ``kms_v1``.

Per batch (see :mod:`heimdall_kms.jobs.batch_job` for the shared loop): decrypt the legacy
values with the env key (audited, no KMS call), seal them again through the KMS in one batched
call bound to ``{"table", "field", "record"}``. Values that are not envelopes are never
written. A value that fails is reported by id and left as it was; the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from heimdall_kms import modes
from heimdall_kms.config import Settings
from heimdall_kms.jobs.batch_job import Changes, JobOptions, new_run_id
from heimdall_kms.jobs.classify import ValueKind
from heimdall_kms.jobs.fit import Need
from heimdall_kms.jobs.report import JobReport, ProgressCallback, TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.jobs.value_job import ValueJob
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Match, Row, Swap

__all__ = ["MigrationJob", "MigrationOptions", "check_settings", "new_run_id", "run_migration"]

MigrationOptions = JobOptions


def check_settings(settings: Settings) -> None:
    """Migration reads the env key and writes through the KMS (:func:`modes.check_migration`).

    Raises:
        ConfigurationError: naming the variable to change.
    """
    modes.check_migration(settings.mode, settings.hybrid_write)


def run_migration(
    services: JobServices | Crypto,
    stores: Sequence[FieldStore],
    options: JobOptions,
    progress: ProgressCallback | None = None,
) -> JobReport:
    """Migrate every target; returns the report (``stop_error`` set if the run had to stop).

    ``services``: what the job uses (:func:`heimdall_kms.composition.job_services`), or a
    facade the caller built (:meth:`JobServices.of`).

    Raises:
        ConfigurationError: not in hybrid mode. StoreError: a target is wrong (before any
            write). Failures during the run (KMS, database, audit) stop it and are reported.
    """
    services = services if isinstance(services, JobServices) else JobServices.of(services)
    check_settings(services.crypto.settings)
    return MigrationJob(services, options, progress).run(stores)


class MigrationJob(ValueJob):
    job = "migrate"
    match = Match.LEGACY

    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        legacy = self.candidates(
            store,
            rows,
            target,
            lambda value, _: value.kind is ValueKind.LEGACY,
            lambda row, _: store.target.context(row.key),
        )
        # The row's context is stated so that each decrypt event names the record it read
        # (SPEC §8); a legacy value binds none, so it is not checked against it, except on a
        # target declared migrated (heimdall_kms.legacy_context).
        readable = self.opened(target, legacy, f"migrate {self.report.run_id}", stated=True)
        if self.options.dry_run:
            # A dry run proves each value decrypts with the env key, and seals nothing: on a
            # column with a bound it tells which new values will not fit (the KMS calls, a
            # read of the key's latest version and type and, where those do not tell the
            # length, one wrap of a throwaway DEK, change nothing).
            def needs() -> list[Need]:
                sizes = self.size_model(readable[0][0].context)
                return [
                    sizes.sealed(item.slot, len(text.encode("utf-8")), item.context)
                    for item, text in readable
                ]

            return self.planned(store, [item.row for item, _ in readable], needs)
        return [
            Swap(item.row, item.slot.put(env.to_json()))
            for item, env in self.sealed(self.crypto, readable)
        ]
