"""The moto test server now lives in :mod:`heimdall_kms.testing.moto_server`.

This module re-exports it under the old names while tests still import them from here; new
code imports from ``heimdall_kms.testing``.
"""

from __future__ import annotations

from heimdall_kms.testing.moto_server import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    MotoServer,
    kms_client,
    moto_binary,
    start_moto,
)
from heimdall_kms.testing.processes import free_port, installed_binary, stop_process

__all__ = [
    "ACCESS_KEY",
    "REGION",
    "SECRET_KEY",
    "MotoServer",
    "free_port",
    "installed_binary",
    "kms_client",
    "moto_binary",
    "start_moto",
    "stop_process",
]
