"""Operational logs: ``HMD_LOG_FORMAT=text`` (one human line) or ``json`` (one JSON object a
line), on stderr, with the stdlib :mod:`logging`.

structlog is not a dependency, and what is needed here is small: a formatter over the records
the package and uvicorn already emit. Every JSON line has ``time``, ``level``, ``logger``,
``event`` and ``message``, and ``request_id`` / ``trace_id`` inside an admin API request;
fields a call site passes as ``extra={"fields": {...}}`` are added. An exception is named by
its type only: its message or traceback could hold data.

These lines never take the audit stream's shape: an audit line has ``seq``, ``prev_hash`` and
``hash`` and never ``level``; an operational line always has ``level`` and never ``hash``. A
collector reading stderr with both (``HMD_AUDIT_LOG=stderr``) routes by that
(docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from heimdall_kms.telemetry import correlation
from heimdall_kms.telemetry.settings import LogFormat

__all__ = ["JSONFormatter", "TextFormatter", "configure_logging", "json_enabled"]

_PROG = "heimdall-kms"
_NOISY = ("azure", "botocore", "google", "urllib3")


_json = False


def json_enabled() -> bool:
    """True once :func:`configure_logging` set up JSON logs (progress goes there too)."""
    return _json


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


def _error(record: logging.LogRecord) -> str | None:
    """The type name of the record's exception (never its message: it could hold data)."""
    kind = record.exc_info[0] if record.exc_info else None
    return kind.__name__ if kind is not None else None


def _request_ids() -> dict[str, str]:
    """The admin API request's id and trace id, inside one."""
    found = correlation.current()
    if found is None:
        return {}
    ids = {"request_id": found.request_id}
    if found.trace_id is not None:
        ids["trace_id"] = found.trace_id
    return ids


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or message,
            "message": message,
            **_request_ids(),
        }
        for name, value in _fields(record).items():
            document.setdefault(name, value)
        error = _error(record)
        if error is not None:
            document["error"] = error
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``heimdall-kms: LEVEL: message [key=value ...]``, one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_PROG}: {record.levelname.lower()}: {record.getMessage()}"]
        found = correlation.current()
        if found is not None:
            parts.append(f"request_id={found.request_id}")
        parts += [f"{name}={value}" for name, value in _fields(record).items()]
        error = _error(record)
        if error is not None:
            parts.append(f"error={error}")
        return " ".join(" ".join(parts).split())


_FORMATTERS: dict[LogFormat, type[logging.Formatter]] = {
    LogFormat.TEXT: TextFormatter,
    LogFormat.JSON: JSONFormatter,
}


def configure_logging(log_format: LogFormat, level: int, *, stream: TextIO | None = None) -> None:
    """One stderr handler in ``log_format`` on the root logger (replacing ours from an earlier
    call). Like :func:`logging.basicConfig`, it leaves a root logger that someone else (an
    embedding application, a test harness) has given handlers alone."""
    root = logging.getLogger()
    if any(not isinstance(h, _Handler) for h in root.handlers):
        return
    for old in list(root.handlers):
        root.removeHandler(old)
    global _json  # noqa: PLW0603 - the process's one log format, set once by the CLI.
    _json = log_format is LogFormat.JSON
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_FORMATTERS[log_format]())
    root.addHandler(handler)
    root.setLevel(level)
    _quiet_sdks()


def _quiet_sdks() -> None:
    # SDK loggers (azure-identity's credential chain, for one) print multi-line diagnostics of
    # their own; the error we raise from them is the one line the user needs.
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so a second call replaces it)."""
