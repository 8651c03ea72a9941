"""Retries, the circuit breaker and rate limits against a live OpenBao."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import hvac
import pytest

from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.errors import AuthenticationError, KMSUnavailableError
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.providers.resilient import (
    BreakerState,
    CircuitBreaker,
    ResilientProvider,
    RetryPolicy,
)
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.legacy_data import legacy_envelope
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao

pytestmark = pytest.mark.vault


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def resilient(
    server: OpenBao, clock: Clock, *, token: str | None = None, key: str = TRANSIT_KEY
) -> tuple[ResilientProvider, CountingSession]:
    session = CountingSession()
    client = hvac.Client(url=server.addr, token=token or server.root_token, session=session)
    provider = ResilientProvider(
        VaultTransitProvider(client, key),
        retry=RetryPolicy(attempts=4, sleep=clock.sleep),
        breaker=CircuitBreaker(threshold=2, cooldown=30, clock=clock),
    )
    return provider, session


def test_sealed_vault_retries_then_the_breaker_opens_then_a_probe_closes_it(
    fresh_openbao: OpenBao,
) -> None:
    clock = Clock()
    provider, session = resilient(fresh_openbao, clock)
    dek = primitives.new_dek()
    provider.wrap_many([dek], [{}])
    fresh_openbao.client().sys.seal()
    session.statuses.clear()
    with pytest.raises(KMSUnavailableError):
        provider.wrap_many([dek], [{}])
    assert session.statuses == [503] * 4  # bounded: four attempts, backing off between
    assert clock.now > 0
    with pytest.raises(KMSUnavailableError):
        provider.wrap_many([dek], [{}])
    assert provider.breaker.state is BreakerState.OPEN
    session.statuses.clear()
    with pytest.raises(KMSUnavailableError, match="circuit open"):
        provider.wrap_many([dek], [{}])
    assert session.statuses == []  # failed fast: Vault was not even asked
    fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)
    clock.now += 30
    provider.health()  # the probe
    assert provider.breaker.state is BreakerState.CLOSED
    assert len(provider.wrap_many([dek], [{}])) == 1


def test_authentication_errors_are_not_retried(openbao: OpenBao) -> None:
    clock = Clock()
    provider, session = resilient(openbao, clock, token="s.revoked")
    with pytest.raises(AuthenticationError):
        provider.describe()
    # One token lookup (renewal check) and one refused call; no retries, no back-off.
    assert session.statuses == [403, 403]
    assert clock.now == 0


def test_rate_limit_quota_slows_a_migration_that_still_finishes(
    fresh_openbao: OpenBao, tmp_path: Path
) -> None:
    root = fresh_openbao.client()
    root.adapter.post(
        "/v1/sys/quotas/rate-limit/transit-encrypt",
        json={"rate": 4, "interval": "1s", "path": f"transit/encrypt/{TRANSIT_KEY}"},
    )
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, legacy_envelope("ab" * 32, f"v{i}")) for i in range(1, 5001)],
        )
    env = fresh_openbao.env(HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY="ab" * 32)
    settings = Settings.from_env(env)
    session = CountingSession()
    client = hvac.Client(url=fresh_openbao.addr, token=fresh_openbao.root_token, session=session)
    # Real sleeps here: the quota is real time. Attempts are generous; the total is bounded.
    kms = ResilientProvider(
        VaultTransitProvider(client, TRANSIT_KEY),
        retry=RetryPolicy(attempts=50, max_seconds=120),
    )
    store = open_store(f"sqlite:///{path}", Target("t", "v"))
    with Crypto(settings, kms=kms, audit=MemoryAuditSink()) as c:
        report = run_migration(c, [store], MigrationOptions(batch_size=250))
    store.close()
    assert report.stop_error is None
    assert report.totals.completed == 5000
    assert 429 in session.statuses  # it really was throttled, and backed off
    with sqlite3.connect(path) as db:
        # kms_v1 envelopes carry a key_id too now: count what is not kms_v1.
        (legacy,) = db.execute(
            "SELECT count(*) FROM t WHERE v NOT LIKE ?", ['%"encryption_version"%']
        ).fetchone()
    assert legacy == 0


def approle_env(server: OpenBao) -> dict[str, str]:
    root = server.client()
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.sys.create_or_update_policy(
        "relogin",
        'path "transit/*" { capabilities = ["update", "read"] }\n'
        'path "auth/token/*" { capabilities = ["update", "read"] }\n',
    )
    root.auth.approle.create_or_update_approle(
        "relogin", token_policies=["relogin"], token_ttl="10m"
    )
    role_id = root.auth.approle.read_role_id("relogin")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("relogin")["data"]["secret_id"]
    return server.env(
        HMD_VAULT_AUTH_METHOD="approle",
        HMD_VAULT_ROLE_ID=role_id,
        HMD_VAULT_SECRET_ID=secret_id,
        HMD_VAULT_TOKEN="",
    )


def test_revoked_token_with_approle_logs_in_again_without_losing_the_batch(
    fresh_openbao: OpenBao,
) -> None:
    import heimdall_kms

    with heimdall_kms.from_env(approle_env(fresh_openbao), audit=MemoryAuditSink()) as c:
        first = c.encrypt_many([(f"v{i}", {"record": str(i)}) for i in range(300)])
        provider = c.kms.inner if isinstance(c.kms, ResilientProvider) else c.kms  # type: ignore[union-attr]
        token = provider._client.token  # type: ignore[union-attr]
        fresh_openbao.client().auth.token.revoke(token)
        texts = c.decrypt_many(first, actor="t", reason="after revocation")
        assert texts == [f"v{i}" for i in range(300)]
        assert provider._client.token != token  # type: ignore[union-attr]


def test_revoked_static_token_fails_at_once(fresh_openbao: OpenBao) -> None:
    import heimdall_kms

    root = fresh_openbao.client()
    token = root.auth.token.create(policies=["root"], ttl="10m")["auth"]["client_token"]
    with heimdall_kms.from_env(
        fresh_openbao.env(HMD_VAULT_TOKEN=token), audit=MemoryAuditSink()
    ) as c:
        envelope = c.encrypt("x", context={"record": "1"})
        root.auth.token.revoke(token)
        with pytest.raises(AuthenticationError):
            c.decrypt(envelope, actor="t", reason="r")


def test_renewable_token_is_renewed_before_it_runs_out(fresh_openbao: OpenBao) -> None:
    import time

    from heimdall_kms.providers.vault.auth import TokenKeeper

    root = fresh_openbao.client()
    token = root.auth.token.create(policies=["root"], ttl="3s", renewable=True)
    client = fresh_openbao.client(token=token["auth"]["client_token"])
    keeper = TokenKeeper(client, None, check_every=0)
    keeper.keep_fresh()  # 3s left of 3s: not yet
    time.sleep(2.2)  # now under a third of its TTL is left
    before = client.auth.token.lookup_self()["data"]["ttl"]
    keeper.keep_fresh()
    after = client.auth.token.lookup_self()["data"]["ttl"]
    assert before <= 1
    assert after >= 2


def test_a_rate_limited_job_slows_its_own_budget(fresh_openbao: OpenBao) -> None:
    from heimdall_kms.errors import RateLimitedError
    from heimdall_kms.jobs.metered import MeteredProvider
    from heimdall_kms.jobs.rate import TokenBucket

    fresh_openbao.client().adapter.post(
        "/v1/sys/quotas/rate-limit/slow",
        json={"rate": 2, "interval": "1s", "path": f"transit/encrypt/{TRANSIT_KEY}"},
    )
    client = hvac.Client(url=fresh_openbao.addr, token=fresh_openbao.root_token)
    bucket = TokenBucket(50)
    # As a background job builds it: one attempt per call below, the job retries (paced).
    kms = MeteredProvider(
        ResilientProvider(VaultTransitProvider(client, TRANSIT_KEY), retry=RetryPolicy(attempts=1)),
        bucket,
    )
    for _ in range(6):
        with contextlib.suppress(RateLimitedError):
            kms.wrap_many([primitives.new_dek()], [{}])
    assert kms.throttled >= 1
    assert bucket.rate < 50  # the 429s it met were turned into a slower budget
