"""``heimdall-kms audit query``: who did what, to which field, with which key, and when."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from heimdall_kms.errors import InvalidInputError

__all__ = ["AuditFilter", "dangling", "query"]

_CHAINED = frozenset({"seq", "prev_hash", "hash", "event_type"})


@dataclass(frozen=True, slots=True)
class AuditFilter:
    event_types: Sequence[str] = ()
    actor: str | None = None
    field: str | None = None
    key_version: int | None = None
    result: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        if self.event_types and event.get("event_type") not in self.event_types:
            return False
        if any(event.get(key) != wanted for key, wanted in self._asked()):
            return False
        return self._in_window(event)

    def _asked(self) -> Iterator[tuple[str, object]]:
        """The event keys this filter asks for one value of, with that value."""
        asked = (
            ("actor", self.actor),
            ("field_identifier", self.field),
            ("key_version", self.key_version),
            ("result", self.result),
        )
        return ((key, wanted) for key, wanted in asked if wanted is not None)

    def _in_window(self, event: dict[str, Any]) -> bool:
        if self.since is None and self.until is None:
            return True  # the timestamp is not even read
        moment = _timestamp(event)
        # An open end of the window is the event's own moment.
        return moment is not None and (self.since or moment) <= moment <= (self.until or moment)


def _timestamp(event: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(event.get("timestamp")))
    except ValueError:
        return None


def query(path: Path, selection: AuditFilter) -> Iterator[dict[str, Any]]:
    """The events of the log that match, in log order.

    A file with a line that is not a chained audit event is refused before anything is
    yielded: a query over the wrong file (or a damaged one) must not answer "nobody did it".
    ``audit verify`` proves the chain itself is intact.

    Raises:
        InvalidInputError: the file cannot be read, or is not an audit log.
    """
    for _ in _events(path):
        pass  # the whole file is checked first, so a refusal comes before any output
    for event in _events(path):
        if selection.matches(event):
            yield event


def dangling(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``intent`` events no outcome followed, in log order.

    An outcome answers the intent with the same ``details.attempt`` id; an event without one
    answers the latest open intent of the same ``event_type`` and ``request_id``. What is left
    was started and never recorded as finished: the process died in between (or its outcome
    could not be written), and the change may or may not have happened.
    """
    open_intents: dict[tuple[object, object, object], list[int]] = defaultdict(list)
    unanswered: dict[int, dict[str, Any]] = {}  # by position in the log, in log order
    for number, event in enumerate(events):
        key = _answer_key(event)
        if event.get("result") == "intent":
            open_intents[key].append(number)
            unanswered[number] = event
        elif open_intents.get(key):
            del unanswered[open_intents[key].pop()]
    return list(unanswered.values())


def _answer_key(event: dict[str, Any]) -> tuple[object, object, object]:
    """What pairs an outcome with its intent: the event type, request id and attempt id."""
    details = event.get("details")
    attempt = details.get("attempt") if isinstance(details, dict) else None
    return (event.get("event_type"), event.get("request_id"), attempt)


def _events(path: Path) -> Iterator[dict[str, Any]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InvalidInputError(f"cannot read audit log {path}: {exc.strerror}") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            yield _event(raw, number, path)


def _event(raw: bytes, number: int, path: Path) -> dict[str, Any]:
    """Line ``number`` of the log at ``path``, which must be a chained audit event.

    Raises:
        InvalidInputError: it is not.
    """
    try:
        event = json.loads(raw)
    except ValueError:
        event = None
    if not isinstance(event, dict) or not event.keys() >= _CHAINED:
        raise InvalidInputError(
            f"{path} is not an audit log: line {number} is not a chained audit event "
            "(if it is one, run heimdall-kms audit verify on it)"
        )
    return event
