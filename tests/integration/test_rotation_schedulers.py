"""Many schedulers, skewed clocks: `rotate --if-due` rotates at most once per period.

Real processes (``heimdall-kms rotate --if-due``) at the same instant, on the local provider
(whose keyring can be made to hold a 2-day-old version) with both locks (an flock file, and a
PostgreSQL advisory lock), and on a live OpenBao under a client clock 2 days ahead
(``faketime``) and on moto_server (AWS) with an injected client clock: the age comes from the
KMS's own ``Date``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import AWSKeyVersioning
from heimdall_kms.jobs.rotation import ClockSource, rotate
from heimdall_kms.providers.aws.client import create_key_for_alias
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from heimdall_kms.providers.local import LocalKeyring
from tests.servers import start_openbao
from tests.servers_aws import MotoServer, start_moto

KEY = "heimdall-pii"


def audit_rotations(path: Path) -> list[dict[str, object]]:
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [e for e in events if e["event_type"] == "key.rotate"]


def waiting_on(lock: Path) -> int:
    """How many processes wait for an flock on ``lock`` (the "->" lines of /proc/locks)."""
    inode = f":{lock.stat().st_ino} "
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(" -> " in line and inode in line for line in lines)


@contextlib.contextmanager
def held(lock: Path) -> Iterator[None]:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def run_parallel(
    env: dict[str, str], n: int, prefix: tuple[str, ...] = (), gate: Path | None = None
) -> list[dict[str, object]]:
    """N processes; with ``gate`` (the keyring's lock), released together once all wait on it."""
    binary = shutil.which("heimdall-kms")
    assert binary is not None
    with held(gate) if gate else contextlib.nullcontext():
        processes = start(binary, env, n, prefix)
        deadline = time.monotonic() + 60
        while gate and waiting_on(gate) < n:
            assert time.monotonic() < deadline, "the processes never reached the keyring"
            time.sleep(0.05)
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


def start(
    binary: str, env: dict[str, str], n: int, prefix: tuple[str, ...]
) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [*prefix, binary, "rotate", "--if-due", "--json", "--actor", f"cron-{i}"],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(n)
    ]


@pytest.fixture(params=["flock", "postgres"])
def old_local_key(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A local keyring whose only version is 2 days old, cadence 1 day: due exactly once."""
    LocalKeyring(
        tmp_path / "kr.json", clock=lambda: datetime.now(UTC) - timedelta(days=2)
    ).ensure_key(KEY)
    env = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_KMS_KEY_ID": KEY,
        "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        "HMD_KEY_ROTATION_DAYS": "1",
    }
    if request.param == "postgres":
        env["HMD_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


class TestParallelSchedulers:
    def test_ten_schedulers_at_once_rotate_once(self, old_local_key: dict[str, str]) -> None:
        keyring_path = Path(old_local_key["HMD_LOCAL_KEYRING"])
        # All ten read the key at the same instant: each waits on the keyring, then all go.
        gate = keyring_path.with_name(keyring_path.name + ".lock")
        results = run_parallel(old_local_key, 10, gate=gate)
        assert sum(bool(r["rotated"]) for r in results) == 1
        assert {r["new_version"] for r in results} == {2}
        keyring = LocalKeyring(keyring_path)
        assert sorted(keyring.read_key(KEY)["versions"]) == ["1", "2"]
        rotations = audit_rotations(Path(old_local_key["HMD_AUDIT_LOG"]))
        # One attempt: its intent and its one success outcome, for v2.
        assert [(e["result"], e.get("key_version")) for e in rotations] == [
            ("intent", None),
            ("success", 2),
        ]
        assert {r["clock"] for r in results} == {"local"}  # the local provider has no server


@pytest.fixture
def vault_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    server = start_openbao()
    yield server.env(HMD_AUDIT_LOG=str(tmp_path / "audit.log"), HMD_KEY_ROTATION_DAYS="1")
    server.stop()


class TestSkewedClientClock:
    def test_a_client_clock_two_days_ahead_does_not_rotate(self, vault_env: dict[str, str]) -> None:
        faketime = shutil.which("faketime")
        if faketime is None:
            if os.environ.get("CI") == "true":
                pytest.fail("faketime is missing: scripts/test.sh installs it (apt-get)")
            pytest.skip("faketime is not installed (apt-get install faketime)")
        # The key is seconds old by Vault's clock; 2 days old by the skewed client's.
        results = run_parallel(vault_env, 5, prefix=(faketime, "+2 days"))
        assert [r["rotated"] for r in results] == [False] * 5
        assert {(r["old_version"], r["clock"]) for r in results} == {(1, "kms")}
        assert audit_rotations(Path(vault_env["HMD_AUDIT_LOG"])) == []


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def aws_key(server: MotoServer, versioning: AWSKeyVersioning) -> AWSKMSProvider:
    client = server.client()
    alias = f"alias/rot-{secrets.token_hex(4)}"
    if versioning is AWSKeyVersioning.ALIASES:
        create_key_for_alias(client, alias)
    else:
        key = client.create_key(Description="rotation clock")["KeyMetadata"]["KeyId"]
        client.create_alias(AliasName=alias, TargetKeyId=key)
    return AWSKMSProvider(client, alias, versioning=versioning)


class TestAwsClock:
    @pytest.mark.parametrize("versioning", list(AWSKeyVersioning))
    def test_the_age_is_measured_by_the_date_aws_answered_with(
        self, moto: MotoServer, versioning: AWSKeyVersioning
    ) -> None:
        kms = aws_key(moto, versioning)
        info = kms.describe()
        assert info.server_time is not None  # the response's Date header
        assert abs(info.server_time - datetime.now(UTC)) < timedelta(minutes=1)
        sink = MemoryAuditSink()
        skewed = datetime.now(UTC) + timedelta(days=2)  # this host's clock, 2 days ahead
        result = rotate(kms, sink, actor="cron", if_due=True, cadence=timedelta(days=1), now=skewed)
        assert (result.rotated, result.clock) == (False, ClockSource.KMS)
        assert kms.describe().latest_version == 1
        assert sink.events == []
