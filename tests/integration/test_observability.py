"""SPEC §12 against a live ``heimdall-kms serve``: the metrics, their zero series before the
first error, the circuit state, key age and due date, audit write failures.

``serve`` runs as its own process on a free loopback port (local provider, and OpenBao), and
``/metrics`` is read over HTTP as Prometheus would.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import heimdall_kms
from heimdall_kms.admin import create_app, load_tokens
from heimdall_kms.admin.observe import instrument
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.audit.sink import StreamAuditSink
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.errors import KMSUnavailableError
from heimdall_kms.metrics import ERROR_TYPES, OPERATIONS, ExposedMetrics, Metrics
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.providers.resilient import CircuitBreaker, ResilientProvider, RetryPolicy
from tests.servers import OpenBao, free_port, stop_process

KEY = "heimdall-pii"  # the transit key of tests.servers and the local provider's default
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def write_tokens(path: Path) -> dict[str, str]:
    tokens = {role: secrets.token_urlsafe(24) for role in ("admin", "app", "audit")}
    path.write_text(
        "".join(f"{r} {hashlib.sha256(t.encode()).hexdigest()}\n" for r, t in tokens.items())
    )
    return tokens


@dataclass
class LiveServe:
    """A ``heimdall-kms serve`` process and what a test needs to talk to it."""

    url: str
    tokens: dict[str, str]
    audit: Path
    stderr: Path
    provider: str

    def metrics(self) -> Samples:
        return samples(httpx.get(f"{self.url}/metrics", timeout=10).text)

    def call(self, method: str, path: str, role: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]

    def wait_for(self, name: str, timeout: float = 20) -> Samples:
        deadline = time.monotonic() + timeout
        while True:
            found = self.metrics()
            if any(key[0] == name for key in found):
                return found
            assert time.monotonic() < deadline, f"{name} never appeared on /metrics"
            time.sleep(0.1)


def start_serve(tmp_path: Path, env: dict[str, str], provider: str) -> Iterator[LiveServe]:
    port = free_port()
    tokens_file = tmp_path / "tokens.txt"
    tokens = write_tokens(tokens_file)
    audit = tmp_path / "audit.log"
    stderr = tmp_path / "serve.stderr"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "OTEL_"))},
        "HMD_AUDIT_LOG": str(audit),
        **env,
        "HMD_ADMIN_TOKENS_FILE": str(tokens_file),
    }
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "heimdall_kms", "serve", "--port", str(port)],
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, stderr.read_text()
            try:
                if httpx.get(f"{url}/metrics", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        yield LiveServe(url, tokens, audit, stderr, provider)
    finally:
        stop_process(process)


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        **extra,
    }


@pytest.fixture(params=["local", "vault"])
def live(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveServe]:
    if request.param == "local":
        env = local_env(tmp_path)
    else:
        server: OpenBao = request.getfixturevalue("openbao")
        env = server.env()
    yield from start_serve(tmp_path, env, request.param)


class TestLiveMetrics:
    def test_spec12_metrics_and_zero_series_before_the_first_error(self, live: LiveServe) -> None:
        """A scrape before any traffic already holds every §12 metric and a 0 for every error
        series, so the first error is an increase from 0 that rate() and increase() see."""
        before = live.wait_for("heimdall_key_age_seconds")
        p = live.provider
        assert before[("heimdall_build_info", (("version", heimdall_kms.__version__),))] == 1
        assert before[("heimdall_kms_circuit_state", (("provider", p),))] == 0
        assert before[("heimdall_audit_write_failures_total", ())] == 0
        labels = (("key", KEY), ("provider", p))
        age = before[("heimdall_key_age_seconds", labels)]
        due = before[("heimdall_key_rotation_due_timestamp_seconds", labels)]
        assert 0 <= age < 3600
        assert due - (time.time() - age) == pytest.approx(90 * 86400, abs=60)
        assert {"integrity", "mode_violation", "unavailable", "circuit_open"} <= set(ERROR_TYPES)
        for operation in OPERATIONS:
            for error_type in ERROR_TYPES:
                series = (
                    "heimdall_crypto_errors_total",
                    (("error_type", error_type), ("operation", operation), ("provider", p)),
                )
                assert before[series] == 0, series
        encrypt_zero = [
            k for k, v in before.items() if k[0] == "heimdall_crypto_encrypt_total" and v == 0
        ]
        assert encrypt_zero, "the latest key version's encrypt series is not pre-initialised"

        sealed = live.call("POST", "/crypto/encrypt", "app", json={"plaintext": "x"}).json()
        sealed["context"] = {"field": "moved"}  # an integrity failure: the first error
        answer = live.call(
            "POST", "/crypto/decrypt", "app", json={"envelope": sealed, "reason": "t"}
        )
        assert answer.status_code == 422
        after = live.metrics()
        integrity = (
            "heimdall_crypto_errors_total",
            (("error_type", "integrity"), ("operation", "decrypt"), ("provider", p)),
        )
        assert (before[integrity], after[integrity]) == (0, 1)
        version = str(sealed["key_version"])
        encrypted = ("heimdall_crypto_encrypt_total", (("key_version", version), ("provider", p)))
        assert (before[encrypted], after[encrypted]) == (0, 1)


# -- in-process: the same app, for what needs a broken sink or a fake clock ---------------------


@pytest.fixture
def app_factory(tmp_path: Path) -> Iterator[Callable[..., tuple[TestClient, dict[str, str]]]]:
    clients: list[TestClient] = []

    def make(env: dict[str, str], **kwargs: object) -> tuple[TestClient, dict[str, str]]:
        tokens_file = tmp_path / f"tokens-{len(clients)}.txt"
        tokens = write_tokens(tokens_file)
        env = {"HMD_AUDIT_LOG": str(tmp_path / "audit.log"), **env}
        app = create_app(Settings.from_env(env), load_tokens(tokens_file), **kwargs)  # type: ignore[arg-type]
        client = TestClient(app).__enter__()
        clients.append(client)
        return client, tokens

    yield make
    for client in clients:
        client.__exit__(None, None, None)


class TestAuditWriteFailures:
    def test_a_lost_audit_event_is_counted_and_the_operation_refused(
        self, tmp_path: Path, app_factory: Callable[..., tuple[TestClient, dict[str, str]]]
    ) -> None:
        broken = io.StringIO()
        broken.close()  # writing raises ValueError: the sink reports AuditWriteError
        client, tokens = app_factory(local_env(tmp_path), audit=StreamAuditSink(broken))
        bearer = {"Authorization": f"Bearer {tokens['app']}"}
        answer = client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=bearer)
        assert answer.status_code == 503 and answer.json()["error_type"] == "audit_write"
        client.get("/admin/crypto/keys")  # no token: the access.denied event is lost too
        found = samples(client.get("/metrics").text)
        assert found[("heimdall_audit_write_failures_total", ())] == 2


class TestKeyMetrics:
    def test_rotation_through_the_api_moves_the_due_date_at_once(
        self, tmp_path: Path, app_factory: Callable[..., tuple[TestClient, dict[str, str]]]
    ) -> None:
        client, tokens = app_factory(local_env(tmp_path, HMD_KEY_ROTATION_DAYS="30"))
        due = (
            "heimdall_key_rotation_due_timestamp_seconds",
            (("key", "heimdall-pii"), ("provider", "local")),
        )
        deadline = time.monotonic() + 10
        while due not in (found := samples(client.get("/metrics").text)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first = found[due]
        time.sleep(1.1)  # the local provider's creation times have one-second resolution
        bearer = {"Authorization": f"Bearer {tokens['admin']}"}
        assert client.post("/admin/crypto/rotate", json={}, headers=bearer).json()["rotated"]
        found = samples(client.get("/metrics").text)
        assert found[due] > first
        assert found[due] - time.time() == pytest.approx(timedelta(days=30).total_seconds(), abs=60)
        zero = ("heimdall_crypto_encrypt_total", (("key_version", "2"), ("provider", "local")))
        assert found[zero] == 0


class TestCircuitState:
    def test_the_gauge_follows_the_breaker(self, tmp_path: Path) -> None:
        """0 closed, 2 open after the threshold, 1 half-open once the cooldown has passed, 0
        after a successful probe; read at scrape time through ResilientProvider."""
        now = [0.0]
        settings = Settings.from_env(local_env(tmp_path))
        breaker = CircuitBreaker(threshold=2, cooldown=10, clock=lambda: now[0])
        kms = ResilientProvider(load_provider(settings), retry=RetryPolicy(1), breaker=breaker)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        instrument(settings, kms, metrics, MemoryAuditSink(), key_metrics_seconds=60)

        def level() -> float:
            return next(
                s.value
                for f in ExposedMetrics(registry).collect()
                for s in f.samples
                if s.name == "heimdall_kms_circuit_state"
            )

        assert level() == 0
        breaker.record(KMSUnavailableError("down"))
        breaker.record(KMSUnavailableError("down"))
        assert level() == 2
        now[0] = 11
        assert level() == 1
        kms.health()  # the probe succeeds against the real local provider
        assert level() == 0


# -- request correlation -----------------------------------------------------------------------

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"


def audit_lines(tmp_path: Path) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


class TestRequestCorrelation:
    def test_the_callers_ids_reach_the_audit_events_and_come_back(
        self, tmp_path: Path, app_factory: Callable[..., tuple[TestClient, dict[str, str]]]
    ) -> None:
        client, tokens = app_factory(local_env(tmp_path))
        headers = {
            "Authorization": f"Bearer {tokens['app']}",
            "X-Request-ID": "checkout-7f3a:42",
            "traceparent": TRACEPARENT,
        }
        answer = client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["x-request-id"] == "checkout-7f3a:42"
        client.get("/admin/crypto/keys", headers={"X-Request-ID": "denied-1"})  # no token
        events = {e["event_type"]: e for e in audit_lines(tmp_path)}
        assert events["crypto.encrypt"]["correlation_id"] == "checkout-7f3a:42"
        # SPEC §12: the caller's id is the request_id of the request's audit events.
        assert events["crypto.encrypt"]["request_id"] == "checkout-7f3a:42"
        assert events["access.denied"]["request_id"] == "denied-1"
        assert events["crypto.encrypt"]["trace_id"] == CALLER_TRACE
        assert events["access.denied"]["correlation_id"] == "denied-1"
        assert "trace_id" not in events["access.denied"]

    @pytest.mark.parametrize(
        ("request_id", "traceparent"),
        [
            ("x" * 129, "00-" + "0" * 32 + "-00f067aa0ba902b7-01"),  # too long; zero trace id
            ("has space", TRACEPARENT.upper()),  # bad character; upper-case hex
            ("line\nbreak", "01-" + TRACEPARENT[3:]),  # control character; unknown version
            ("", TRACEPARENT + "-extra"),
        ],
    )
    def test_invalid_values_are_ignored_and_a_fresh_id_used(
        self,
        tmp_path: Path,
        app_factory: Callable[..., tuple[TestClient, dict[str, str]]],
        request_id: str,
        traceparent: str,
    ) -> None:
        client, tokens = app_factory(local_env(tmp_path))
        headers = {
            "Authorization": f"Bearer {tokens['app']}",
            "X-Request-ID": request_id,
            "traceparent": traceparent,
        }
        answer = client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=headers)
        assert answer.status_code == 200
        used = answer.headers["x-request-id"]
        assert used != request_id and len(used) == 36  # a fresh UUID
        [event] = [e for e in audit_lines(tmp_path) if e["event_type"] == "crypto.encrypt"]
        assert event["correlation_id"] == used
        assert "trace_id" not in event

    def test_without_headers_each_request_gets_its_own_id(
        self, tmp_path: Path, app_factory: Callable[..., tuple[TestClient, dict[str, str]]]
    ) -> None:
        client, tokens = app_factory(local_env(tmp_path))
        bearer = {"Authorization": f"Bearer {tokens['app']}"}
        ids = [
            client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=bearer).headers[
                "x-request-id"
            ]
            for _ in range(2)
        ]
        events = [e for e in audit_lines(tmp_path) if e["event_type"] == "crypto.encrypt"]
        assert [e["correlation_id"] for e in events] == ids and ids[0] != ids[1]


# -- operational logs --------------------------------------------------------------------------

CANARY = "canary-PII-5f1e9d"  # a plaintext that must never appear in any output


def json_lines(text: str) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


class TestJSONLogs:
    def test_serve_logs_json_apart_from_the_audit_lines_and_never_the_plaintext(
        self, tmp_path: Path
    ) -> None:
        """Audit on stderr too (the Kubernetes default): every line is JSON, an audit line has
        a hash and no level, a log line a level and no hash; the request log names the route
        and the request id; the plaintext is nowhere."""
        env = local_env(tmp_path, HMD_LOG_FORMAT="json", HMD_AUDIT_LOG="stderr")
        live = start_serve(tmp_path, env, "local")
        server = next(live)
        try:
            headers = {"X-Request-ID": "req-canary-1"}
            sealed = server.call(
                "POST", "/crypto/encrypt", "app", json={"plaintext": CANARY}, headers=headers
            ).json()
            opened = server.call(
                "POST", "/crypto/decrypt", "app", json={"envelope": sealed, "reason": "t"}
            )
            assert opened.json()["plaintext"] == CANARY
            server.call("GET", "/crypto/encrypt", "app")  # 405: logged, route unmatched
        finally:
            next(live, None)
        text = server.stderr.read_text()
        assert CANARY not in text
        lines = json_lines(text)  # raises if any line is not JSON
        audit = [line for line in lines if "hash" in line]
        logs = [line for line in lines if "level" in line]
        assert len(audit) + len(logs) == len(lines) and audit and logs
        assert not any("level" in line for line in audit)
        for line in logs:
            assert {"time", "level", "logger", "event", "message"} <= set(line)
        requests = [line for line in logs if line["event"] == "http.request"]
        first = next(r for r in requests if r["request_id"] == "req-canary-1")
        assert (first["route"], first["status"], first["level"]) == ("/crypto/encrypt", 200, "info")
        assert any(r["route"] == "/crypto/decrypt" for r in requests)
        # The readiness polls of /metrics above are scrapes: logged at debug, not at info.
        assert not any(r["route"] == "/metrics" for r in requests)
        encrypt = next(a for a in audit if a["event_type"] == "crypto.encrypt")
        assert encrypt["correlation_id"] == "req-canary-1"

    def test_job_logs_are_json_with_the_run_id_and_no_plaintext(self, tmp_path: Path) -> None:
        import sqlite3

        from tests.legacy_data import legacy_envelope

        master = "ab" * 32
        db = tmp_path / "app.db"
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            connection.execute("INSERT INTO t VALUES (1, ?)", (legacy_envelope(master, CANARY),))
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "OTEL_"))},
            **local_env(tmp_path, HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=master),
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
            "HMD_LOG_FORMAT": "json",
        }
        done = subprocess.run(
            [
                *(sys.executable, "-m", "heimdall_kms", "migrate", "--database", f"sqlite:///{db}"),
                *("--table", "t", "--column", "v", "--run-id", "run-canary"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert CANARY not in done.stderr + done.stdout
        assert CANARY not in (tmp_path / "audit.log").read_text()
        lines = json_lines(done.stderr)
        assert all(line["level"] in {"info", "warning"} for line in lines)
        [report] = [line for line in lines if line["event"] == "job.report"]
        assert (report["request_id"], report["state"], report["completed"]) == (
            "run-canary",
            "completed",
            1,
        )
        assert any(line["event"] == "job.finished" for line in lines)

    def test_a_bad_log_format_is_one_line(self, tmp_path: Path) -> None:
        env = {**os.environ, "HMD_LOG_FORMAT": "yaml"}
        done = subprocess.run(
            [sys.executable, "-m", "heimdall_kms", "keys"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 78
        assert done.stderr == "heimdall-kms: error: HMD_LOG_FORMAT: expected text | json\n"
