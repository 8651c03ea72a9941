"""Which database and columns the admin API may work on: the server's, never a request's.

A request names a target (table, column, id column); the database is always the service's own:
the ``database`` of the server's targets file (``serve --targets``, ``HMD_ADMIN_TARGETS_FILE``)
or ``HMD_DATABASE_URL``. With a targets file, only the targets it lists are accepted. A request
that carries a database URL or any other connection parameter is refused by the closed request
schemas and :func:`refuse_unknown_query` before anything is opened.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError

from heimdall_kms.errors import ConfigurationError, StoreError
from heimdall_kms.store import FieldStore, Target, load_targets, open_store

__all__ = ["ServerTargets", "open_checked", "refuse_unknown_query"]

_URL_PREFIXES = ("sqlite:///", "postgresql://", "postgres://")


@dataclass(frozen=True, slots=True)
class ServerTargets:
    database: str | None  # None: the service has no database; jobs and counts are refused
    allowed: frozenset[Target] | None = None  # None: any column of the database

    @classmethod
    def load(cls, database_url: str | None, targets_file: Path | None) -> ServerTargets:
        """The service's database and allowed targets.

        Raises:
            InvalidInputError: the targets file is unreadable or wrong.
            ConfigurationError: the database URL is not sqlite or postgresql.
        """
        allowed = None
        if targets_file is not None:
            loaded = load_targets(targets_file)
            database_url = loaded.database or database_url
            allowed = frozenset(loaded.targets)
        if database_url is not None and not database_url.startswith(_URL_PREFIXES):
            raise ConfigurationError(
                "HMD_DATABASE_URL: expected sqlite:///PATH or postgresql://USER@HOST/DB"
            )
        return cls(database_url, allowed)

    def resolve(self, where: str, table: str, column: str, id_column: str) -> tuple[str, Target]:
        """The database URL and the target a request names (``where``: "body" or "query").

        Raises:
            RequestValidationError: not a plain identifier, or not a target of this server.
            ConfigurationError: the service has no database configured.
        """
        try:
            target = Target(table, column, id_column)
        except StoreError as exc:
            raise _invalid(where, "table", str(exc)) from None
        target = self._listed(where, target)
        if self.database is None:
            raise ConfigurationError(
                "HMD_DATABASE_URL: the service has no database (set it, or give serve a "
                "targets file with a database)"
            )
        return self.database, target

    def _listed(self, where: str, target: Target) -> Target:
        """The targets file's entry for ``target``, with what only the file says (its
        json_path); ``target`` itself where any column is allowed."""
        if self.allowed is None:
            return target
        named = (target.table, target.column, target.id_column)
        listed = [t for t in self.allowed if (t.table, t.column, t.id_column) == named]
        if not listed:
            raise _invalid(where, "table", "not a target listed in the server's targets file")
        return listed[0]


def open_checked(url: str, target: Target, *, writable: bool) -> FieldStore:
    """The store of ``target``, checked for reading (and writing); closed again if the check
    fails.

    Raises:
        StoreError: the database cannot be opened, or the table or columns are wrong or not
            accessible as asked.
    """
    store = open_store(url, target)
    try:
        store.check(writable=writable)
    except BaseException:
        store.close()
        raise
    return store


def _invalid(where: str, name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": (where, name), "msg": message, "type": "value_error"}])


def refuse_unknown_query(request: Request) -> None:
    """Answer 422 for a query parameter the route does not declare (e.g. ``database``), or
    one given twice: the route would take the last silently, where a proxy's or a WAF's
    check may have read the first (as for a key repeated in a JSON body).

    Raises:
        RequestValidationError: an undeclared or repeated parameter, named (its value is
            never echoed).
    """
    declared = _declared_query(getattr(request.scope.get("route"), "dependant", None))
    counts = Counter(name for name, _ in request.query_params.multi_items())
    problems = [
        {"loc": ("query", name), "msg": "unknown parameter", "type": "extra_forbidden"}
        for name in sorted(set(counts) - declared)
    ]
    problems += [
        {"loc": ("query", name), "msg": "a parameter appears twice", "type": "value_error"}
        for name in sorted(name for name, count in counts.items() if count > 1)
        if name in declared
    ]
    if problems:
        raise RequestValidationError(problems)


def _declared_query(dependant: Any) -> set[str]:
    """The query parameter names of a FastAPI route's dependant and its sub-dependencies."""
    names: set[str] = set()
    pending = [dependant] if dependant is not None else []
    while pending:
        current = pending.pop()
        names.update(str(param.alias) for param in getattr(current, "query_params", ()))
        pending.extend(getattr(current, "dependencies", ()))
    return names
