"""Azure Key Vault's errors as the package's typed errors: the one place they are translated.

Messages are built from the HTTP status and the error code only (the service's message and
the SDK's text can quote request details). An error is reduced to its facts
(:class:`_Answer`) and read against :data:`_RULES`, the first match winning.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from heimdall_kms.errors import (
    AuthenticationError,
    ConfigurationError,
    HeimdallKMSError,
    IntegrityError,
    KeyNotFoundError,
    KeyVersionRetiredError,
    KMSError,
    KMSUnavailableError,
    PermissionDeniedError,
    RateLimitedError,
)
from heimdall_kms.providers.credential_outage import caused_by
from heimdall_kms.providers.error_rules import Rule, first_match
from heimdall_kms.providers.retry_after import from_headers

__all__ = ["attempt", "call", "translate"]

_T = TypeVar("_T")
_TRANSPORT = (ServiceRequestError, ServiceResponseError)
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.]{1,64}")


def attempt(operation: str, run: Callable[[], _T]) -> _T | HeimdallKMSError:
    """Run ``run``; an Azure SDK error comes back translated instead of raised."""
    try:
        return run()
    except AzureError as exc:
        return translate(operation, exc)
    except ValueError as exc:
        # The SDK's challenge policy refuses a challenge for another resource than the vault's
        # host with a ValueError; anything else is a bug and propagates.
        if "challenge" not in str(exc):
            raise
        return ConfigurationError(
            "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE: Key Vault's authentication challenge names a "
            "resource other than the vault's host; set it to false only for a vault reached "
            "under another name (a proxy, a test server)"
        )


def call(operation: str, run: Callable[[], _T]) -> _T:
    """``run`` with its SDK error translated and raised (no deadline of the provider's own:
    the bootstrap's and the signers' calls; the provider's go through its ``_call``)."""
    result = attempt(operation, run)
    if isinstance(result, HeimdallKMSError):
        raise result
    return result


@dataclass(frozen=True, slots=True)
class _Answer:
    where: str
    operation: str
    exc: AzureError
    status: int  # 0: no HTTP answer
    detail: str  # "HTTP <status> <code>", or the exception's class without an answer
    inner_code: str  # the innererror code (KeyDisabled for a disabled version)

    @classmethod
    def of(cls, operation: str, exc: AzureError) -> _Answer:
        status = exc.status_code if isinstance(exc, HttpResponseError) else None
        error = getattr(exc, "error", None)
        return cls(
            f"Azure Key Vault {operation}",
            operation,
            exc,
            status or 0,
            f"HTTP {status} {_code(error)}".strip() if status else type(exc).__name__,
            _inner_code(error),
        )

    @property
    def retry_after(self) -> float | None:
        """The wait Key Vault asked for: ``retry-after-ms``, ``x-ms-retry-after-ms`` or
        ``Retry-After`` on the answer (azure-core has already waited it out on each of its own
        retries; this is for the caller's next attempt)."""
        headers = getattr(getattr(self.exc, "response", None), "headers", None)
        return None if headers is None else from_headers(headers.get)


def _code(error: object) -> str:
    """The service's error code, where it is safe to quote."""
    raw = str(getattr(error, "code", "") or "")
    return raw if _SAFE_CODE.fullmatch(raw) else ""


def _inner_code(error: object) -> str:
    inner = getattr(error, "innererror", None) or {}
    return str(inner.get("code", "")) if isinstance(inner, dict) else ""


def _authentication(a: _Answer) -> bool:
    return isinstance(a.exc, ClientAuthenticationError)


_RULES: tuple[Rule[_Answer, HeimdallKMSError], ...] = (
    Rule(
        # A managed identity's token endpoint (IMDS) did not answer: an outage, not a refusal.
        lambda a: _authentication(a) and caused_by(a.exc, _TRANSPORT),
        lambda a: KMSUnavailableError(
            f"{a.where}: cannot fetch a token (token source unreachable)"
        ),
    ),
    Rule(
        lambda a: _authentication(a) or a.status == 401,
        lambda a: AuthenticationError(
            f"{a.where}: authentication failed ({a.detail}); check the DefaultAzureCredential chain"
        ),
    ),
    Rule(
        lambda a: a.status == 403 and a.inner_code == "KeyDisabled",
        lambda a: KeyVersionRetiredError(f"{a.where}: the key version is disabled (retired)"),
    ),
    Rule(
        lambda a: a.status == 403,
        lambda a: PermissionDeniedError(
            f"{a.where}: permission denied ({a.detail}): the identity's role does not allow it"
        ),
    ),
    Rule(
        lambda a: a.status == 404,
        lambda a: KeyNotFoundError(f"{a.where}: no such key or key version ({a.detail})"),
    ),
    Rule(
        lambda a: a.status == 429,
        lambda a: RateLimitedError(
            f"{a.where}: throttled by Key Vault ({a.detail})", retry_after=a.retry_after
        ),
    ),
    Rule(
        lambda a: isinstance(a.exc, _TRANSPORT) or a.status >= 500,
        lambda a: KMSUnavailableError(
            f"{a.where}: Key Vault is unreachable or unavailable ({a.detail})",
            retry_after=a.retry_after,
        ),
    ),
    Rule(
        lambda a: a.status == 400 and a.operation in ("unwrap", "rewrap"),
        lambda _: IntegrityError("Key Vault could not unwrap the data key (damaged or not ours)"),
    ),
)


def translate(operation: str, exc: AzureError) -> HeimdallKMSError:
    """Our error for the Azure SDK's ``exc`` raised by ``operation``."""
    return first_match(
        _RULES, _Answer.of(operation, exc), lambda a: KMSError(f"{a.where}: refused ({a.detail})")
    )
