"""AWS KMS's errors as the package's typed errors: the one place they are translated.

A message carries the error code (a fixed AWS identifier) and never AWS's message text, which
can quote request data. An answer is reduced to its facts (:class:`_Answer`: code, HTTP
status, ``Retry-After``) and read against a table; an error with no answer (botocore's own:
no connection, no credentials) against another.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSOError,
    TokenRetrievalError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

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
from heimdall_kms.providers.credential_outage import caused_by
from heimdall_kms.providers.error_rules import Rule, first_match
from heimdall_kms.providers.retry_after import from_headers

__all__ = ["NO_CREDENTIALS", "TRANSPORT", "InvalidStateError", "translate", "translated"]

_SAFE_CODE = re.compile(r"[A-Za-z0-9._]{1,64}")
_INTEGRITY = frozenset({"InvalidCiphertextException", "IncorrectKeyException"})
_RETIRED = frozenset({"DisabledException"})
_AUTHENTICATION = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidClientTokenId",
        "MissingAuthenticationToken",
        "IncompleteSignature",
        "SignatureDoesNotMatch",
        "AuthFailure",
    }
)
_THROTTLED = frozenset(
    {"ThrottlingException", "Throttling", "LimitExceededException", "RequestLimitExceeded"}
)
_UNAVAILABLE = frozenset(
    {
        "KMSInternalException",
        "DependencyTimeoutException",
        "KeyUnavailableException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
    }
)
# A credential fetch that failed on the wire (IMDS, the ECS/EKS container endpoint).
TRANSPORT = (BotoConnectionError, HTTPClientError)
NO_CREDENTIALS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    TokenRetrievalError,
    SSOError,
)


class InvalidStateError(KMSError):
    """KMSInvalidStateException: the key's state forbids the call; the provider, knowing the
    key, asks which state (``AWSKMSProvider._state_error``)."""


@contextmanager
def translated(operation: str) -> Iterator[None]:
    """Raise botocore's errors inside as ours (:func:`translate`), ``from None``."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, operation) from None


@dataclass(frozen=True, slots=True)
class _Answer:
    where: str
    code: str  # AWS's error code, or "unrecognised error" when it is not a plain identifier
    status: int
    retry_after: float | None

    @classmethod
    def of(cls, exc: ClientError, where: str) -> _Answer:
        metadata = exc.response.get("ResponseMetadata") or {}
        return cls(where, _code(exc.response), _http_status(metadata), _retry_after(metadata))


def _code(response: Mapping[str, Any]) -> str:
    raw = str((response.get("Error") or {}).get("Code", ""))
    return raw if _SAFE_CODE.fullmatch(raw) else "unrecognised error"


def _http_status(metadata: Mapping[str, Any]) -> int:
    return int(metadata.get("HTTPStatusCode") or 0)


def _retry_after(metadata: Mapping[str, Any]) -> float | None:
    headers = {str(k).lower(): str(v) for k, v in (metadata.get("HTTPHeaders") or {}).items()}
    return from_headers(headers.get)


_BY_ANSWER: tuple[Rule[_Answer, HeimdallKMSError], ...] = (
    Rule(
        lambda a: a.code in _INTEGRITY,
        lambda _: IntegrityError("AWS KMS could not unwrap the data key (damaged, or not ours)"),
    ),
    Rule(
        lambda a: a.code in _RETIRED,
        lambda a: KeyVersionRetiredError(f"{a.where}: the key is disabled ({a.code})"),
    ),
    Rule(
        lambda a: a.code == "KMSInvalidStateException",
        lambda a: InvalidStateError(f"{a.where}: the key's state does not allow this ({a.code})"),
    ),
    Rule(
        lambda a: a.code == "NotFoundException",
        lambda a: KeyNotFoundError(f"{a.where}: no such key or alias ({a.code})"),
    ),
    Rule(
        lambda a: a.code == "AccessDeniedException",
        lambda a: PermissionDeniedError(
            f"{a.where}: not allowed by the IAM or key policy ({a.code})"
        ),
    ),
    Rule(
        lambda a: a.code in _AUTHENTICATION or a.status in (401, 403),
        lambda a: AuthenticationError(f"{a.where}: AWS did not accept the credentials ({a.code})"),
    ),
    Rule(
        lambda a: a.code in _THROTTLED or a.status == 429,
        lambda a: RateLimitedError(
            f"{a.where}: throttled by AWS KMS ({a.code})", retry_after=a.retry_after
        ),
    ),
    Rule(
        lambda a: a.code in _UNAVAILABLE or a.status >= 500,
        lambda a: KMSUnavailableError(
            f"{a.where}: AWS KMS is unavailable ({a.code})", retry_after=a.retry_after
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class _NoAnswer:
    where: str
    exc: BotoCoreError

    @property
    def kind(self) -> str:
        return type(self.exc).__name__


_BY_CLIENT_ERROR: tuple[Rule[_NoAnswer, HeimdallKMSError], ...] = (
    Rule(
        lambda f: isinstance(f.exc, TRANSPORT),
        lambda f: KMSUnavailableError(f"{f.where}: cannot reach AWS KMS ({f.kind})"),
    ),
    Rule(
        # The metadata or container endpoint did not answer: an outage, not a refusal.
        lambda f: isinstance(f.exc, NO_CREDENTIALS) and caused_by(f.exc, TRANSPORT),
        lambda f: KMSUnavailableError(
            f"{f.where}: the credential endpoint is unreachable ({f.kind})"
        ),
    ),
    Rule(
        lambda f: isinstance(f.exc, NO_CREDENTIALS),
        lambda f: AuthenticationError(
            f"{f.where}: no usable credentials in the AWS chain ({f.kind})"
        ),
    ),
)


def translate(exc: ClientError | BotoCoreError, operation: str) -> HeimdallKMSError:
    """Our error for botocore's ``exc`` raised by ``operation``."""
    where = f"AWS KMS {operation}"
    if isinstance(exc, BotoCoreError):
        return first_match(
            _BY_CLIENT_ERROR,
            _NoAnswer(where, exc),
            lambda f: KMSError(f"{f.where} failed ({f.kind})"),
        )
    return first_match(
        _BY_ANSWER,
        _Answer.of(exc, where),
        lambda a: KMSError(f"{a.where} refused the request ({a.code})"),
    )
