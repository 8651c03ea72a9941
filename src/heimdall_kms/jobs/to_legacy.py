"""Back to the legacy format, the true rollback to the old engine (SPEC §3, reencrypt legacy).

In hybrid mode with the env key configured, every ``kms_v1`` value of a target is decrypted
through the KMS and sealed again in the legacy env-key format, which the existing engine reads
with ``HMD_PII_MASTER_KEY`` alone. The legacy format binds no context: a value rolled back can
be moved to another record unnoticed again, which is why this is for getting off the KMS, not
a routine step. Batching, compare-and-swap, the journal (``migrate --rollback RUN`` puts the
``kms_v1`` values back), progress and resumability are the shared loop's.
"""

from __future__ import annotations

from typing import cast

from heimdall_kms import modes
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope
from heimdall_kms.errors import ConfigurationError
from heimdall_kms.jobs.batch_job import Changes
from heimdall_kms.jobs.fit import legacy_need
from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.jobs.value_job import ValueJob, sealed_context
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Match, Row, Swap

__all__ = ["LegacyRollbackJob", "check_legacy_settings"]


def check_legacy_settings(settings: Settings) -> None:
    """Reading through the KMS and writing with the env key (:func:`modes.check_rollback`).

    Raises:
        ConfigurationError: naming the variable to change.
    """
    modes.check_rollback(settings.mode, env_key_set=settings.legacy_key_id in settings.legacy_keys)


class LegacyRollbackJob(ValueJob):
    job = "reencrypt-legacy"
    match = Match.KMS_V1
    writer: Crypto

    def prepare(self) -> None:
        # The same KMS and audit sink, writing the legacy format (the documented switch).
        if self.services.legacy_writer is None:
            raise ConfigurationError(
                "HMD_PII_MASTER_KEY: the rollback to the legacy format writes with the env key, "
                "and these job services were given no writer for it"
            )
        self.writer = self.services.legacy_writer

    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        values = self.candidates(
            store,
            rows,
            target,
            lambda _, envelope: isinstance(envelope, KmsV1Envelope),
            sealed_context,
        )
        if self.options.dry_run:
            key_id = self.writer.settings.legacy_key_id
            return self.planned(
                store,
                [item.row for item in values],
                # Every candidate is a kms_v1 envelope (the filter above).
                lambda: [
                    legacy_need(item.slot, cast(KmsV1Envelope, item.envelope), key_id)
                    for item in values
                ],
            )
        readable = self.opened(
            target, values, f"reencrypt legacy {self.report.run_id}", stated=False
        )
        # The events keep the context the value was bound to; the legacy format cannot.
        return [
            Swap(item.row, item.slot.put(env.to_json()))
            for item, env in self.sealed(self.writer, readable)
        ]
