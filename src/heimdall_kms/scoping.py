"""``heimdall_kms.scope``: who is asking, why, and under which request id (SPEC §11).

A scope holds the actor, the reason and the request id of the work under way (typically one
web request), so that code far from the request (serializers, ORM attribute access) reads and
writes values without passing them along. Every facade call uses the scope's values where the
call itself passes none; an explicit argument always wins. The audit events carry them: their
``request_id`` is the scope's when it has one.

The values live in a :class:`contextvars.ContextVar`, so they follow asyncio tasks (each task
starts with a copy of its creator's context) and threads started through
``contextvars.copy_context().run`` or ``asyncio.to_thread``; a plain ``threading.Thread``
starts with an empty context and sees no scope. Nested scopes override field by field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from heimdall_kms.errors import InvalidInputError
from heimdall_kms.inputs import checked_label

__all__ = ["Scope", "current_scope", "scope"]

# The same characters the admin API accepts in X-Request-ID (heimdall_kms.telemetry.correlation).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")


@dataclass(frozen=True, slots=True)
class Scope:
    """The values in force; ``None`` where no enclosing scope set one."""

    actor: str | None = None
    reason: str | None = None
    request_id: str | None = None

    def within(self, outer: Scope) -> Scope:
        """This scope's values, and the outer scope's where this one has none."""
        return Scope(
            self.actor if self.actor is not None else outer.actor,
            self.reason if self.reason is not None else outer.reason,
            self.request_id if self.request_id is not None else outer.request_id,
        )


_NONE = Scope()
_current: ContextVar[Scope] = ContextVar("heimdall_kms_scope", default=_NONE)


def current_scope() -> Scope:
    """The scope in force in this context (all ``None`` outside any scope)."""
    return _current.get()


@contextmanager
def scope(
    *, actor: str | None = None, reason: str | None = None, request_id: str | None = None
) -> Iterator[Scope]:
    """Make ``actor``, ``reason`` and ``request_id`` the defaults of the facade calls inside.

    A value left ``None`` is inherited from the enclosing scope.

    Raises:
        InvalidInputError: a value is empty, too long, or (request id) has characters other
            than ``A-Z a-z 0-9 . _ : - + / =`` or more than 128 of them.
    """
    inner = _checked(actor, reason, request_id).within(_current.get())
    token = _current.set(inner)
    try:
        yield inner
    finally:
        _current.reset(token)


def _checked(actor: str | None, reason: str | None, request_id: str | None) -> Scope:
    """The values a scope sets, each checked.

    Raises:
        InvalidInputError: as :func:`scope`.
    """
    if actor is not None:
        checked_label("actor", actor)
    if reason is not None:
        checked_label("reason", reason)
    if request_id is not None:
        _check_request_id(request_id)
    return Scope(actor, reason, request_id)


def _check_request_id(request_id: str) -> None:
    # Checked at run time too: an untyped caller may pass anything.
    if not (isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)):
        raise InvalidInputError("request_id must be 1-128 characters of A-Z a-z 0-9 . _ : - + / =")
