"""Back to the legacy format, the true rollback to the old engine (SPEC §3, reencrypt legacy).

In hybrid mode with the env key configured, every ``kms_v1`` value of a target is decrypted
through the KMS and sealed again in the legacy env-key format, which the existing engine reads
with ``HMD_PII_MASTER_KEY`` alone. The legacy format binds no context: a value rolled back can
be moved to another record unnoticed again, which is why this is for getting off the KMS, not
a routine step. Batching, compare-and-swap, the journal (``migrate --rollback RUN`` puts the
``kms_v1`` values back), progress and resumability are the shared loop's.
"""

from __future__ import annotations

from heimdall_kms import modes
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import ConfigurationError, HeimdallKMSError
from heimdall_kms.inputs import MAX_STORED_PLAINTEXT_BYTES
from heimdall_kms.jobs.batch_job import BatchJob, Changes, Planned
from heimdall_kms.jobs.classify import Slot, ValueKind
from heimdall_kms.jobs.reading import reader_for
from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Match, Row, Swap

__all__ = ["LegacyRollbackJob", "check_legacy_settings"]


def check_legacy_settings(settings: Settings) -> None:
    """Reading through the KMS and writing with the env key (:func:`modes.check_rollback`).

    Raises:
        ConfigurationError: naming the variable to change.
    """
    modes.check_rollback(settings.mode, env_key_set=settings.legacy_key_id in settings.legacy_keys)


class LegacyRollbackJob(BatchJob):
    job = "reencrypt-legacy"
    match = Match.KMS_V1
    writer: Crypto

    def prepare(self) -> None:
        # The same KMS and audit sink, writing the legacy format (the documented switch).
        if self.services.legacy_writer is None:
            raise ConfigurationError(
                "HMD_PII_MASTER_KEY: the rollback to the legacy format writes with the env key; "
                "no writer for it was configured"
            )
        self.writer = self.services.legacy_writer

    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        values: list[tuple[Row, Slot, KmsV1Envelope]] = []
        classify = reader_for(store)
        for row in rows:
            found = classify(row.value)
            if isinstance(found.envelope, KmsV1Envelope) and found.slot is not None:
                values.append((row, found.slot, found.envelope))
            elif found.kind is ValueKind.UNPARSEABLE:
                self.fail(target, row, found.error or "damaged envelope")
            else:
                target.skipped += 1
        if self.options.dry_run:
            return Planned(len(values))
        if not values:
            return []
        outcomes = self.crypto.decrypt_outcomes(
            [envelope for _, _, envelope in values],
            actor=self.options.actor,
            reason=f"reencrypt legacy {self.report.run_id}",
        )
        readable: list[tuple[Row, Slot, str, KmsV1Envelope]] = []
        for (row, slot, envelope), outcome in zip(values, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                self.fail(target, row, outcome)
            elif self.sealable(target, row, outcome, dict(envelope.context)):
                readable.append((row, slot, outcome, envelope))
        if not readable:
            return []
        # The events keep the context the value was bound to; the legacy format cannot.
        sealed = self.writer.encrypt_many(
            [(text, envelope.context) for _, _, text, envelope in readable],
            actor=self.options.actor,
            limit=MAX_STORED_PLAINTEXT_BYTES,
        )
        return [
            Swap(row, slot.put(env.to_json()))
            for (row, slot, _, _), env in zip(readable, sealed, strict=True)
        ]
