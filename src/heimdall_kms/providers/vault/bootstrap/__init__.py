"""The KMS side of a Vault deployment: Transit key, least-privilege policies, login roles.

``heimdall-kms vault bootstrap`` uses :func:`plan` and :func:`apply`; ``heimdall-kms doctor``
uses the read-only probes. hvac is used only here and in the other ``providers/vault*``
modules. See ``docs/vault-bootstrap.md``.
"""

from heimdall_kms.providers.vault.bootstrap.policies import (
    KEY_TYPE,
    ROLES,
    BootstrapOptions,
    KubernetesBinding,
    policy_hcl,
)
from heimdall_kms.providers.vault.bootstrap.probe import (
    ServerStatus,
    TokenStatus,
    server_status,
    token_status,
)
from heimdall_kms.providers.vault.bootstrap.steps import (
    ApiCall,
    Change,
    Step,
    apply,
    new_secret_ids,
    plan,
    role_ids,
)

__all__ = [
    "KEY_TYPE",
    "ROLES",
    "ApiCall",
    "BootstrapOptions",
    "Change",
    "KubernetesBinding",
    "ServerStatus",
    "Step",
    "TokenStatus",
    "apply",
    "new_secret_ids",
    "plan",
    "policy_hcl",
    "role_ids",
    "server_status",
    "token_status",
]
