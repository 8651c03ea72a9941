"""A drill's report: each step with its duration, checked against the runbook's SLA."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from heimdall_kms.errors import HeimdallKMSError
from heimdall_kms.jobs.estimate import Projection

__all__ = ["DrillReport", "Step"]


@dataclass
class Step:
    name: str
    started_at: str
    seconds: float = 0.0
    ok: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class DrillReport:
    drill: str
    provider: str
    key: str
    # name -> (seconds allowed, steps counted from the declaration up to and including this one)
    slas: dict[str, float] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    findings: dict[str, Any] = field(default_factory=dict)
    # The re-encryption of the configured targets, projected from the drill's measured rate.
    projection: Projection | None = None
    # Why there is no projection (no targets configured), where the drill makes one.
    projection_note: str | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        current = Step(name, datetime.now(UTC).isoformat())
        self.steps.append(current)
        started = time.perf_counter()
        try:
            yield current
            current.ok = True
        finally:
            current.seconds = round(time.perf_counter() - started, 3)

    def run_steps(self, steps: Sequence[tuple[str, Callable[[], dict[str, Any]]]]) -> None:
        """Run the steps in order; the first that fails stops the drill and is recorded."""
        for name, action in steps:
            try:
                with self.step(name) as current:
                    current.details = action()
            except HeimdallKMSError as exc:
                self.findings["stopped_at"] = {
                    "step": name,
                    "error_type": exc.error_type,
                    "message": str(exc),
                }
                return

    def elapsed_until(self, name: str) -> float:
        """Seconds from the start of the ``declare`` step (or the first step) to ``name``'s end."""
        names = [step.name for step in self.steps]
        start = names.index("declare") if "declare" in names else 0
        total = 0.0
        for step in self.steps[start:]:
            total += step.seconds
            if step.name == name:
                return total
        return total

    @property
    def passed(self) -> bool:
        within = self.projection is None or self.projection.within_sla
        return within and all(s.ok for s in self.steps) and self._slas_met()

    def _slas_met(self) -> bool:
        return all(self.elapsed_until(name) <= limit for name, limit in self.slas.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "drill": self.drill,
            "provider": self.provider,
            "key": self.key,
            "passed": self.passed,
            "steps": [
                {
                    "name": s.name,
                    "started_at": s.started_at,
                    "seconds": s.seconds,
                    "ok": s.ok,
                    "details": s.details,
                }
                for s in self.steps
            ],
            "sla": [
                {
                    "until": name,
                    "limit_seconds": limit,
                    "elapsed_seconds": round(self.elapsed_until(name), 3),
                    "met": self.elapsed_until(name) <= limit,
                }
                for name, limit in self.slas.items()
            ],
            "projection": None if self.projection is None else self.projection.to_dict(),
            **({"projection_note": self.projection_note} if self.projection_note else {}),
            "findings": self.findings,
        }

    def markdown(self) -> str:
        doc = self.to_dict()
        lines = [
            f"# Drill report: {self.drill}",
            "",
            f"- provider: {self.provider}, key: `{self.key}`",
            f"- result: **{'PASSED' if doc['passed'] else 'FAILED'}**",
            "",
            "| step | started | seconds | result |",
            "| --- | --- | ---: | --- |",
        ]
        lines += [_step_row(step) for step in doc["steps"]]
        lines += _sla_table(doc["sla"])
        lines += self._projection_section()
        lines += _findings_section(self.findings)
        return "\n".join(lines) + "\n"

    def _projection_section(self) -> list[str]:
        if self.projection is None:
            note = self.projection_note
            return ["", "## Projection for the configured targets", "", note] if note else []
        return ["", "## Projection for the configured targets", "", *self.projection.lines()]

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        stem = f"drill-{self.drill}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        as_json, as_md = directory / f"{stem}.json", directory / f"{stem}.md"
        as_json.write_text(json.dumps(self.to_dict(), indent=2, default=str), encoding="utf-8")
        as_md.write_text(self.markdown(), encoding="utf-8")
        return as_json, as_md


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


def _sla_table(slas: list[dict[str, Any]]) -> list[str]:
    if not slas:
        return []
    return [
        "",
        "| SLA: from the declaration until | limit | elapsed | met |",
        "| --- | ---: | ---: | --- |",
        *(_sla_row(sla) for sla in slas),
    ]


def _findings_section(findings: dict[str, Any]) -> list[str]:
    if not findings:
        return []
    return ["", "## Findings", "", "```json", json.dumps(findings, indent=2, default=str), "```"]


def _step_row(step: dict[str, Any]) -> str:
    return (
        f"| {step['name']} | {step['started_at']} | {step['seconds']} | "
        f"{'ok' if step['ok'] else 'FAILED'} |"
    )


def _sla_row(sla: dict[str, Any]) -> str:
    return (
        f"| {sla['until']} | {_hours(sla['limit_seconds'])} | "
        f"{sla['elapsed_seconds']} s | {'yes' if sla['met'] else 'NO'} |"
    )
