"""AWS KMS on moto_server, opt-in alias-per-version scheme: one KMS key per version."""

from __future__ import annotations

from heimdall_kms.config import AWSKeyVersioning
from tests.contract.backends import aws


class Backend(aws.Backend):
    name = "aws"  # the provider name it writes; the module name tells the backends apart
    retires = True  # retire disables the KMS keys of the older versions
    versioning = AWSKeyVersioning.ALIASES
