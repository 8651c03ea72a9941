"""The AWS side of a deployment: create or adopt the master key and the audit signing key, and
the four roles' policies.

``heimdall-kms aws bootstrap`` uses :func:`plan`, :func:`apply` and :func:`policy_document`.
boto3 is used only through the provider's ``call`` (its error translation). See
``docs/providers/aws.md`` (Bootstrap).
"""

from heimdall_kms.providers.aws.bootstrap.policies import (
    PURPOSES,
    ROLES,
    PolicyTarget,
    policy_document,
    role_actions,
)
from heimdall_kms.providers.aws.bootstrap.signing import (
    SigningKey,
    signing_key_name,
    signing_step,
)
from heimdall_kms.providers.aws.bootstrap.steps import (
    AWSCall,
    Change,
    NewKey,
    Plan,
    Step,
    apply,
    plan,
)

__all__ = [
    "PURPOSES",
    "ROLES",
    "AWSCall",
    "Change",
    "NewKey",
    "Plan",
    "PolicyTarget",
    "SigningKey",
    "Step",
    "apply",
    "plan",
    "policy_document",
    "role_actions",
    "signing_key_name",
    "signing_step",
]
