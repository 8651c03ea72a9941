"""JSON objects whose keys are unique: a parser keeps one of two equal keys silently (Python's
json the last, others the first), so whatever checks one reading cannot speak for another."""

from __future__ import annotations

from typing import Any

__all__ = ["RepeatedKeyError", "unique_keys"]


class RepeatedKeyError(ValueError):
    """A JSON object repeats ``key`` (its first 64 characters)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key[:64]


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook``: the object, refusing a repeated key.

    Raises:
        RepeatedKeyError: a key appears twice.
    """
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKeyError(key)
            seen.add(key)
    return document
