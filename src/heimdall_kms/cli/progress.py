"""Progress people can see: a bar with rate and ETA on a terminal, throttled lines otherwise.

Progress goes to stderr; stdout stays free for the summary (``--json`` or text).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.telemetry.logs import json_enabled

__all__ = ["ProgressView"]

_log = logging.getLogger("heimdall_kms.jobs")


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} values/s" if speed else "", style="progress.data.speed")


class ProgressView:
    """Callable per batch with the target's running report."""

    def __init__(
        self,
        job: str,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._job = job
        self._stream = stream or sys.stderr
        self._interval = interval
        self._clock = clock
        self._bar: Progress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._started: dict[str, float] = {}
        self._last_line = float("-inf")
        # With HMD_LOG_FORMAT=json, stderr carries only JSON lines: progress becomes log events.
        self._json = json_enabled()
        if self._stream.isatty() and not self._json:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )

    def __enter__(self) -> ProgressView:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def __call__(self, target: TargetReport) -> None:
        done = target.completed + target.failed + target.conflicts
        if self._bar is not None:
            self._draw(self._bar, target, done)
            return
        now = self._clock()
        started = self._started.setdefault(target.target, now)
        if now - self._last_line < self._interval and done < target.total:
            return
        self._last_line = now
        rate = _rate(done, now - started)
        if self._json:
            self._log_line(target, done, rate)
        else:
            self._print_line(target, done, rate)

    def _draw(self, bar: Progress, target: TargetReport, done: int) -> None:
        description = f"{self._job} {target.target}{_pacing(target)}"
        if target.target not in self._tasks:
            self._tasks[target.target] = bar.add_task(description, total=max(target.total, 1))
        bar.update(self._tasks[target.target], completed=done, description=description)

    def _log_line(self, target: TargetReport, done: int, rate: float) -> None:
        _log.info(
            "%s %s: %d/%d",
            self._job,
            target.target,
            done,
            target.total,
            extra={
                "event": "job.progress",
                "fields": {
                    "job": self._job,
                    "target": target.target,
                    "done": done,
                    "total": target.total,
                    "failed": target.failed,
                    "values_per_second": round(rate, 1),
                },
            },
        )

    def _print_line(self, target: TargetReport, done: int, rate: float) -> None:
        eta = (target.total - done) / rate if rate > 0 else None
        eta_text = f", ETA {eta:,.0f}s" if eta is not None and done < target.total else ""
        print(
            f"{self._job} {target.target}: {done:,}/{target.total:,} "
            f"({rate:,.0f} values/s{eta_text}; failed {target.failed}){_pacing(target)}",
            file=self._stream,
            flush=True,
        )


def _rate(done: int, elapsed: float) -> float:
    return done / elapsed if elapsed > 0 else 0.0


def _pacing(target: TargetReport) -> str:
    """`` — KMS throttled 12 times, paced at 2.4 requests/s`` once the KMS pushed back."""
    if not target.throttled:
        return ""
    rate = f", paced at {target.kms_rate:,.2g} requests/s" if target.kms_rate else ""
    return f" — KMS throttled {target.throttled:,} times{rate}"
