"""SQLAlchemy 2 integration (SPEC §11): ``Encrypted()`` columns bound to their record.

>>> from heimdall_kms.sqlalchemy import Encrypted, attach           # doctest: +SKIP
>>> class Person(Base):                                              # doctest: +SKIP
...     __tablename__ = "people"
...     id: Mapped[int] = mapped_column(primary_key=True)
...     ssn: Mapped[str | None] = mapped_column(Encrypted())
>>> Session = attach(sessionmaker(engine), heimdall_kms.from_env())  # doctest: +SKIP

Values are stored as ``kms_v1`` envelopes bound to ``{"table": <table>, "field": <column>,
"record": "<primary key>"}``, the context ``heimdall-kms migrate`` writes: migrated rows read
through the ORM and rows the ORM writes pass ``heimdall-kms status``. See
``docs/integration.md`` for the design (placeholders for autoincrement keys, batched lazy
reads) and what is bound and what is not.
"""

from __future__ import annotations

from typing import Any, TypeVar

try:
    from sqlalchemy import event, inspect
    from sqlalchemy.orm import InstanceState, Mapper, Session, sessionmaker
except ModuleNotFoundError as missing:  # name the extra, not a bare module path
    raise ImportError(
        "heimdall_kms.sqlalchemy needs SQLAlchemy 2: pip install 'heimdall-kms[sqlalchemy]'"
    ) from missing

from heimdall_kms.service import Crypto
from heimdall_kms.sqlalchemy._column import PLACEHOLDER, Encrypted, Stored
from heimdall_kms.sqlalchemy._reading import Reader
from heimdall_kms.sqlalchemy._writing import Writer

__all__ = ["PLACEHOLDER", "Encrypted", "Stored", "attach"]

_INFO_KEY = "heimdall_kms.sqlalchemy"
_Factory = TypeVar("_Factory", bound="sessionmaker[Any] | type[Session]")


class _Hooks:
    """What one attached session holds: its crypto, its pending reads and writes."""

    def __init__(self, crypto: Crypto) -> None:
        self.reader = Reader(crypto)
        self.writer = Writer(crypto)


def attach(session_factory: _Factory, crypto: Crypto) -> _Factory:
    """Make the sessions of ``session_factory`` (a ``sessionmaker`` or a ``Session``
    subclass) encrypt and decrypt their models' Encrypted columns through ``crypto``.

    Returns ``session_factory``. Reads and writes use the current
    :func:`heimdall_kms.scope` for actor, reason and request id.
    """

    def hooks(session: Session) -> _Hooks:
        found = session.info.get(_INFO_KEY)
        if not isinstance(found, _Hooks):
            found = session.info[_INFO_KEY] = _Hooks(crypto)
        return found

    @event.listens_for(session_factory, "after_begin")
    def _begin(session: Session, *_: Any) -> None:
        hooks(session)

    @event.listens_for(session_factory, "before_flush")
    def _before_flush(session: Session, *_: Any) -> None:
        hooks(session).writer.before_flush(session)

    @event.listens_for(session_factory, "after_flush_postexec")
    def _after_flush(session: Session, *_: Any) -> None:
        hooks(session).writer.after_flush(session)

    @event.listens_for(session_factory, "after_soft_rollback")
    def _rollback(session: Session, *_: Any) -> None:
        hooks(session).writer.forget()

    _listen_to_loads()
    return session_factory


_listening = False


def _listen_to_loads() -> None:
    global _listening  # noqa: PLW0603 - the mapper events are registered once per process
    if _listening:
        return
    event.listen(Mapper, "load", _on_load)
    event.listen(Mapper, "refresh", _on_refresh)
    _listening = True


def _hooks_of(state: InstanceState[Any]) -> _Hooks | None:
    session = state.session
    found = session.info.get(_INFO_KEY) if session is not None else None
    return found if isinstance(found, _Hooks) else None


def _on_load(target: Any, context: Any) -> None:
    state: InstanceState[Any] = inspect(target)
    hooks = _hooks_of(state)
    if hooks is not None:
        hooks.reader.loaded(state)


def _on_refresh(target: Any, context: Any, attrs: Any) -> None:
    state: InstanceState[Any] = inspect(target)
    hooks = _hooks_of(state)
    if hooks is not None:
        # QueryContext.refresh_state: the one instance a refresh of a single row is for.
        hooks.reader.refreshed(state, getattr(context, "refresh_state", None) is state)
