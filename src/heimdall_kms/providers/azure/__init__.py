"""The ``azure`` provider: Azure Key Vault (or Managed HSM) through azure-keyvault-keys.

* :mod:`.settings`: ``HMD_AZURE_*`` (read by :mod:`heimdall_kms.config`; imports no Azure
  library).
* :mod:`.keys`: what ``HMD_KMS_KEY_ID`` names (a key URL) and the audit signing key beside it.
* :mod:`.errors`: the SDK's errors as typed errors (tables, one place).
* :mod:`.provider`: :class:`~.provider.AzureKeyVaultProvider`, both provider contracts over a
  ready ``KeyClient``; :func:`~.provider.build_key_client` builds one. Key versions are the
  key's versions in creation order.
* :mod:`.bootstrap`: ``heimdall-kms azure bootstrap`` (the key, and RBAC role assignments).

Nothing is imported here, so that reading the settings loads no Azure library
(``tests/unit/test_imports.py``).
"""
