"""NDJSON streams in bounded memory: read a batch of lines, process it, write it, repeat.

Lines longer than ``MAX_LINE_BYTES`` are refused without being read whole. A line that is not
a JSON object is reported with its number, never echoed (it may hold plaintext PII), and the
stream goes on — unless ``strict``, which stops at the first. Output order is input order.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, TextIO

from heimdall_kms.errors import HeimdallKMSError, InvalidInputError
from heimdall_kms.json_keys import RepeatedKeyError, unique_keys

__all__ = ["MAX_LINE_BYTES", "StreamReport", "checked_record", "json_record", "process_ndjson"]

MAX_LINE_BYTES = 16 * 1024 * 1024
Handler = Callable[[Sequence[dict[str, Any]]], Sequence[dict[str, Any] | HeimdallKMSError]]


@dataclass
class StreamReport:
    records: int = 0
    written: int = 0
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, line: int, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 1000:
            self.problems.append(f"line {line}: {message}")


def process_ndjson(
    source: BinaryIO,
    out: TextIO,
    handler: Handler,
    *,
    batch_size: int = 500,
    strict: bool = False,
    report_problem: Callable[[str], None] | None = None,
) -> StreamReport:
    """Stream ``source`` through ``handler`` in batches to ``out``.

    Raises:
        InvalidInputError: with ``strict``, the first bad line (by number).
        HeimdallKMSError: the KMS or the audit log failed; what was written stays written.
    """
    return _Stream(out, handler, strict, report_problem).run(source, batch_size)


class _Stream:
    def __init__(
        self,
        out: TextIO,
        handler: Handler,
        strict: bool,
        report_problem: Callable[[str], None] | None,
    ) -> None:
        self.out = out
        self.handler = handler
        self.strict = strict
        self.report_problem = report_problem
        self.report = StreamReport()

    def run(self, source: BinaryIO, batch_size: int) -> StreamReport:
        batch: list[tuple[int, dict[str, Any]]] = []
        for numbered in self._records(source):
            batch.append(numbered)
            if len(batch) >= batch_size:
                self.flush(batch)
                batch = []
        if batch:
            self.flush(batch)
        return self.report

    def _records(self, source: BinaryIO) -> Iterator[tuple[int, dict[str, Any]]]:
        """Each record with its line number; a bad line is reported (or, strict, raised)."""
        for number, raw in enumerate(iter(partial(source.readline, MAX_LINE_BYTES + 1), b""), 1):
            record = self._parse(source, number, raw)
            if record is not None:
                yield number, record

    def _parse(self, source: BinaryIO, number: int, raw: bytes) -> dict[str, Any] | None:
        """The record on one line (read at most ``MAX_LINE_BYTES`` + 1 bytes of it); None
        for a blank line or a bad one, which is reported."""
        if len(raw) > MAX_LINE_BYTES:
            _skip_rest_of_line(source)
            self.bad(number, f"longer than {MAX_LINE_BYTES} bytes")
            return None
        if not raw.strip():
            return None
        record = json_record(raw)
        if record is None:
            self.bad(number, "not a JSON object")
        return record

    def bad(self, number: int, message: str) -> None:
        self.report.problem(number, message)
        if self.strict:
            raise InvalidInputError(
                f"line {number}: {message} (strict: the first bad line stops the stream)"
            )
        if self.report_problem is not None:
            self.report_problem(f"line {number}: {message}")

    def flush(self, batch: list[tuple[int, dict[str, Any]]]) -> None:
        results = self.handler([record for _, record in batch])
        self.report.records += len(batch)
        for (number, _), result in zip(batch, results, strict=True):
            if isinstance(result, HeimdallKMSError):
                self.bad(number, f"{result.error_type}: {result}")
                continue
            self.out.write(json.dumps(result, ensure_ascii=False, separators=(",", ":")) + "\n")
            self.report.written += 1
        self.out.flush()


def json_record(raw: bytes) -> dict[str, Any] | None:
    """The line as a JSON object; None when it is not one (or not JSON at all)."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


_UNIQUE_KEYS = json.JSONDecoder(object_pairs_hook=unique_keys)


def checked_record(raw: bytes) -> dict[str, Any] | str:
    """The line as a JSON object, for a check: or what keeps it from being one.

    An object that repeats a key is refused: a reader keeps one of the two values (Python's
    json the last, others the first), so a check that reads one cannot speak for the other:
    ``{"ssn": "<plaintext>", "ssn": "<envelope>"}`` holds the plaintext whatever it saw.
    """
    try:
        value = _UNIQUE_KEYS.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except RepeatedKeyError:
        return "repeats a key (readers differ on its value)"
    except (ValueError, RecursionError):
        return "not a JSON object"
    return value if isinstance(value, dict) else "not a JSON object"


def _skip_rest_of_line(source: BinaryIO) -> None:
    while True:
        chunk = source.readline(MAX_LINE_BYTES)
        if not chunk or chunk.endswith(b"\n"):
            return
