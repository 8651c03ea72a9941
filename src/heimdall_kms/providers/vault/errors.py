"""Vault's answers as the package's typed errors, with safe messages (one place for all calls).

hvac's exception messages can quote the whole response body, and a failed batch's body holds
the plaintext DEKs of the items that succeeded; so every error is rebuilt here from safe parts
(the operation, the key and mount, the address without credentials or path) and raised
``from None``. Both translations are tables of :class:`~heimdall_kms.providers.error_rules.Rule`
read in order, the first match winning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import hvac.exceptions as hv
import requests

from heimdall_kms.errors import (
    AuthenticationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
)
from heimdall_kms.providers.error_rules import Rule, first_match

__all__ = ["TooComplexError", "Translated", "item_error", "safe_address", "translate"]

# OpenBao refuses a JSON body with too many strings; a 500-item batch failed where 499 passed.
_TOO_COMPLEX = "exceeded maximum number of strings"


class TooComplexError(Exception):
    """OpenBao refused the body as too complex; the batch is split and retried."""


@dataclass(frozen=True, slots=True)
class _Refusal:
    """What decides the error for a whole call: hvac's exception and where it happened."""

    where: str
    exc: hv.VaultError
    login: bool


def _refused_credentials(r: _Refusal) -> KMSError:
    return AuthenticationError(f"{r.where}: authentication failed (check the token or role)")


def _is(*kinds: type[hv.VaultError]) -> Callable[[_Refusal], bool]:
    return lambda r: isinstance(r.exc, kinds)


# A whole call's answer, by hvac's exception class (one class per HTTP status). A 400 is read
# apart (:func:`_invalid_request`): its text says more than its class.
_BY_CLASS: tuple[Rule[_Refusal, KMSError], ...] = (
    Rule(_is(hv.Unauthorized), _refused_credentials),
    Rule(lambda r: r.login and isinstance(r.exc, hv.Forbidden), _refused_credentials),
    Rule(
        _is(hv.Forbidden),
        lambda r: PermissionDeniedError(
            f"{r.where}: permission denied (HTTP 403: the token is invalid or expired, or its "
            "policy does not allow this operation)"
        ),
    ),
    Rule(
        _is(hv.InvalidPath),
        lambda r: KeyNotFoundError(f"{r.where}: no such transit key or mount (HTTP 404)"),
    ),
    Rule(
        _is(hv.RateLimitExceeded),
        lambda r: RateLimitedError(
            f"{r.where}: rate limited (HTTP 429)", retry_after=_retry_after(r.exc)
        ),
    ),
    Rule(
        _is(hv.VaultDown),
        lambda r: KMSUnavailableError(
            f"{r.where}: Vault is sealed or unavailable (HTTP 503)",
            retry_after=_retry_after(r.exc),
        ),
    ),
    Rule(
        _is(hv.InternalServerError, hv.BadGateway, hv.VaultNotInitialized),
        lambda r: KMSUnavailableError(f"{r.where}: Vault is unavailable (HTTP 5xx)"),
    ),
)

# A batch item's error text (Vault answers per item in ``batch_results``), lower-cased.
_BY_ITEM_TEXT: tuple[Rule[str, HeimdallKMSError], ...] = (
    Rule(
        lambda t: "too old" in t or "disallowed by policy" in t,
        lambda _: KeyVersionRetiredError("the data key's key version is retired in Vault"),
    ),
    Rule(
        lambda t: "invalid key version" in t or ("key version" in t and "not" in t),
        lambda _: KeyNotFoundError("the data key names a key version Vault does not have"),
    ),
    Rule(
        lambda t: any(s in t for s in ("authentication failed", "invalid ciphertext", "base64")),
        lambda _: IntegrityError("Vault could not unwrap the data key (damaged or not ours)"),
    ),
    Rule(lambda t: "not found" in t, lambda _: KeyNotFoundError("Vault has no such transit key")),
)


def translate(where: str, exc: hv.VaultError, *, login: bool) -> KMSError | TooComplexError:
    """The typed error for hvac's ``exc``; ``login``: a refusal means the credentials."""
    if isinstance(exc, hv.InvalidRequest):
        return _invalid_request(where, _first_error(exc), login=login)
    return first_match(
        _BY_CLASS,
        _Refusal(where, exc, login),
        lambda r: KMSError(f"{r.where}: unexpected answer from Vault"),
    )


def item_error(operation: str, message: str) -> HeimdallKMSError:
    """The typed error for one batch item's error text."""
    return first_match(
        _BY_ITEM_TEXT, message.lower(), lambda _: KMSError(f"Vault refused the {operation} item")
    )


def _invalid_request(where: str, first: str, *, login: bool) -> KMSError | TooComplexError:
    if _TOO_COMPLEX in first:
        return TooComplexError()
    if login:
        return AuthenticationError(f"{where}: authentication failed (check the token or role)")
    if "not found" in first:
        return KeyNotFoundError(f"{where}: no such transit key")
    return KMSError(f"{where}: request refused (HTTP 400: {first})")


def _first_error(exc: hv.VaultError) -> str:
    return next((e[:200] for e in exc.errors or () if isinstance(e, str)), "")


def _retry_after(exc: hv.VaultError) -> float | None:
    value = getattr(exc, "retry_after", None)  # set by http.VaultAdapter from the header
    return value if isinstance(value, int | float) else None


class Translated:
    """Turns hvac and requests exceptions into our typed errors, with safe messages.

    The message names what failed: the operation, the Vault address (scheme, host and port
    only: never credentials or a path) and, for Transit calls, the key and the mount.
    """

    def __init__(
        self,
        operation: str,
        *,
        login: bool = False,
        address: str | None = None,
        key: str | None = None,
        mount: str | None = None,
    ) -> None:
        self._operation = operation
        self._login = login
        self._address = safe_address(address) if address else None
        self._target = f"key {key!r} on mount {mount!r}" if key and mount else None

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        # Anything else (our own errors, TooComplexError, a bug) propagates as it is.
        if isinstance(exc, hv.VaultError):
            raise translate(self._where(), exc, login=self._login) from None
        if isinstance(exc, requests.exceptions.RequestException):
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: requests.exceptions.RequestException) -> KMSUnavailableError:
        at = f" at {self._address}" if self._address else ""
        target = f" ({self._target})" if self._target else ""
        return KMSUnavailableError(
            f"cannot reach Vault{at} for {self._operation}{target}: {type(exc).__name__}"
        )

    def _where(self) -> str:
        parts = [part for part in (self._target, self._address) if part]
        return f"Vault {self._operation}" + (f" ({', '.join(parts)})" if parts else "")


def safe_address(url: str) -> str:
    """``scheme://host:port`` of a Vault URL: no user, password, path or query."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured address"
    return f"{parts.scheme}://{parts.hostname or ''}{port}" if parts.scheme else url
