"""The steps the value jobs (migrate, re-encrypt, back to legacy) take on one batch of rows.

Find the candidates (a parsed envelope, where it sits in the stored text, the context it is
read and sealed with), open them in one batched call, seal them again in one batched call.
A row that cannot take a step fails by its id and never the batch; a value that is not an
envelope of the job's kind is counted as skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from heimdall_kms.context_json import CheckedContext, aad_json
from heimdall_kms.envelope import Envelope, KmsV1Envelope, check_context
from heimdall_kms.errors import (
    ConfigurationError,
    HeimdallKMSError,
    InvalidInputError,
    PermissionDeniedError,
)
from heimdall_kms.inputs import MAX_STORED_PLAINTEXT_BYTES, plaintext_bytes
from heimdall_kms.jobs.batch_job import BatchJob, Planned
from heimdall_kms.jobs.classify import Classified, Slot, ValueKind
from heimdall_kms.jobs.fit import Need, SizeModel, measure, size_model
from heimdall_kms.jobs.reading import reader_for
from heimdall_kms.jobs.report import RowFailure, TargetReport
from heimdall_kms.providers.base import KeyAdmin, KeyInfo
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore, Row

__all__ = ["Candidate", "ValueJob", "sealed_context"]


@dataclass(frozen=True, slots=True)
class Candidate:
    """A row whose stored envelope the job replaces."""

    row: Row
    envelope: Envelope
    slot: Slot  # where the envelope sits in the stored text
    # What it is read and sealed with, checked once: every later step takes it as it is.
    context: CheckedContext


def sealed_context(_: Row, envelope: Envelope) -> Mapping[str, str]:
    """The context a ``kms_v1`` value was sealed with (a legacy value binds none)."""
    return envelope.context if isinstance(envelope, KmsV1Envelope) else {}


# A SQLite BLOB holding an envelope: the census counts it; a job does not replace bytes with
# text the application may not read, and must not call the row skipped either.
_BINARY = (
    "the value is stored as bytes (a BLOB), not text: it is left as it was; store it as text "
    "and run again"
)


class ValueJob(BatchJob):
    """A :class:`BatchJob` that opens stored envelopes and seals them again."""

    # What the KMS said of its key, where the job asked (the new texts' lengths follow).
    key_info: KeyInfo | None = None
    _sizes: SizeModel | None = None

    def planned(
        self, store: FieldStore, rows: list[Row], needs: Callable[[], list[Need]]
    ) -> Planned:
        """A dry run's answer for ``rows``: on a column with a bound, with the characters each
        new text needs (``needs``: computed, nothing sealed; asked only for such a column)."""
        if store.max_chars is None or not rows:
            return Planned(len(rows))
        return Planned(len(rows), tuple(zip(rows, needs(), strict=True)))

    def size_model(self, context: Mapping[str, str]) -> SizeModel:
        """How long the texts this job's KMS key seals are (:mod:`heimdall_kms.jobs.fit`);
        ``context``: the first value's, which a measuring wrap is made under."""
        if self._sizes is None:
            kms = self.crypto.kms
            if kms is None:
                raise ConfigurationError("a dry run on a column with a bound needs the KMS")
            # Reading the key's metadata changes nothing (no wrap, no new version). A token
            # that may not read it leaves the version unknown: every count of digits is
            # allowed for, and a value is said to fit only if it does with any of them.
            if self.key_info is None and isinstance(kms, KeyAdmin):
                with contextlib.suppress(PermissionDeniedError):
                    self.key_info = kms.describe()
            sizes = size_model(kms, self.key_info)
            if not sizes.exact:
                latest = None if self.key_info is None else self.key_info.latest_version
                sizes = measure(kms, context, latest) or sizes
            self._sizes = sizes
        return self._sizes

    def fail(self, target: TargetReport, row: Row, error: HeimdallKMSError | str) -> None:
        target.failed += 1
        if isinstance(error, HeimdallKMSError):
            failure = RowFailure(target.target, row.key, error.error_type, str(error))
        else:
            failure = RowFailure(target.target, row.key, "malformed_envelope", error)
        self.report.fail(failure)

    def candidates(
        self,
        store: FieldStore,
        rows: list[Row],
        target: TargetReport,
        wanted: Callable[[Classified, Envelope], bool],
        context: Callable[[Row, Envelope], Mapping[str, str]],
    ) -> list[Candidate]:
        """The rows holding an envelope the job wants, with the context they are read and
        sealed with; damaged ones, ones stored as bytes, and ones whose context cannot be
        stated and sealed, fail, the rest are skipped."""
        found: list[Candidate] = []
        classify = reader_for(store)
        for row in rows:
            value = classify(row.value)
            envelope, slot = value.envelope, value.slot
            if envelope is not None and slot is not None and wanted(value, envelope):
                if row.binary:
                    self.fail(target, row, _BINARY)
                    continue
                checked = self._checked(target, row, context(row, envelope))
                if checked is not None:
                    found.append(Candidate(row, envelope, slot, checked))
            elif value.kind is ValueKind.UNPARSEABLE:
                self.fail(target, row, value.error or "damaged envelope")
            else:
                target.skipped += 1
        return found

    def opened(
        self, target: TargetReport, items: list[Candidate], reason: str, *, stated: bool
    ) -> list[tuple[Candidate, str]]:
        """Each candidate's plaintext, in one batched call (``stated``: each is read with its
        context stated, so its decrypt event names the record); a value that cannot be opened
        or sealed again fails its own row."""
        if not items:
            return []
        if stated:
            for item in items:
                aad_json(item.context)  # made once: the decrypt's audit line and the AAD reuse it
        outcomes = self.crypto.decrypt_outcomes(
            [item.envelope for item in items],
            actor=self.options.actor,
            reason=reason,
            contexts=[item.context for item in items] if stated else None,
        )
        readable: list[tuple[Candidate, str]] = []
        for item, outcome in zip(items, outcomes, strict=True):
            if isinstance(outcome, HeimdallKMSError):
                self.fail(target, item.row, outcome)
            elif self._sealable(target, item.row, outcome):
                readable.append((item, outcome))
        return readable

    def sealed(
        self, writer: Crypto, readable: list[tuple[Candidate, str]]
    ) -> list[tuple[Candidate, Envelope]]:
        """Each value sealed again through ``writer``, bound to its candidate's context, in one
        batched call."""
        if not readable:
            return []
        envelopes = writer.encrypt_many(
            [(text, item.context) for item, text in readable],
            actor=self.options.actor,
            limit=MAX_STORED_PLAINTEXT_BYTES,
        )
        return list(zip([item for item, _ in readable], envelopes, strict=True))

    def _checked(
        self, target: TargetReport, row: Row, context: Mapping[str, str]
    ) -> CheckedContext | None:
        # Checked per value before the batched calls, so that one unusable record id never
        # fails (or stops) the rest of the batch.
        try:
            checked = check_context(context)
        except InvalidInputError as exc:
            self.fail(target, row, exc)
            return None
        return checked

    def _sealable(self, target: TargetReport, row: Row, text: str) -> bool:
        # Checked per value before the batched call, so that one oversized value never fails
        # (or stops) the rest of the batch.
        if len(text) <= MAX_STORED_PLAINTEXT_BYTES // 4:  # UTF-8 is at most 4 bytes a char
            return True
        try:
            plaintext_bytes(text, MAX_STORED_PLAINTEXT_BYTES)
        except InvalidInputError as exc:
            self.fail(target, row, exc)
            return False
        return True
