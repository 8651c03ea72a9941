"""AWS, GCP and Azure throttling: a background job waits what the KMS asks and finishes; an
online call fails fast with the typed error.

The servers are real and local: moto_server for AWS, the GCP and Azure wire fakes (their
429s are tested on the wire in ``test_cloud_retry_after.py``). moto never throttles, so the
AWS throttles are injected at botocore's ``before-send`` hook, the one answer a Stubber would
give, as an HTTP 400 ``ThrottlingException`` with ``Retry-After`` that botocore parses itself;
every other request reaches moto. Each job migrates legacy rows in SQLite, counts the waits the
KMS's Retry-After set, and every row is read back afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse

from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.composition import Caller, load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import RateLimitedError
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.migrate import MigrationJob, MigrationOptions
from heimdall_kms.jobs.rate import TokenBucket
from heimdall_kms.jobs.report import TargetReport
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from heimdall_kms.providers.wrapper import ProviderWrapper
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.contract.backends.azure import ADMIN
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.azure_kv_http import CRYPTO_OFFICER, start_fake_key_vault
from tests.fakes.gcp_kms_http import start_fake_kms
from tests.integration.dbtables import UserTable
from tests.integration.test_migrate_faults import MASTER_HEX, assert_all_migrated_once, legacy_rows
from tests.servers_aws import start_moto

ROWS = 60
ONLINE_BOUND = 10.0  # seconds: an online call under throttling gives up within this


class _Body:
    """The raw body botocore reads an answer from."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


class AWSThrottle:
    """Answers the next ``count`` Encrypt requests of a real client with a throttle."""

    def __init__(self, client: Any, retry_after: str) -> None:
        self.left = 0
        self.sent = 0
        self._retry_after = retry_after
        client.meta.events.register("before-send.kms.Encrypt", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        if self.left <= 0:
            return None
        self.left -= 1
        self.sent += 1
        headers = {
            "x-amzn-ErrorType": "ThrottlingException",
            "Content-Type": "application/x-amz-json-1.1",
            "Retry-After": self._retry_after,
        }
        body = json.dumps({"__type": "ThrottlingException", "message": "Rate exceeded"})
        return AWSResponse(request.url, 400, headers, _Body(body.encode()))


@dataclass
class Throttled:
    """A KMS that can be told to throttle: its settings, how to throttle the next ``n``
    requests on the key (``None``: until cleared), and the provider the job and the online
    caller use (as the commands build them, so that the SDKs' own retries apply)."""

    env: dict[str, str]
    throttle: Callable[[int | None], None]
    provider: Callable[[Settings, bool], KeyManagementService]
    retry_after: float
    burst: int  # throttles in a row that get past the SDK's own retries to the job
    stop: Callable[[], None]


def _load(settings: Settings, background: bool) -> KeyManagementService:
    return load_provider(settings, caller=Caller.BACKGROUND if background else Caller.ONLINE)


def _aws(tmp_path: Path) -> Throttled:
    moto = start_moto()
    from heimdall_kms.providers.aws.client import create_key_for_alias

    create_key_for_alias(moto.client(), "alias/throttled")
    env = moto.env("alias/throttled", HMD_AWS_KEY_VERSIONING="aliases")
    throttles: list[AWSThrottle] = []

    def provider(settings: Settings, background: bool) -> KeyManagementService:
        kms = load_provider(settings, caller=Caller.BACKGROUND if background else Caller.ONLINE)
        inner: object = kms
        while isinstance(inner, ProviderWrapper):
            inner = inner.inner
        assert isinstance(inner, AWSKMSProvider)
        throttles.append(AWSThrottle(inner._client, "2"))
        return kms

    def throttle(count: int | None) -> None:
        throttles[-1].left = 10**6 if count is None else count

    # KMS has no batch call: a batch of 20 is 20 Encrypts at once, each retried by botocore
    # (3 attempts), so it takes 60 throttles in a row for one to reach the job.
    return Throttled(env, throttle, provider, 2.0, 60, moto.stop)


def _gcp(tmp_path: Path) -> Throttled:
    fake = start_fake_kms()
    admin = rest_client(fake.url)
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "throttled", "key_ring": {}}
    )
    key = create_key(admin, str(ring.name))
    env = {
        "HMD_KMS_PROVIDER": "gcp",
        "HMD_KMS_KEY_ID": key,
        "HMD_GCP_KMS_ENDPOINT": fake.url,
        "HMD_GCP_TRANSPORT": "rest",
        "HMD_GCP_CREDENTIALS": "anonymous",
    }

    def throttle(count: int | None) -> None:
        fake.kms.inject(key, "RESOURCE_EXHAUSTED", times=count, retry_delay=1.5)

    return Throttled(env, throttle, _load, 1.5, 3, fake.stop)


def _azure(tmp_path: Path) -> Throttled:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.create_key("throttled")
    fake.vault.retry_after, fake.vault.retry_after_ms = "1", "1200"
    env = {
        "HMD_KMS_PROVIDER": "azure",
        "HMD_KMS_KEY_ID": fake.key_url("throttled"),
        "HMD_AZURE_CA_BUNDLE": str(fake.ca_pem),
        "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
        "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "true",
        "AZURE_TENANT_ID": fake.vault.tenant,
        "AZURE_CLIENT_ID": ADMIN[0],
        "AZURE_CLIENT_SECRET": ADMIN[1],
        "AZURE_AUTHORITY_HOST": fake.url,
        "REQUESTS_CA_BUNDLE": str(fake.ca_pem),
    }

    def throttle(count: int | None) -> None:
        fake.vault.inject("throttled", 429, times=count)

    # azure-core retries a 429 with Retry-After three times itself (waiting it out): six in
    # a row get through to the job once.
    return Throttled(env, throttle, _load, 1.2, 6, fake.stop)


@pytest.fixture(params=[_aws, _gcp, _azure], ids=["aws", "gcp", "azure"])
def kms(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Throttled]:
    started: Throttled = request.param(tmp_path)
    for name, value in started.env.items():
        monkeypatch.setenv(name, value)  # the SDKs' credential chains read os.environ
    yield started
    started.stop()


def _hybrid(kms: Throttled, tmp_path: Path) -> dict[str, str]:
    return {
        **kms.env,
        "HMD_ENCRYPTION_MODE": "hybrid",
        "HMD_PII_MASTER_KEY": MASTER_HEX,
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }


class TestABackgroundJob:
    def test_waits_what_the_kms_asks_and_finishes(self, kms: Throttled, tmp_path: Path) -> None:
        table = UserTable.create("sqlite", tmp_path, None)
        table.insert(legacy_rows(ROWS))
        env = _hybrid(kms, tmp_path)
        settings = Settings.from_env(env)
        provider = MeteredProvider(kms.provider(settings, True), TokenBucket(0))
        store = open_store(table.url, Target(table.table, "ssn"))
        throttled: list[int] = []

        def after_a_batch(target: TargetReport) -> None:
            # Once a batch went through, so that the job has measured the rate the KMS allows.
            if not throttled and target.completed:
                throttled.append(target.completed)
                kms.throttle(kms.burst)

        started = time.monotonic()
        with Crypto(settings, kms=provider, audit=MemoryAuditSink()) as crypto:
            options = MigrationOptions(batch_size=20)
            job = MigrationJob(JobServices.of(crypto), options, after_a_batch)
            report = job.run([store])
        elapsed = time.monotonic() - started
        assert report.stop_error is None, report.stopped_by
        assert (report.state, report.totals.completed) == ("completed", ROWS)
        assert report.throttled >= 1
        assert job.patience.waited_for_retry_after >= 1  # the KMS's wait, not the backoff's
        assert elapsed >= kms.retry_after * job.patience.waited_for_retry_after - 0.1
        assert_all_migrated_once(table, ROWS, env)


class TestAnOnlineCall:
    def test_fails_fast_with_the_typed_error(self, kms: Throttled, tmp_path: Path) -> None:
        env = {**kms.env, "HMD_ENCRYPTION_MODE": "kms"}
        settings = Settings.from_env(env)
        provider = kms.provider(settings, False)
        kms.throttle(None)
        with Crypto(settings, kms=provider, audit=MemoryAuditSink()) as crypto:
            started = time.monotonic()
            with pytest.raises(RateLimitedError) as caught:
                crypto.encrypt("123-45-6789", context={"field": "ssn"})
            elapsed = time.monotonic() - started
        assert elapsed < ONLINE_BOUND
        assert caught.value.retry_after == kms.retry_after  # for the caller (admin API: 429)
        assert "123-45-6789" not in str(caught.value)
