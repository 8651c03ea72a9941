"""AWS, GCP and Azure calls end at their total deadline, however slowly the answer trickles.

Each provider is built from the environment, as the commands build it, against its real
local server (moto_server, the GCP and Azure wire fakes) behind ``tests/fault_proxy.py``. A
first call goes through; then the proxy sends every answer back one byte every 2 s, so no
single socket read ever reaches the SDK's read timeout (3 s here). The call must still end
within the deadline (the same 3 s) plus a little, as the typed transient error, naming the
deadline; with the proxy passing again the provider works on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from heimdall_kms import primitives
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import HeimdallKMSError, KMSUnavailableError
from heimdall_kms.providers import KeyManagementService
from tests.contract.backends.azure import ADMIN
from tests.contract.backends.gcp import LOCATION, create_key, rest_client
from tests.fakes.azure_kv_http import CRYPTO_OFFICER, start_fake_key_vault
from tests.fakes.gcp_kms_http import start_fake_kms
from tests.fault_proxy import FaultProxy, Mode
from tests.servers_aws import start_moto

DEADLINE = 3.0
SLACK = 4.0  # the timer, the SDK's unwinding and a loaded 2-core machine


@dataclass
class Upstream:
    """A running server, the port to put the proxy in front of, and the provider's settings
    for an endpoint (the proxy's address)."""

    port: int
    env: Callable[[int], dict[str, str]]
    stop: Callable[[], None]


def _aws() -> Upstream:
    moto = start_moto()
    from heimdall_kms.providers.aws.client import create_key_for_alias

    create_key_for_alias(moto.client(), "alias/deadline")
    port = int(moto.endpoint.rsplit(":", 1)[1])

    def env(proxy_port: int) -> dict[str, str]:
        return moto.env(
            "alias/deadline",
            AWS_ENDPOINT_URL_KMS=f"http://127.0.0.1:{proxy_port}",
            HMD_AWS_TIMEOUT=f"{DEADLINE:g}",
            HMD_AWS_KEY_VERSIONING="aliases",
        )

    return Upstream(port, env, moto.stop)


def _gcp() -> Upstream:
    fake = start_fake_kms()
    admin = rest_client(fake.url)
    ring = admin.create_key_ring(
        request={"parent": LOCATION, "key_ring_id": "deadline", "key_ring": {}}
    )
    key = create_key(admin, str(ring.name))
    port = int(fake.url.rsplit(":", 1)[1])

    def env(proxy_port: int) -> dict[str, str]:
        return {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "gcp",
            "HMD_KMS_KEY_ID": key,
            "HMD_GCP_KMS_ENDPOINT": f"http://127.0.0.1:{proxy_port}",
            "HMD_GCP_TRANSPORT": "rest",
            "HMD_GCP_CREDENTIALS": "anonymous",
            "HMD_GCP_TIMEOUT": f"{DEADLINE:g}",
        }

    return Upstream(port, env, fake.stop)


def _azure() -> Upstream:
    fake = start_fake_key_vault()
    fake.vault.add_principal(*ADMIN, CRYPTO_OFFICER)
    fake.vault.create_key("deadline")
    port = int(fake.url.rsplit(":", 1)[1])

    def env(proxy_port: int) -> dict[str, str]:
        return {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "azure",
            "HMD_KMS_KEY_ID": f"https://127.0.0.1:{proxy_port}/keys/deadline",
            "HMD_AZURE_CA_BUNDLE": str(fake.ca_pem),
            "HMD_AZURE_VERIFY_CHALLENGE_RESOURCE": "false",
            "HMD_AZURE_DISABLE_INSTANCE_DISCOVERY": "true",
            "HMD_AZURE_TIMEOUT": f"{DEADLINE:g}",
            # The token comes from the fake's Entra ID directly, not through the proxy.
            "AZURE_TENANT_ID": fake.vault.tenant,
            "AZURE_CLIENT_ID": ADMIN[0],
            "AZURE_CLIENT_SECRET": ADMIN[1],
            "AZURE_AUTHORITY_HOST": fake.url,
            "REQUESTS_CA_BUNDLE": str(fake.ca_pem),
        }

    return Upstream(port, env, fake.stop)


@pytest.fixture(params=[_aws, _gcp, _azure], ids=["aws", "gcp", "azure"])
def upstream(request: pytest.FixtureRequest) -> Iterator[Upstream]:
    started: Upstream = request.param()
    yield started
    started.stop()


def _wrap_in_thread(kms: KeyManagementService, bound: float) -> tuple[object, float]:
    """``wrap_many`` of one DEK on a thread: its outcome (result or error) and duration; the
    test fails if it is still waiting after ``bound`` seconds."""
    outcome: list[object] = []

    def attempt() -> None:
        try:
            outcome.append(kms.wrap_many([primitives.new_dek()], [{}]))
        except HeimdallKMSError as exc:
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(bound)
    assert not worker.is_alive(), f"wrap_many still waiting after {bound:g} s"
    return outcome[0], time.monotonic() - started


class TestATricklingAnswer:
    def test_is_cut_at_the_total_deadline(
        self, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        proxy = FaultProxy(upstream.port, trickle_seconds=2.0)
        try:
            env = upstream.env(proxy.port)
            for name, value in env.items():
                monkeypatch.setenv(name, value)  # the SDKs' credential chains read os.environ
            kms = load_provider(Settings.from_env(env))
            first, _ = _wrap_in_thread(kms, 30)
            assert isinstance(first, list), first  # through the proxy, before it trickles
            proxy.mode = Mode.TRICKLE
            cut, elapsed = _wrap_in_thread(kms, 60)
            assert isinstance(cut, KMSUnavailableError), cut
            assert f"no complete answer within {DEADLINE:g}s" in str(cut)
            assert DEADLINE - 0.5 <= elapsed < DEADLINE + SLACK
            proxy.mode = Mode.PASS
            again, _ = _wrap_in_thread(kms, 30)
            assert isinstance(again, list), again
            kms.close()
        finally:
            proxy.close()
