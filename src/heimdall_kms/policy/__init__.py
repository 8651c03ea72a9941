"""The PII policy engine on the KMS (SPEC §6)."""

from heimdall_kms.policy.engine import REDACTED, PolicyEngine, Violation, validate_no_plaintext
from heimdall_kms.policy.rules import Action, Policy, load_policy, parse_policy

__all__ = [
    "REDACTED",
    "Action",
    "Policy",
    "PolicyEngine",
    "Violation",
    "load_policy",
    "parse_policy",
    "validate_no_plaintext",
]
