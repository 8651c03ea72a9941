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
from heimdall_kms.envelope import Envelope
from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.inputs import MAX_STORED_PLAINTEXT_BYTES
from heimdall_kms.jobs.batch_job import BatchJob, Changes, JobOptions, Planned, new_run_id
from heimdall_kms.jobs.classify import Slot, ValueKind
from heimdall_kms.jobs.reading import reader_for
from heimdall_kms.jobs.report import JobReport, ProgressCallback, TargetReport
from heimdall_kms.jobs.services import JobServices
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


class MigrationJob(BatchJob):
    job = "migrate"
    match = Match.LEGACY

    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        # Each row's context is made once and used for its checks, decrypt and seal.
        legacy: list[tuple[Row, Slot, dict[str, str]]] = []
        envelopes: list[Envelope] = []
        classify = reader_for(store)
        for row in rows:
            found = classify(row.value)
            if found.kind is ValueKind.LEGACY and found.envelope and found.slot:
                context = store.target.context(row.key)
                if not self.usable_context(target, row, context):
                    continue  # failed by id before it is decrypted, never the batch
                legacy.append((row, found.slot, context))
                envelopes.append(found.envelope)  # parsed once, opened as is
            elif found.kind is ValueKind.UNPARSEABLE:
                self.fail(target, row, found.error or "damaged envelope")
            else:
                target.skipped += 1
        if not legacy:
            return []
        # The row's context is stated so that each decrypt event names the record it read
        # (SPEC §8); a legacy value binds none, so it is not checked against it, except on a
        # target declared migrated (heimdall_kms.legacy_context).
        outcomes = self.crypto.decrypt_outcomes(
            envelopes,
            actor=self.options.actor,
            reason=f"migrate {self.report.run_id}",
            contexts=[context for _, _, context in legacy],
        )
        readable: list[tuple[Row, Slot, str, dict[str, str]]] = []
        for (row, slot, context), outcome in zip(legacy, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                self.fail(target, row, outcome)
            elif self.sealable(target, row, outcome, context):
                readable.append((row, slot, outcome, context))
        if self.options.dry_run:
            # A dry run proves each value decrypts with the env key, and makes no KMS call.
            return Planned(len(readable))
        if not readable:
            return []
        sealed = self.crypto.encrypt_many(
            [(text, context) for _, _, text, context in readable],
            actor=self.options.actor,
            limit=MAX_STORED_PLAINTEXT_BYTES,
        )
        return [
            Swap(row, slot.put(env.to_json()))
            for (row, slot, _, _), env in zip(readable, sealed, strict=True)
        ]
