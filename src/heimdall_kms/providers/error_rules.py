"""The shape every provider's error translation takes: a table of rules read in order.

A provider first reduces an SDK exception to the facts that decide our error (a status code,
an error code, the ``Retry-After`` it asked for, whether a credential failure was a transport
failure underneath) and then reads its table: the first rule whose test holds makes the error.
The tables live in each provider package's ``errors.py``; this module imports no SDK.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Rule", "first_match"]

_F = TypeVar("_F")
_E = TypeVar("_E", bound=BaseException)


class Rule(Generic[_F, _E]):
    """``when(facts)`` holds: the error is ``make(facts)``."""

    __slots__ = ("make", "when")

    def __init__(self, when: Callable[[_F], bool], make: Callable[[_F], _E]) -> None:
        self.when = when
        self.make = make


def first_match(rules: Sequence[Rule[_F, _E]], facts: _F, otherwise: Callable[[_F], _E]) -> _E:
    """The error of the first rule that holds for ``facts``, else ``otherwise(facts)``."""
    for rule in rules:
        if rule.when(facts):
            return rule.make(facts)
    return otherwise(facts)
