"""Re-encryption after a rotation: bring every ``kms_v1`` value to the latest key version.

* ``rewrap`` re-wraps only the DEK (Vault Transit ``rewrap``, server-side, batched):
  ``ciphertext``, ``nonce`` and ``context`` stay byte-identical and no plaintext or DEK enters
  this process. The routine path after a scheduled rotation.
* ``full`` decrypts and re-encrypts with fresh DEKs. The path after a compromise: whoever
  could unwrap DEKs under the old version knows them, and a rewrap keeps those DEKs.

Candidates are values below the latest version (``full --all-versions``: every value). Legacy
values are skipped (that is ``migrate``'s job). Batching, compare-and-swap, journal, progress
and resumability are the shared loop's (:mod:`heimdall_kms.jobs.batch_job`); ``full`` keeps
no journal (SPEC §3: the replaced envelopes are not kept anywhere they could be restored from).

On an eventually consistent KMS the latest version may not wrap yet right after a rotation:
the job first waits (bounded) until a canary wrap lands on it, and a result that still lands
on an older version is not written and not counted completed; it fails its row, stays a
candidate, and a rerun picks it up (:mod:`heimdall_kms.jobs.propagation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

from heimdall_kms.envelope import Envelope, KmsV1Envelope
from heimdall_kms.errors import HeimdallKMSError, ModeViolationError, NotInEffectError
from heimdall_kms.jobs.batch_job import Changes, JobOptions
from heimdall_kms.jobs.classify import Classified
from heimdall_kms.jobs.fit import TAG_BYTES, Need, SizeModel
from heimdall_kms.jobs.propagation import Propagation, confirm_primary
from heimdall_kms.jobs.report import JobReport, ProgressCallback, TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.jobs.to_legacy import LegacyRollbackJob, check_legacy_settings
from heimdall_kms.jobs.value_job import Candidate, ValueJob, sealed_context
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.base import key_admin
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Match, Row, Swap

__all__ = ["ReencryptMode", "ReencryptOptions", "run_reencrypt"]


class ReencryptMode(StrEnum):
    REWRAP = "rewrap"
    FULL = "full"
    LEGACY = "legacy"  # back to the env-key format (heimdall_kms.jobs.to_legacy)


@dataclass(frozen=True, slots=True)
class ReencryptOptions(JobOptions):
    mode: ReencryptMode = ReencryptMode.REWRAP
    all_versions: bool = False
    # The wait for the latest version to wrap (default: HMD_KMS_PROPAGATION_SECONDS, silent).
    propagation: Propagation | None = None


def run_reencrypt(
    services: JobServices | Crypto,
    stores: Sequence[FieldStore],
    options: ReencryptOptions,
    progress: ProgressCallback | None = None,
) -> JobReport:
    """Re-encrypt every target; returns the report (``stop_error`` set if it had to stop).

    ``services``: as for :func:`heimdall_kms.jobs.migrate.run_migration`.

    Raises:
        ModeViolationError: legacy mode has no KMS. ConfigurationError: ``legacy`` without
            hybrid mode and the env key. StoreError: a target is wrong.
    """
    services = services if isinstance(services, JobServices) else JobServices.of(services)
    _kms_of(services)
    if options.mode is ReencryptMode.LEGACY:
        check_legacy_settings(services.crypto.settings)
        return LegacyRollbackJob(services, options, progress).run(stores)
    return ReencryptJob(services, options, progress).run(stores)


def _kms_of(services: JobServices) -> KeyManagementService:
    """Raises ModeViolationError in legacy mode, which has no KMS; ConfigurationError for a
    provider object without the admin side (the latest version comes from there)."""
    if services.kms is None:
        raise ModeViolationError("re-encryption needs a KMS; HMD_ENCRYPTION_MODE=legacy has none")
    key_admin(services.kms)
    return services.kms


class ReencryptJob(ValueJob):
    job = "reencrypt"
    match = Match.KMS_V1

    def __init__(
        self,
        services: JobServices,
        options: ReencryptOptions,
        progress: ProgressCallback | None = None,
    ) -> None:
        super().__init__(services, options, progress)
        self.kms = _kms_of(services)
        self.mode = options.mode
        self.all_versions = options.all_versions and options.mode is ReencryptMode.FULL
        self.propagation = options.propagation or Propagation(
            bound_seconds=services.propagation_seconds
        )
        self.latest = 0
        self.report.job = f"reencrypt-{options.mode.value}"
        # The envelopes a full re-encryption replaces are the compromised ones (their DEKs are
        # assumed known): they are not journaled, so no rollback can put them back.
        self.journaled = options.mode is not ReencryptMode.FULL

    def prepare(self) -> None:
        self.key_info = self.kms.describe()
        self.latest = self.key_info.latest_version
        if not self.options.dry_run:
            confirm_primary(self.kms, self.latest, self.propagation)

    def convert(self, store: FieldStore, rows: list[Row], target: TargetReport) -> Changes:
        stale = self.candidates(store, rows, target, self._stale, sealed_context)
        if self.options.dry_run:
            return self.planned(
                store,
                [item.row for item in stale],
                lambda: self._needs(self.size_model(stale[0].context), stale),
            )
        if self.mode is ReencryptMode.REWRAP:
            swaps = self._rewrap(stale, target)
        else:
            swaps = self._full(stale, target)
        return [Swap(item.row, item.slot.put(value)) for item, value in swaps]

    def _needs(self, sizes: SizeModel, stale: list[Candidate]) -> list[Need]:
        """What each stale value's new text needs: rewrapped, everything but the wrapped DEK
        is kept; sealed afresh, the plaintext (so the ciphertext) keeps its length."""
        # Every candidate is a kms_v1 envelope (_stale).
        envelopes = [cast(KmsV1Envelope, item.envelope) for item in stale]
        if self.mode is ReencryptMode.REWRAP:
            return [sizes.rewrapped(i.slot, env) for i, env in zip(stale, envelopes, strict=True)]
        return [
            sizes.sealed(item.slot, len(env.ciphertext) - TAG_BYTES, env.context)
            for item, env in zip(stale, envelopes, strict=True)
        ]

    def _stale(self, _: Classified, envelope: Envelope) -> bool:
        return isinstance(envelope, KmsV1Envelope) and (
            self.all_versions or envelope.key_version < self.latest
        )

    def _rewrap(self, stale: list[Candidate], target: TargetReport) -> list[tuple[Candidate, str]]:
        if not stale:
            return []
        swaps: list[tuple[Candidate, str]] = []
        # Every candidate is a kms_v1 envelope (_stale).
        outcomes = self.crypto.rewrap_outcomes(
            [cast(KmsV1Envelope, item.envelope) for item in stale]
        )
        latest = self.latest
        for item, outcome in zip(stale, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                self.fail(target, item.row, outcome)
            elif outcome.key_version >= latest or self._landed(
                target, item.row, outcome.key_version
            ):
                swaps.append((item, outcome.to_json()))
        return swaps

    def _landed(self, target: TargetReport, row: Row, version: int) -> bool:
        """Whether a result is on the latest version; one that is not fails its row (left as
        it was: still a candidate for the next run)."""
        if version >= self.latest:
            return True
        self.fail(
            target,
            row,
            NotInEffectError(
                f"the KMS wrapped it under v{version}, not v{self.latest}: v{self.latest} is "
                "not yet in effect; the value is left as it was for the next run"
            ),
        )
        return False

    def _full(self, stale: list[Candidate], target: TargetReport) -> list[tuple[Candidate, str]]:
        readable = self.opened(target, stale, f"reencrypt full {self.report.run_id}", stated=False)
        # The value keeps the context it was sealed with, so moving it stays detectable.
        return [
            (item, env.to_json())
            for item, env in self.sealed(self.crypto, readable)
            # Only kms_v1 envelopes have a key version to verify.
            if not isinstance(env, KmsV1Envelope) or self._landed(target, item.row, env.key_version)
        ]
