"""Is a credential failure an outage of the token source rather than a refusal?

On GKE/GCE, under an Azure managed identity and on EC2/ECS/EKS, credentials come from a local
metadata endpoint. When that endpoint is briefly unreachable, the SDKs raise their credential
errors (google-auth's ``RefreshError``, azure-identity's ``CredentialUnavailableError``,
botocore's ``CredentialRetrievalError``) with the transport failure as the cause. That is
transient (``KMSUnavailableError``, retried), not "credentials refused": nobody refused
anything. A credential error with no transport failure behind it stays an authentication
error. No SDK is imported here: each provider passes its SDK's transport error types.
"""

from __future__ import annotations

__all__ = ["caused_by"]

_DEPTH = 8  # how far down a chain of causes to look


def caused_by(exc: BaseException, transport: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc``, its explicit or implicit causes, or the exceptions it carries as
    arguments (google-auth wraps the caught error as ``RefreshError(caught)``), include one of
    the ``transport`` error types."""
    # ``exc`` itself does not count: only what lies behind it.
    seen = {id(exc)}
    pending = _behind(exc)
    while pending and len(seen) < _DEPTH:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, transport):
            return True
        pending += _behind(current)
    return False


def _behind(exc: BaseException) -> list[BaseException]:
    """The exceptions ``exc`` carries as arguments, then its explicit and implicit causes."""
    carried = [a for a in exc.args if isinstance(a, BaseException)]
    return carried + [c for c in (exc.__cause__, exc.__context__) if c is not None]
