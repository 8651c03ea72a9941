"""Record the attempt, run it, record the outcome: the audit shape of every lifecycle operation.

A change (a rotation, a retirement, a job run, a rollback, a purge) is preceded by an
``intent`` event and followed by its outcome, ``success`` or ``failure`` with ``error_type``,
under the same ``event_type`` and ``request_id``. The intent is written and synced before the
body runs: when it cannot be written, :class:`AuditWriteError` is raised and nothing is done. A
process killed between the two leaves an intent without an outcome, which
``audit query --dangling`` lists (:func:`heimdall_kms.audit.query.dangling`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any

from heimdall_kms.audit.events import AuditEvent, Result, now_rfc3339
from heimdall_kms.audit.sink import AuditSink
from heimdall_kms.errors import AuditWriteError, HeimdallKMSError
from heimdall_kms.inputs import checked_label

__all__ = ["ATTEMPT_KEY", "Attempt", "audited"]

ATTEMPT_KEY = "attempt"  # in ``details``: the id an intent and its outcome share


@dataclass
class Attempt:
    """What the body adds to the outcome event (its version, details, or a failure it handled).

    A body that reports a failure without raising (a job that stops and returns its report)
    sets ``error``: the outcome is then a failure with that ``error_type``.
    """

    key_version: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: HeimdallKMSError | None = None


@contextmanager
def audited(sink: AuditSink, event: AuditEvent) -> Iterator[Attempt]:
    """Write ``event`` as an intent, run the body, then write its outcome.

    ``event`` is the outcome's template: its ``result`` is ignored.

    Raises:
        InvalidInputError: the actor or the reason is empty, over 512 characters or not
            valid Unicode (nothing written, the body did not run).
        AuditWriteError: the intent could not be written (the body did not run), or the body
            succeeded and its outcome could not be written (the intent stays without one).
        HeimdallKMSError: whatever the body raised, after its failure was recorded (or, if
            that write fails too, left as an intent without an outcome).
    """
    # Bounded before anything is written or done: one audit line must stay readable by the
    # log's writers (docs/audit.md), whatever an operator passes as --actor or --reason.
    checked_label("actor", event.actor)
    if event.reason is not None:
        checked_label("reason", event.reason)
    # One id per attempt, in the intent and its outcome: a rerun under the same request id (a
    # rollback of the same run) is told apart from the attempt a crash left open.
    attempt_id = secrets.token_hex(8)
    sink.emit([replace(event, result=Result.INTENT, details=_with(event.details, attempt_id))])
    attempt = Attempt(event.key_version, dict(event.details or {}))
    try:
        yield attempt
    except HeimdallKMSError as exc:
        _record_failure(sink, _outcome(event, attempt, exc, attempt_id))
        raise
    if attempt.error is not None:
        _record_failure(sink, _outcome(event, attempt, attempt.error, attempt_id))
        return
    _record_success(sink, _outcome(event, attempt, None, attempt_id))


def _record_success(sink: AuditSink, success: AuditEvent) -> None:
    """Write the outcome of a body that succeeded.

    Raises:
        AuditWriteError: it could not be written (the intent stays without an outcome).
    """
    try:
        sink.emit([success])
    except AuditWriteError as exc:
        raise AuditWriteError(
            f"{exc}; the {success.event_type.value} was done and its intent is recorded, "
            "but not its outcome"
        ) from None


def _record_failure(sink: AuditSink, failure: AuditEvent) -> None:
    # The body's error says more; if this write fails too, the intent stays without an outcome.
    with suppress(AuditWriteError):
        sink.emit([failure])


def _with(details: Mapping[str, Any] | None, attempt_id: str) -> dict[str, Any]:
    return {**(details or {}), ATTEMPT_KEY: attempt_id}


def _outcome(
    event: AuditEvent, attempt: Attempt, error: HeimdallKMSError | None, attempt_id: str
) -> AuditEvent:
    return replace(
        event,
        result=Result.FAILURE if error else Result.SUCCESS,
        error_type=error.error_type if error else None,
        key_version=attempt.key_version,
        details=_with(attempt.details, attempt_id),
        timestamp=now_rfc3339(),
    )
