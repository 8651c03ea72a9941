"""A kms-mode deployment (local keyring or a fresh OpenBao) with a SQLite table ``t(id, v)`` of
values sealed as ``migrate`` seals them: the starting point of the lifecycle scenarios."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import Envelope
from heimdall_kms.providers.local import LocalKeyring
from tests.servers import start_openbao

__all__ = ["SealedTable", "sealed_table"]


@dataclass
class SealedTable:
    env: dict[str, str]  # the deployment's HMD_* settings (also set in os.environ)
    db: Path
    log: Path  # HMD_AUDIT_LOG
    sealed: list[Envelope]  # row i holds sealed[i]

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"


@contextmanager
def sealed_table(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, rows: int, prefix: str
) -> Iterator[SealedTable]:
    """``backend`` is ``local`` or ``vault``; row ``i`` holds ``f"{prefix}{i}"`` sealed to
    ``{"table": "t", "field": "v", "record": str(i)}``."""
    log = tmp_path / "audit.log"
    env = {"HMD_ENCRYPTION_MODE": "kms", "HMD_AUDIT_LOG": str(log)}
    server = None
    if backend == "local":
        env |= {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json")}
        LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
    else:
        server = start_openbao()
        env |= server.env(HMD_AUDIT_LOG=str(log))
    try:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        db = tmp_path / "app.db"
        with (
            heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto,
            sqlite3.connect(db) as c,
        ):
            c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            sealed = crypto.encrypt_many(
                [
                    (f"{prefix}{i}", {"table": "t", "field": "v", "record": str(i)})
                    for i in range(rows)
                ]
            )
            c.executemany(
                "INSERT INTO t VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(sealed)]
            )
        yield SealedTable(env, db, log, sealed)
    finally:
        if server is not None:
            server.stop()
