"""The ``gcp`` provider: GCP Cloud KMS through google-cloud-kms.

* :mod:`.settings`: ``HMD_GCP_*`` (read by :mod:`heimdall_kms.config`; imports no Google library).
* :mod:`.errors`: the client's errors as typed errors (tables, one place).
* :mod:`.client`: :func:`~.client.build_client` makes a ``KeyManagementServiceClient`` from
  the settings; :func:`~.client.check_key_name` checks ``HMD_KMS_KEY_ID``.
* :mod:`.provider`: :class:`~.provider.GCPKMSProvider`, both provider contracts over a ready
  client. Key versions are the CryptoKey's own (``gcp:v<n>:``).
* :mod:`.bootstrap`: ``heimdall-kms gcp bootstrap`` (the key, and IAM roles on it).

Nothing is imported here, so that reading the settings loads no Google library
(``tests/unit/test_imports.py``).
"""
