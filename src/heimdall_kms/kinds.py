"""The package's shared enums, in a module that imports nothing of the package.

The envelope formats, the primitives and the provider contract name providers, modes and
formats without reading settings; they take these enums from here, so none of them imports
:mod:`heimdall_kms.config` (``tests/unit/test_layers.py`` keeps it so). ``config`` re-exports
every name, which stays the public place to import them from.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AWSKeyVersioning",
    "EncryptionMode",
    "EnvelopeFormat",
    "GCPTransport",
    "ProviderName",
    "TextEnum",
    "VaultAuthMethod",
    "WriteFormat",
]


class TextEnum(StrEnum):
    """A StrEnum that hashes as the text it equals.

    Enum's own ``__hash__`` is Python code hashing the member's *name*; this is str's, in C,
    over the value, so a member and its text are one dict key, and the per-value audit line
    (whose shared members are keyed by a tuple holding several members) hashes at str speed.
    """

    __hash__ = str.__hash__


class EncryptionMode(TextEnum):
    LEGACY = "legacy"
    HYBRID = "hybrid"
    KMS = "kms"


class EnvelopeFormat(TextEnum):
    """A stored value's format: the ``encryption_version`` a ``kms_v1`` envelope carries, or
    the legacy env-key form (which carries none). Audit events and metrics name it too."""

    KMS_V1 = "kms_v1"
    LEGACY = "legacy"


# What hybrid mode writes (HMD_HYBRID_WRITE_FORMAT): one of the formats, so the same enum.
# ``legacy`` is the documented rollback switch.
WriteFormat = EnvelopeFormat


class ProviderName(TextEnum):
    VAULT = "vault"
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"
    LOCAL = "local"


class AWSKeyVersioning(TextEnum):
    """What a key version is on AWS (``HMD_AWS_KEY_VERSIONING``, docs/providers/aws.md)."""

    NATIVE = "native"  # one KMS key; versions are AWS's own rotations of its material
    ALIASES = "aliases"  # one KMS key per version behind alias/<name>/v<n> (retire works)


class GCPTransport(TextEnum):
    """How the Cloud KMS client talks to Google (``HMD_GCP_TRANSPORT``)."""

    GRPC = "grpc"
    REST = "rest"


class VaultAuthMethod(TextEnum):
    TOKEN = "token"  # noqa: S105 - an auth method's name, not a password.
    APPROLE = "approle"
    KUBERNETES = "kubernetes"
    JWT = "jwt"  # JWT/OIDC auth with a signed JWT from a file (CI, a workload identity)
    CERT = "cert"  # TLS certificate auth: the client certificate is the credential
