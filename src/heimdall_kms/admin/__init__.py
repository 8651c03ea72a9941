"""The admin HTTP API (``heimdall-kms serve``, extra ``server``): SPEC §7.

Importing this package imports FastAPI; nothing outside it (and the ``serve`` command, lazily)
does, so ``import heimdall_kms`` and the rest of the CLI work without the extra.
"""

from heimdall_kms.admin.app import create_app
from heimdall_kms.admin.auth import Principal, Role, TokenTable, load_tokens

__all__ = ["Principal", "Role", "TokenTable", "create_app", "load_tokens"]
