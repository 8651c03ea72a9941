"""Finding the values of a record a policy speaks about, and putting new values back."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from heimdall_kms.errors import InvalidInputError
from heimdall_kms.policy.rules import Action, Policy

__all__ = ["Leaf", "leaves", "put"]

MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Leaf:
    location: tuple[str | int, ...]  # keys and list indices, to put a new value back
    path: str  # dotted field path without list indices: what rules and contexts name
    action: Action
    value: Any = field(repr=False)  # plaintext PII: never in a repr


def leaves(record: Mapping[str, Any], policy: Policy) -> Iterator[Leaf]:
    """Every non-null scalar of the record with the action that applies to it."""
    yield from _walk(record, (), "", None, policy=policy, depth=0)


def _walk(
    node: Any,
    location: tuple[str | int, ...],
    path: str,
    inherited: Action | None,  # the action of the nearest object a rule names, if any
    *,
    policy: Policy,
    depth: int,
) -> Iterator[Leaf]:
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"record nests deeper than {MAX_DEPTH} levels")
    if isinstance(node, Mapping | list):
        for step, child_path, action, child in _children(node, path, inherited, policy):
            yield from _walk(
                child, (*location, step), child_path, action, policy=policy, depth=depth + 1
            )
    elif node is not None:
        yield Leaf(location, path, inherited or policy.default_action, node)


def _children(
    node: Mapping[str, Any] | list[Any], path: str, inherited: Action | None, policy: Policy
) -> Iterator[tuple[str | int, str, Action | None, Any]]:
    """Each child of an object or a list: its key or index, its path, its action, its value.

    A list's elements keep the list's path and action; an object's fields get their own
    path, and the action of the rule that names it (else the object's, if any)."""
    if isinstance(node, list):
        for index, child in enumerate(node):
            yield index, path, inherited, child
        return
    for key, child in node.items():
        child_path = f"{path}.{key}" if path else str(key)
        yield key, child_path, policy.action_for(child_path, inherited), child


def put(record: Any, location: tuple[str | int, ...], value: Any) -> None:
    target = record
    for step in location[:-1]:
        target = target[step]
    target[location[-1]] = value
