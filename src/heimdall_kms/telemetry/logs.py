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
# SDK loggers (azure-identity's credential chain, for one) print multi-line diagnostics of
# their own; the error we raise from them is the one line the user needs.
_NOISY = ("azure", "botocore", "google", "urllib3")


_json = False


def json_enabled() -> bool:
    """True once :func:`configure_logging` set up JSON logs (progress goes there too)."""
    return _json


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or message,
            "message": message,
        }
        found = correlation.current()
        if found is not None:
            document["request_id"] = found.request_id
            if found.trace_id is not None:
                document["trace_id"] = found.trace_id
        for name, value in _fields(record).items():
            document.setdefault(name, value)
        if record.exc_info and record.exc_info[0] is not None:
            document["error"] = record.exc_info[0].__name__
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``heimdall-kms: LEVEL: message [key=value ...]``, one line."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_PROG}: {record.levelname.lower()}: {record.getMessage()}"]
        found = correlation.current()
        if found is not None:
            parts.append(f"request_id={found.request_id}")
        parts += [f"{name}={value}" for name, value in _fields(record).items()]
        if record.exc_info and record.exc_info[0] is not None:
            parts.append(f"error={record.exc_info[0].__name__}")
        return " ".join(" ".join(parts).split())


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
    handler.setFormatter(JSONFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.ERROR)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`configure_logging` installs (so a second call replaces it)."""
