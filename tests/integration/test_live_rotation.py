"""Rotation under live load: rotate, rewrap and retire the OpenBao key while traffic runs.

App threads (AppRole ``app``, each its own ``Crypto``) encrypt and decrypt fresh values, worker
threads (AppRole ``worker``) decrypt stored rows, and the admin role rotates the key, re-wraps
the SQLite table (``run_reencrypt``, rewrap) and retires the old version in the middle of it.
No operation may fail or return a wrong value. The load engine is the benchmark's
(``benchmarks/live_rotation_bench.py``), which prints the same numbers for longer runs.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from benchmarks.live_rotation_bench import (
    COLUMN,
    PHASES,
    TABLE,
    context,
    print_result,
    role_env,
    run_live_rotation,
    ssn,
)

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import KmsV1Envelope, parse
from tests.servers import OpenBao

pytestmark = pytest.mark.vault

ROWS = 2000


def test_rotate_rewrap_retire_under_live_traffic(fresh_openbao: OpenBao, tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_live_rotation(
        fresh_openbao, tmp_path, rows=ROWS, app_threads=4, worker_threads=2, before=2, after=2
    )
    print_result(result)  # shown with -s: p50/p99 before, during and after
    assert result.failures == []
    assert result.versions == (1, 2)
    assert result.rewrapped == ROWS
    for phase in PHASES:
        for op in ("encrypt", "decrypt"):
            count, p50, p99 = result.latency[(phase, op)]
            assert count > 0, f"no {op} traffic {phase} the rotation"
            assert 0 < p50 <= p99
    assert result.audited == result.operations  # every operation audited, once
    with sqlite3.connect(tmp_path / "live.db") as db:
        stored = db.execute(f"SELECT id, {COLUMN} FROM {TABLE} ORDER BY id").fetchall()
    envelopes = [parse(value) for _, value in stored]
    assert all(isinstance(e, KmsV1Envelope) and e.key_version == 2 for e in envelopes)
    app = role_env(fresh_openbao, "app")
    with heimdall_kms.from_env(app, audit=MemoryAuditSink()) as crypto:
        texts = crypto.decrypt_many(
            [value for _, value in stored],
            actor="test",
            reason="verify",
            contexts=[context(row) for row, _ in stored],
        )
    assert texts == [ssn(row) for row, _ in stored]
    assert time.monotonic() - started < 30
