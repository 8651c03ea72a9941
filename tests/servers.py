"""The OpenBao test server and process helpers now live in :mod:`heimdall_kms.testing`.

This module re-exports them under their old names while tests still import them from here;
new code imports from ``heimdall_kms.testing``.
"""

from __future__ import annotations

from heimdall_kms.testing.openbao import (
    TRANSIT_KEY,
    CountingSession,
    OpenBao,
    bao_binary,
    start_openbao,
)
from heimdall_kms.testing.processes import free_port, installed_binary, run_cli, stop_process

__all__ = [
    "TRANSIT_KEY",
    "CountingSession",
    "OpenBao",
    "bao_binary",
    "free_port",
    "installed_binary",
    "run_cli",
    "start_openbao",
    "stop_process",
]
