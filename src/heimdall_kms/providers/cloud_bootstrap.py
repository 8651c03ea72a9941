"""What ``gcp bootstrap`` and ``azure bootstrap`` would do, as data (no SDK here).

A :class:`Plan` is what a provider's bootstrap module read from the KMS: the steps that create
the key (each with the exact API calls a real run sends, none when the KMS already matches)
and the least-privilege access of the four roles, as policy documents the operator applies
with the cloud's own tools; the same for the audit checkpoints' signing key (the writing
roles may sign with it, the audit role may only verify). A dry run prints the plan; a real
run sends its calls, then prints it again, so the two cannot disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["ROLES", "WRITERS", "ApiCall", "Change", "Grant", "Plan", "Step"]

ROLES = ("app", "worker", "admin", "audit")
WRITERS = ("app", "worker", "admin")  # the roles that write audit events, and so sign them


class Change(StrEnum):
    CREATED = "created"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request of a real run: the SDK method and its arguments (never a secret)."""

    method: str
    arguments: Mapping[str, Any]

    def __str__(self) -> str:
        return f"{self.method} {json.dumps(self.arguments, sort_keys=True)}"


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    change: Change
    calls: tuple[ApiCall, ...] = ()
    notes: tuple[str, ...] = ()  # what was found and deliberately left as it is
    creates_key: bool = False  # the step that creates the master key (audited as key.create)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "change": self.change.value,
            "calls": [{"method": c.method, "arguments": dict(c.arguments)} for c in self.calls],
            "notes": list(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Grant:
    """The access of one heimdall role: a role on the key's scope, and how to grant it."""

    role: str  # app | worker | admin | audit
    purpose: str
    grants: str  # the cloud role granted (a predefined one, or the custom one below)
    scope: str  # the resource it is granted on: the key, never the project or vault
    member: str  # who receives it (from the command line, or the suggested name)
    permissions: tuple[str, ...]  # what that role allows, as the cloud names it
    documents: Mapping[str, Any] = field(default_factory=dict)  # JSON to apply, by name
    commands: tuple[str, ...] = ()  # the cloud CLI commands that apply it

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "purpose": self.purpose,
            "grants": self.grants,
            "scope": self.scope,
            "member": self.member,
            "permissions": list(self.permissions),
            "documents": dict(self.documents),
            "commands": list(self.commands),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    provider: str
    key: str
    steps: tuple[Step, ...]
    access: tuple[Grant, ...]
    key_details: Mapping[str, Any] = field(default_factory=dict)  # for the key.create event
    signing_key: str | None = None  # the audit checkpoints' key (HMD_AUDIT_SIGNING_KEY)
    signing_access: tuple[Grant, ...] = ()  # writers sign with it, the audit role verifies

    @property
    def creates_key(self) -> bool:
        return any(s.creates_key and s.change is Change.CREATED for s in self.steps)

    def to_dict(self, *, dry_run: bool) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "key": self.key,
            "dry_run": dry_run,
            "steps": [s.to_dict() for s in self.steps],
            "access": [g.to_dict() for g in self.access],
            "signing_key": self.signing_key,
            "signing_access": [g.to_dict() for g in self.signing_access],
        }
