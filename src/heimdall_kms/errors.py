"""The typed errors of heimdall-kms (SPEC §5).

Every error raised on purpose by this package derives from :class:`HeimdallKMSError`. Each
class carries its own category so that no other module repeats the mapping:

* ``error_type`` — the stable label used in audit events and in
  ``heimdall_crypto_errors_total{error_type=...}``;
* ``retryable`` — whether trying the same call again later can succeed;
* ``exit_code`` — what the command line exits with (the table is in ``docs/cli.md``).

Messages never contain plaintext, key material, tokens or a provider's raw response body:
provider adapters build them from safe parts only. Integrity failures say nothing specific,
as pyca's ``InvalidTag`` does, because a precise reason helps an attacker more than a user.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuditCrashError",
    "AuditTamperedError",
    "AuditWriteError",
    "AuthenticationError",
    "CircuitOpenError",
    "ConfigurationError",
    "HeimdallKMSError",
    "IncompleteError",
    "IntegrityError",
    "InvalidInputError",
    "KMSError",
    "KMSUnavailableError",
    "KeyNotFoundError",
    "KeyVersionRetiredError",
    "MalformedEnvelopeError",
    "ModeViolationError",
    "NotInEffectError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RefusedError",
    "StoreError",
]


class HeimdallKMSError(Exception):
    """Base class of every error this package raises on purpose."""

    error_type: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    exit_code: ClassVar[int] = 70


class ConfigurationError(HeimdallKMSError):
    """A setting is missing, malformed or inconsistent; the message names the variable."""

    error_type = "configuration"
    exit_code = 78


class InvalidInputError(HeimdallKMSError):
    """A caller-supplied argument (context, plaintext, actor, reason, ...) is unusable."""

    error_type = "invalid_input"
    exit_code = 64


class MalformedEnvelopeError(HeimdallKMSError):
    """The stored value is not a well-formed envelope of a known version."""

    error_type = "malformed_envelope"
    exit_code = 65


class IntegrityError(HeimdallKMSError):
    """Authentication of the ciphertext failed: tampered, truncated or moved to another context."""

    error_type = "integrity"
    exit_code = 66


class ModeViolationError(HeimdallKMSError):
    """The operation is not allowed in the configured ``HMD_ENCRYPTION_MODE``."""

    error_type = "mode_violation"
    exit_code = 67


class StoreError(HeimdallKMSError):
    """The database is unreachable, read-only, or the table/column/id column is wrong."""

    error_type = "store"
    exit_code = 73


class IncompleteError(HeimdallKMSError):
    """A job ran to the end but some values could not be handled (reported by id)."""

    error_type = "incomplete"
    exit_code = 3


class AuditCrashError(IncompleteError):
    """``audit verify``: the lines after the ``.head`` checkpoint chain correctly from the line
    it names, but it does not vouch for them: a writer stopped between writing a batch and
    its checkpoint (a crash), not tampering. ``lines``/``last_hash`` are the log's end."""

    error_type = "audit_crash"

    def __init__(self, message: str, *, lines: int, last_hash: str, checkpoint_seq: int) -> None:
        super().__init__(message)
        self.lines = lines
        self.last_hash = last_hash
        self.checkpoint_seq = checkpoint_seq


class RefusedError(HeimdallKMSError):
    """A guarded operation was refused because it would destroy data (e.g. retiring a key
    version that stored values still need); the message says what to do first."""

    error_type = "refused"
    exit_code = 4


class AuditTamperedError(HeimdallKMSError):
    """``audit verify`` found the hash chain broken; ``line`` is the first bad line (1-based)."""

    error_type = "audit_tampered"
    exit_code = 5

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(message)
        self.line = line


class ListenError(HeimdallKMSError):
    """``serve`` could not listen on its address: the port is in use, or not allowed."""

    error_type = "listen"
    exit_code = 71


class AuditWriteError(HeimdallKMSError):
    """The audit event of an operation could not be recorded, so the operation did not happen."""

    error_type = "audit_write"
    exit_code = 74


class KMSError(HeimdallKMSError):
    """A failure reported by, or on the way to, the key management service.

    ``retry_after`` is the wait in seconds the KMS asked for (a ``Retry-After`` header, gRPC
    retry info), when it said; callers that try again wait at least that long.
    """

    error_type = "kms"
    exit_code = 69

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotInEffectError(KMSError):
    """The KMS accepted a key change (a rotation, a retirement) but does not apply it yet.

    Eventually consistent KMSs (GCP, AWS) put a new primary version or a disabled version into
    effect after a while; the change is made and stays made, it is only not in effect within
    the wait (``HMD_KMS_PROPAGATION_SECONDS``).
    """

    error_type = "not_in_effect"
    # Not retryable: calling rotate again would make yet another version.
    exit_code = 75


class KeyNotFoundError(KMSError):
    """The master key (or the legacy key id, or the key version) does not exist."""

    error_type = "key_not_found"
    exit_code = 68


class KeyVersionRetiredError(KMSError):
    """The key version is below the KMS's minimum decryption version (retired)."""

    error_type = "key_retired"
    exit_code = 68


class KMSUnavailableError(KMSError):
    """The KMS cannot be reached or is not serving (network error, timeout, 5xx, sealed)."""

    error_type = "unavailable"
    retryable = True
    exit_code = 69


class CircuitOpenError(KMSUnavailableError):
    """Failing fast: the circuit breaker is open after repeated unavailability.

    Counted as ``error_type="circuit_open"`` in ``heimdall_crypto_errors_total``, which is how
    the breaker's state shows in the metrics.
    """

    error_type = "circuit_open"


class RateLimitedError(KMSError):
    """The KMS refused the call because of a rate limit or quota (HTTP 429, throttling)."""

    error_type = "rate_limited"
    retryable = True
    exit_code = 75


class AuthenticationError(KMSError):
    """The KMS did not accept our credentials, or they do not allow the operation."""

    error_type = "authentication"
    exit_code = 77


class PermissionDeniedError(AuthenticationError):
    """Authenticated, but the identity's policy does not allow this operation (HTTP 403)."""

    error_type = "permission_denied"
