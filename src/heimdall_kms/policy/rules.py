"""PII policies (SPEC §6): per-field actions, loaded from JSON or YAML in the legacy shape.

``{"rules": {"email": "hash", "ssn": "encrypt", "password": "scrub"},
"default_action": "passthrough"}``

A rule key without a dot names a field at any depth (``email`` matches ``email`` and
``customer.email``); a dotted key names one path (``customer.address.zip``), and wins over a
name rule. List elements are walked through (``orders.card`` applies to each order). A rule on
an object applies to every value under it. Optional: ``"record_id": "id"`` binds each
encrypted value to its record as well as its field.

Actions: ``scrub`` (``[REDACTED]``), ``hash`` (the legacy ``sha256:`` form, kept for
compatibility: reversible by enumeration for SSNs and phone numbers), ``hmac`` (a keyed hash
whose key stays in the KMS; use this for new data), ``encrypt`` (a ``kms_v1`` envelope),
``passthrough``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from heimdall_kms.errors import InvalidInputError

__all__ = ["Action", "Policy", "load_policy", "parse_policy"]

_PATH = re.compile(r"[^.\s][^.]{0,127}(\.[^.\s][^.]{0,127}){0,15}")
_KEYS = frozenset({"rules", "default_action", "record_id"})
MAX_RULES = 10_000
# A policy file's format, by suffix (anything else is JSON): its name, and its parser.
_JSON: tuple[str, Callable[[str], object]] = ("JSON", json.loads)
_YAML: tuple[str, Callable[[str], object]] = ("YAML", yaml.safe_load)
_FORMATS = {".yaml": _YAML, ".yml": _YAML}


class Action(StrEnum):
    SCRUB = "scrub"
    HASH = "hash"
    HMAC = "hmac"
    ENCRYPT = "encrypt"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True, slots=True)
class Policy:
    rules: Mapping[str, Action] = field(default_factory=dict)
    default_action: Action = Action.PASSTHROUGH
    record_id: str | None = None

    def action_for(self, path: str, inherited: Action | None = None) -> Action | None:
        """The action for the value at ``path`` (dotted, list indices left out)."""
        exact = self.rules.get(path)
        if exact is not None:
            return exact
        name = self.rules.get(path.rsplit(".", 1)[-1])
        if name is not None:
            return name
        return inherited


def load_policy(path: Path) -> Policy:
    """Read a policy file (``.yaml``/``.yml`` as YAML, anything else as JSON).

    Raises:
        InvalidInputError: unreadable, not JSON/YAML, or a rule that is wrong (named).
    """
    return parse_policy(_document(path), source=f"policy file {path}")


def _document(path: Path) -> object:
    """The file's document, parsed as the format its suffix names."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InvalidInputError(f"policy file {path}: {reason}") from None
    kind, load = _FORMATS.get(path.suffix, _JSON)
    try:
        return load(text)
    except (ValueError, yaml.YAMLError, RecursionError):
        raise InvalidInputError(f"policy file {path}: not valid {kind}") from None


def parse_policy(document: object, *, source: str = "policy") -> Policy:
    """Check a parsed policy document.

    Raises:
        InvalidInputError: naming the bad rule or key.
    """
    if not isinstance(document, dict):
        raise InvalidInputError(f"{source}: must be an object with 'rules' and 'default_action'")
    unknown = sorted(str(k) for k in set(document) - _KEYS)
    if unknown:
        raise InvalidInputError(f"{source}: unknown key {unknown[0]!r}")
    checked = _rules(document.get("rules", {}), source)
    default = _action(document.get("default_action", "passthrough"), f"{source}: default_action")
    return Policy(checked, default, _record_id(document.get("record_id"), source))


def _rules(rules: object, source: str) -> dict[str, Action]:
    if not isinstance(rules, dict):
        raise InvalidInputError(f"{source}: 'rules' must be an object of field: action")
    if len(rules) > MAX_RULES:
        raise InvalidInputError(f"{source}: more than {MAX_RULES} rules")
    checked: dict[str, Action] = {}
    for name, action in rules.items():
        path = _rule_path(name, source)
        checked[path] = _action(action, f"{source}: rule {name!r}")
    return checked


def _rule_path(name: object, source: str) -> str:
    if not isinstance(name, str) or not _PATH.fullmatch(name):
        raise InvalidInputError(f"{source}: rule {_show(name)} is not a field name or path")
    return name


def _record_id(record_id: object, source: str) -> str | None:
    if record_id is None or (isinstance(record_id, str) and record_id):
        return record_id
    raise InvalidInputError(f"{source}: 'record_id' must be a field name")


def _action(value: Any, where: str) -> Action:
    try:
        return Action(value)
    except ValueError:
        choices = " | ".join(a.value for a in Action)
        raise InvalidInputError(
            f"{where}: unknown action {_show(value)} (expected {choices})"
        ) from None


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
