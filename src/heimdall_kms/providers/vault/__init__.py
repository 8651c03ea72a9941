"""The ``vault`` provider: HashiCorp Vault (or OpenBao) Transit, through hvac.

* :mod:`.settings`: ``HMD_VAULT_*`` (read by :mod:`heimdall_kms.config`; imports no hvac).
* :mod:`.http`: the one HTTP path to Vault, an hvac adapter every call goes through.
* :mod:`.auth`: login (token, token file, AppRole, Kubernetes, JWT, cert) and token renewal.
* :mod:`.errors`: hvac's answers as typed errors with safe messages (tables, one place).
* :mod:`.transit`: :class:`~.transit.VaultTransitProvider`, both provider contracts over a
  ready ``hvac.Client``; :func:`~.transit.build_client` builds one from the settings.

Key versions are Transit's own (``vault:v<n>:``, ``min_decryption_version``). Nothing is
imported here, so that reading the settings loads no hvac (``tests/unit/test_imports.py``).
"""
