"""The ``local`` provider: a software keyring file, for the embedded default and the tests.
NOT FOR PRODUCTION.

* :mod:`.settings`: ``HMD_LOCAL_KEYRING`` (read by :mod:`heimdall_kms.config`).
* :mod:`.keyring`: :class:`LocalKeyring`, the file, its versions and its lock.
* :mod:`.provider`: :class:`LocalDevProvider`, both provider contracts over a keyring.

It needs no SDK, so the two classes are re-exported here.
"""

from __future__ import annotations

from heimdall_kms.providers.local.keyring import LocalKeyring
from heimdall_kms.providers.local.provider import LocalDevProvider

__all__ = ["LocalDevProvider", "LocalKeyring"]
