"""The migration worker: every legacy env-key envelope of a target becomes ``kms_v1``.

Per batch: read the next rows (keyset order; locked on PostgreSQL), decrypt the legacy ones
with the env key (audited, no KMS call), seal them again through the KMS in one batched call
bound to ``{"table", "field", "record"}``, then compare-and-swap them back and journal the old
values in the same transaction. Values that are not envelopes are never written. A value that
fails is reported by id and left as it was; the run goes on. A failure of the KMS or the
database stops the run with the current batch rolled back: nothing is half-written, and a
rerun (the job is idempotent) finishes it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from heimdall_kms.audit import AuditEvent, EventType, Result
from heimdall_kms.config import EncryptionMode, Settings, WriteFormat
from heimdall_kms.envelope import Envelope
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.jobs.classify import ValueKind, classify
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.report import JobReport, ProgressCallback, RowFailure, TargetReport
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Match, Row, Swap

__all__ = ["MigrationOptions", "new_run_id", "run_migration"]


@dataclass(frozen=True, slots=True)
class MigrationOptions:
    batch_size: int = 250
    dry_run: bool = False
    run_id: str = ""
    actor: str = "migrate"


def new_run_id() -> str:
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def check_settings(settings: Settings) -> None:
    """Migration reads the env key and writes through the KMS: only hybrid mode does both.

    Raises:
        ConfigurationError: naming the variable to change.
    """
    if settings.mode is not EncryptionMode.HYBRID:
        raise ConfigurationError(
            "HMD_ENCRYPTION_MODE: migrate needs hybrid (it reads the env key and writes "
            f"through the KMS); it is {settings.mode.value}"
        )
    if settings.hybrid_write is WriteFormat.LEGACY:
        raise ConfigurationError(
            "HMD_HYBRID_WRITE_FORMAT: migrate writes kms_v1; unset the legacy rollback switch"
        )


def run_migration(
    crypto: Crypto,
    stores: Sequence[FieldStore],
    options: MigrationOptions,
    progress: ProgressCallback | None = None,
) -> JobReport:
    """Migrate every target; returns the report (``stopped_by`` set if the run had to stop).

    Raises:
        ConfigurationError: not in hybrid mode. StoreError: a target is wrong (before any
            write). Failures during the run (KMS, database, audit) stop it and are reported.
    """
    check_settings(crypto.settings)
    for store in stores:
        store.check(writable=not options.dry_run)
    if not options.dry_run:
        for store in stores:
            store.ensure_journal()
    run = _MigrationRun(crypto, options, progress)
    try:
        for store in stores:
            run.target(store)
    except HeimdallKMSError as exc:
        run.report.stopped_by = f"{exc.error_type}: {exc}"
        run.report.stop_error = exc
    finally:
        run.report.finished = time.monotonic()
        if isinstance(crypto.kms, MeteredProvider):
            run.report.kms_calls = crypto.kms.total_calls
    return run.report


class _MigrationRun:
    def __init__(
        self, crypto: Crypto, options: MigrationOptions, progress: ProgressCallback | None
    ) -> None:
        self.crypto = crypto
        self.options = options
        self.progress = progress
        self.report = JobReport("migrate", options.run_id or new_run_id(), options.dry_run)

    def target(self, store: FieldStore) -> None:
        candidates = store.count(Match.LEGACY)
        # Rows the SQL pre-filter rules out (not envelopes, or already kms_v1) are never read;
        # they count as skipped all the same.
        target = TargetReport(
            str(store.target), total=candidates, skipped=store.count(Match.ALL) - candidates
        )
        self.report.targets.append(target)
        self._publish(target)
        after: object | None = None
        while True:
            with store.batch(after, self.options.batch_size, Match.LEGACY) as batch:
                if not batch.rows:
                    return
                after = batch.rows[-1].id
                swaps = self._convert(store, batch.rows, target)
                if self.options.dry_run:
                    target.completed += len(swaps)
                elif swaps:
                    applied = batch.swap(swaps, self.report.run_id)
                    target.completed += sum(applied)
                    target.conflicts += len(applied) - sum(applied)
                target.batches += 1
            self._audit_batch(target)
            self._publish(target)

    def _convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> list[Swap]:
        """Decrypt the batch's legacy values and seal them as kms_v1; failures are reported."""
        legacy: list[Row] = []
        envelopes: list[Envelope] = []
        for row in rows:
            target.examined += 1
            found = classify(row.value)
            kind = found.kind
            if kind is ValueKind.LEGACY and found.envelope is not None:
                legacy.append(row)
                envelopes.append(found.envelope)  # parsed once, opened as is
            elif kind is ValueKind.UNPARSEABLE:
                self._fail(target, row, "malformed_envelope", "damaged envelope")
            else:
                target.skipped += 1
        if not legacy:
            return []
        outcomes = self.crypto.decrypt_outcomes(
            envelopes,
            actor=self.options.actor,
            reason=f"migrate {self.report.run_id}",
        )
        readable: list[tuple[Row, str]] = []
        for row, outcome in zip(legacy, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                self._fail(target, row, outcome.error_type, str(outcome))
            else:
                readable.append((row, outcome))
        if self.options.dry_run:
            # A dry run proves each value decrypts with the env key, and makes no KMS call.
            return [Swap(row, "") for row, _ in readable]
        if not readable:
            return []
        sealed = self.crypto.encrypt_many(
            [(text, store.target.context(row.key)) for row, text in readable],
            actor=self.options.actor,
        )
        return [Swap(row, env.to_json()) for (row, _), env in zip(readable, sealed, strict=True)]

    def _fail(self, target: TargetReport, row: Row, error_type: str, message: str) -> None:
        target.failed += 1
        self.report.fail(RowFailure(target.target, row.key, error_type, message))

    def _audit_batch(self, target: TargetReport) -> None:
        self.crypto.audit.emit(
            [
                AuditEvent(
                    event_type=EventType.REENCRYPT_BATCH,
                    actor=self.options.actor,
                    request_id=self.report.run_id,
                    result=Result.SUCCESS,
                    field_identifier=target.target,
                    details={"job": "migrate", "dry_run": self.report.dry_run, **target.to_dict()},
                )
            ]
        )

    def _publish(self, target: TargetReport) -> None:
        self.crypto.metrics.set_progress(
            total=self.report.total("total"),
            completed=self.report.total("completed"),
            failed=self.report.failure_count,
        )
        if self.progress is not None:
            self.progress(target)
