"""Cloud KMS's errors as the package's typed errors: the one place they are translated.

Messages come from the status code only. A client-side failure (no connection, credentials
refused, retries exhausted) is read first; an API error is reduced to its google.rpc status
(:func:`_status`) and read against :data:`_BY_STATUS`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions

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
from heimdall_kms.providers import retry_after
from heimdall_kms.providers.credential_outage import caused_by
from heimdall_kms.providers.error_rules import Rule, first_match

__all__ = ["SDK_ERRORS", "translate", "translated"]

# Errors of the client library and of its transports: google-api-core's for answers, and
# google-auth's and requests' for what happens before one.
_TRANSPORT = (auth_exceptions.TransportError, requests.exceptions.ConnectionError)
_REFUSED = (auth_exceptions.RefreshError, auth_exceptions.InvalidOperation)
SDK_ERRORS = (
    api_exceptions.GoogleAPIError,
    auth_exceptions.GoogleAuthError,
    requests.exceptions.RequestException,
)


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Raise the client's errors inside as ours (:func:`translate`), ``from None``."""
    try:
        yield
    except SDK_ERRORS as exc:
        raise translate(operation, exc) from None


@dataclass(frozen=True, slots=True)
class _Failure:
    where: str
    operation: str
    exc: BaseException

    @property
    def kind(self) -> str:
        return type(self.exc).__name__


@dataclass(frozen=True, slots=True)
class _Status:
    where: str
    operation: str
    status: str  # the google.rpc.Code name, "" when the answer does not say
    exc: api_exceptions.GoogleAPICallError


def _unreachable(f: _Failure) -> bool:
    # The metadata server (or token endpoint) not answering is an outage, not a refusal.
    return isinstance(
        f.exc, auth_exceptions.TransportError | requests.exceptions.RequestException
    ) or (isinstance(f.exc, auth_exceptions.RefreshError) and caused_by(f.exc, _TRANSPORT))


_BEFORE_AN_ANSWER: tuple[Rule[_Failure, HeimdallKMSError], ...] = (
    Rule(
        _unreachable,
        lambda f: KMSUnavailableError(f"{f.where}: cannot reach Cloud KMS ({f.kind})"),
    ),
    Rule(
        # On HTTP 401 the REST transport refreshes the credentials and tries again; the
        # refresh itself failing (or anonymous credentials, which cannot) is the answer.
        lambda f: isinstance(f.exc, _REFUSED),
        lambda f: AuthenticationError(f"{f.where}: authentication failed (credentials refused)"),
    ),
)


def _either(
    status: str, kind: type[api_exceptions.GoogleAPICallError]
) -> Callable[[_Status], bool]:
    # Over gRPC the status says it; over REST the exception class may be all there is.
    return lambda s: s.status == status or isinstance(s.exc, kind)


_BY_STATUS: tuple[Rule[_Status, HeimdallKMSError], ...] = (
    Rule(
        _either("UNAUTHENTICATED", api_exceptions.Unauthorized),
        lambda s: AuthenticationError(f"{s.where}: authentication failed (UNAUTHENTICATED)"),
    ),
    Rule(
        _either("PERMISSION_DENIED", api_exceptions.Forbidden),
        lambda s: PermissionDeniedError(
            f"{s.where}: permission denied (PERMISSION_DENIED: the identity lacks the IAM "
            "role, or the key does not exist)"
        ),
    ),
    Rule(
        _either("NOT_FOUND", api_exceptions.NotFound),
        lambda s: KeyNotFoundError(f"{s.where}: no such CryptoKey or version (NOT_FOUND)"),
    ),
    Rule(
        _either("RESOURCE_EXHAUSTED", api_exceptions.TooManyRequests),
        lambda s: RateLimitedError(
            f"{s.where}: quota exceeded (RESOURCE_EXHAUSTED)", retry_after=_retry_delay(s.exc)
        ),
    ),
    Rule(
        lambda s: s.status == "FAILED_PRECONDITION",
        lambda s: KeyVersionRetiredError(
            f"{s.where}: the key version is not enabled (FAILED_PRECONDITION: disabled or "
            "destroyed)"
        ),
    ),
    Rule(
        lambda s: s.status == "INVALID_ARGUMENT" and s.operation == "decrypt",
        lambda _: IntegrityError(
            "Cloud KMS could not unwrap the data key (damaged, or other context)"
        ),
    ),
    Rule(
        lambda s: (
            isinstance(s.exc, api_exceptions.ServerError)
            or s.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL")
        ),
        lambda s: KMSUnavailableError(
            f"{s.where}: Cloud KMS is unavailable ({s.status or 'HTTP 5xx'})"
        ),
    ),
)


def translate(operation: str, exc: BaseException) -> HeimdallKMSError:
    """Our error for the client's ``exc`` raised by ``operation``."""
    where = f"GCP KMS {operation}"
    if isinstance(exc, api_exceptions.RetryError):
        return _retries_exhausted(operation, exc)
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return first_match(
            _BY_STATUS,
            _Status(where, operation, _status(exc), exc),
            lambda s: KMSError(f"{s.where}: request refused ({s.status or f'HTTP {s.exc.code}'})"),
        )
    return first_match(
        _BEFORE_AN_ANSWER,
        _Failure(where, operation, exc),
        lambda f: KMSError(f"{f.where}: unexpected error from the client ({f.kind})"),
    )


def _retries_exhausted(operation: str, exc: api_exceptions.RetryError) -> HeimdallKMSError:
    cause = exc.cause
    if isinstance(cause, SDK_ERRORS) and not isinstance(cause, api_exceptions.RetryError):
        return translate(operation, cause)  # the last failure says what kept failing
    return KMSUnavailableError(f"GCP KMS {operation}: Cloud KMS kept failing until the timeout")


def _retry_delay(exc: api_exceptions.GoogleAPICallError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay of an error, in seconds: a protobuf message over
    gRPC, ``{"@type": ".../google.rpc.RetryInfo", "retryDelay": "1.5s"}`` over REST."""
    for detail in exc.details:
        descriptor = getattr(detail, "DESCRIPTOR", None)
        if getattr(descriptor, "full_name", "") == "google.rpc.RetryInfo":
            delay = detail.retry_delay  # google.protobuf.Duration
            return retry_after.bounded(delay.seconds + delay.nanos / 1e9)
        text = _rest_retry_delay(detail)
        if text is not None:
            return _seconds(text)
    return None


def _rest_retry_delay(detail: object) -> str | None:
    """The ``retryDelay`` ("1.5s") of a REST ``google.rpc.RetryInfo`` detail; None for any
    other detail, or one without a delay in seconds."""
    match detail:
        case {"@type": str(kind), "retryDelay": str(text)} if kind.endswith(
            "/google.rpc.RetryInfo"
        ) and text.endswith("s"):
            return text
        case _:
            return None


def _seconds(text: str) -> float | None:
    try:
        return retry_after.bounded(float(text[:-1]))
    except ValueError:
        return None


def _status(exc: api_exceptions.GoogleAPICallError) -> str:
    """The google.rpc.Code name of an error: from the gRPC status, or the REST error body's
    ``status`` field (over REST the exception class only reflects the HTTP code, and 400
    covers both INVALID_ARGUMENT and FAILED_PRECONDITION)."""
    if exc.grpc_status_code is not None:
        return str(exc.grpc_status_code.name)
    response = exc.response
    if not isinstance(response, requests.Response):
        return ""
    try:
        payload = response.json()
    except ValueError:
        return ""
    match payload:
        case {"error": {"status": str(status)}} if status.isupper():
            return status
        case _:
            return ""
