"""The ``aws`` provider: AWS KMS through boto3.

* :mod:`.settings`: ``HMD_AWS_*`` and the standard ``AWS_*`` (read by :mod:`heimdall_kms.config`;
  imports no boto3).
* :mod:`.keys`: what ``HMD_KMS_KEY_ID`` names (key id, key ARN, alias, alias ARN).
* :mod:`.native` and :mod:`.aliases`: the two key-versioning schemes (AWS's own rotations of one
  key; one key per version behind ``alias/<name>/v<n>``, opt-in, for ``retire``).
* :mod:`.errors`: botocore's errors as typed errors (tables, one place).
* :mod:`.client`: :func:`~.client.build_client` makes a boto3 KMS client from the settings;
  :func:`~.client.caller` is the one way a call is made (deadline, error translation).
* :mod:`.provider`: :class:`~.provider.AWSKMSProvider`, both provider contracts over a ready
  boto3 KMS client.
* :mod:`.bootstrap`: ``heimdall-kms aws bootstrap`` (the key, and least-privilege policies).

Nothing is imported here, so that reading the settings loads no boto3
(``tests/unit/test_imports.py``).
"""
