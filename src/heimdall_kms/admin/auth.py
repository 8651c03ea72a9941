"""Bearer tokens, roles, and the audit of every refused request (SPEC §7).

The tokens file (``HMD_ADMIN_TOKENS_FILE``) holds one ``ROLE SHA256HEX`` line per token: the
SHA-256 of the token, never the token, so the file is not a secret to read (but it is one to
write: whoever can edit it can grant themselves a role). A presented token is hashed and
compared with every known hash through :func:`hmac.compare_digest`. A missing or unknown
token is answered 401, a known token without the role 403; both are recorded as
``access.denied``: the first refusal of a second per source before the answer goes out (fail
closed, like every other audit event), the rest of that second counted into one event
(:mod:`heimdall_kms.admin.denials`), so a flood costs no synced line per request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NoReturn

from fastapi import HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials

from heimdall_kms.admin.denials import DeniedRequests
from heimdall_kms.audit import AuditEvent, AuditSink, EventType, Result
from heimdall_kms.errors import ConfigurationError

__all__ = ["Guard", "Principal", "Role", "TokenTable", "load_tokens", "source_ip"]

_VARIABLE = "HMD_ADMIN_TOKENS_FILE"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_FINGERPRINT_CHARS = 8


class Role(StrEnum):
    ADMIN = "admin"  # rotate, re-encrypt (start and status), key report
    APP = "app"  # encrypt, decrypt
    WORKER = "worker"  # decrypt only
    AUDIT = "audit"  # read-only: re-encryption status, key report


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from: the role and the first hex digits of the token's hash."""

    role: Role
    fingerprint: str

    @property
    def actor(self) -> str:
        # The audited actor: enough to tell tokens apart, nothing that helps forge one.
        return f"token:{self.role.value}:{self.fingerprint}"


class TokenTable:
    """SHA-256 hex digest of each token -> its role."""

    def __init__(self, roles: Mapping[str, Role]) -> None:
        self._entries = tuple(
            (digest.lower().encode("ascii"), role) for digest, role in roles.items()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``, or None. Every entry is compared, in constant time."""
        digest = hashlib.sha256(token.encode()).hexdigest().encode("ascii")
        found: Role | None = None
        for known, role in self._entries:
            if hmac.compare_digest(digest, known):
                found = role
        if found is None:
            return None
        return Principal(found, digest[:_FINGERPRINT_CHARS].decode("ascii"))


def fingerprint(token: str) -> str:
    """The first hex digits of the token's SHA-256, as written into audit events."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return digest[:_FINGERPRINT_CHARS]


def _read_tokens_file(path: Path) -> str:
    """The file's text, refusing a file group or others may write: whoever can write it can
    grant themselves any role. The mode is checked on the descriptor that is read."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ConfigurationError(
                    f"{_VARIABLE}: {path} is writable by group or others (anyone who can "
                    f"write it can grant themselves a role); run chmod go-w on it"
                )
            return handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise ConfigurationError(f"{_VARIABLE}: cannot read {path}: {reason}") from None


def load_tokens(path: Path) -> TokenTable:
    """Read the tokens file: ``ROLE SHA256HEX`` lines, blank lines and ``#`` comments.

    Messages name the file and the line number but never repeat a line: a raw token pasted
    by mistake must not end up in a log.

    Raises:
        ConfigurationError: the file cannot be read or is writable by group or others, a line
            is malformed, a hash is given twice, or the file names no token at all.
    """
    roles: dict[str, Role] = {}
    first_seen: dict[str, int] = {}
    for number, line in _entries(_read_tokens_file(path)):
        where = f"{_VARIABLE}: {path} line {number}"
        role, digest = _parse_entry(line, where)
        if digest in roles:
            raise ConfigurationError(
                f"{where}: the same token hash is on line {first_seen[digest]}"
            )
        roles[digest], first_seen[digest] = role, number
    if not roles:
        raise ConfigurationError(f"{_VARIABLE}: {path} lists no token")
    return TokenTable(roles)


def _entries(text: str) -> Iterator[tuple[int, str]]:
    """The numbered lines that are neither blank nor a comment, stripped."""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


def _parse_entry(line: str, where: str) -> tuple[Role, str]:
    """One ``ROLE SHA256HEX`` line as its role and its lower-case hash."""
    parts = line.split()
    if len(parts) != 2:
        raise ConfigurationError(f"{where}: expected 'ROLE SHA256HEX' (two fields)")
    role_name, digest = parts
    role = _role(role_name, where)
    if not _SHA256_HEX.fullmatch(digest):
        raise ConfigurationError(
            f"{where}: expected the 64-hex-digit SHA-256 of the token, not the token itself"
        )
    return role, digest.lower()


def _role(name: str, where: str) -> Role:
    try:
        return Role(name.lower())
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise ConfigurationError(f"{where}: unknown role (expected {choices})") from None


def source_ip(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


class Guard:
    """Checks a request's bearer token against the roles a route allows."""

    def __init__(self, tokens: TokenTable, audit: AuditSink) -> None:
        self.tokens = tokens
        self.audit = audit
        self.denials = DeniedRequests(audit)  # one synced line per source and second at most

    def close(self) -> None:
        """Write the refusals still counted (at shutdown)."""
        self.denials.close()

    def check(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None,
        allowed: Collection[Role],
    ) -> Principal:
        """The principal, or an HTTP 401/403 after the ``access.denied`` event is recorded.

        Raises:
            HTTPException: 401 (missing or unknown token) or 403 (role not allowed).
            AuditWriteError: the refusal could not be recorded.
        """
        if credentials is None or not credentials.credentials:
            self._deny(request, "anonymous", 401)
        principal = self.tokens.lookup(credentials.credentials)
        if principal is None:
            self._deny(request, f"token:unknown:{fingerprint(credentials.credentials)}", 401)
        if principal.role not in allowed:
            self._deny(request, principal.actor, 403)
        return principal

    def _deny(self, request: Request, actor: str, status: int) -> NoReturn:
        event = AuditEvent(
            event_type=EventType.ACCESS_DENIED,
            actor=actor,
            request_id=str(uuid.uuid4()),
            result=Result.FAILURE,
            source_ip=source_ip(request),
            error_type="unauthenticated" if status == 401 else "forbidden",
            details={"path": request.url.path, "method": request.method, "status": status},
        )
        self.denials.record(event, request.url.path)
        if status == 401:
            raise HTTPException(
                401,
                detail="a valid bearer token is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        raise HTTPException(403, detail="this token's role may not use this endpoint")
