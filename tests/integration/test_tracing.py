"""OpenTelemetry spans (SPEC §12, extra ``otel``) around API requests, KMS calls and jobs,
read back through the SDK's InMemorySpanExporter."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

if os.environ.get("CI") == "true":
    # CI installs the test extra, which includes otel: a missing SDK fails there, never skips.
    import opentelemetry.sdk  # noqa: F401
else:
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")

from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once

from heimdall_kms.admin import create_app, load_tokens
from heimdall_kms.cli import main
from heimdall_kms.config import Settings
from heimdall_kms.providers.local import LocalKeyring

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_PARENT = "00f067aa0ba902b7"
PLAINTEXT = "trace-canary-8c2d"


def _reset_global_provider() -> None:
    # The API sets the global provider once per process; the tests put it back to "none set",
    # so tracing stays off for every other test (private, but the only way to undo it).
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_global_provider()
    trace.set_tracer_provider(provider)
    yield exporter
    provider.shutdown()
    _reset_global_provider()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("HMD_", "OTEL_")):
            monkeypatch.delenv(name)
    values = {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    return values


@dataclass(frozen=True)
class AdminClient:
    """The admin API in process and a bearer token it accepts."""

    http: TestClient
    token: str


@pytest.fixture
def client(
    env: dict[str, str], tmp_path: Path, spans: InMemorySpanExporter
) -> Iterator[AdminClient]:
    token = secrets.token_urlsafe(16)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"app {hashlib.sha256(token.encode()).hexdigest()}\n")
    app = create_app(Settings.from_env(env), load_tokens(tokens))
    with TestClient(app) as test_client:
        yield AdminClient(test_client, token)


def by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {span.name: span for span in exporter.get_finished_spans()}


def audit(env: dict[str, str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in Path(env["HMD_AUDIT_LOG"]).read_text().splitlines()]


class TestRequestSpans:
    def test_the_request_continues_the_callers_trace_down_to_the_kms_call(
        self, client: AdminClient, spans: InMemorySpanExporter, env: dict[str, str]
    ) -> None:
        test_client = client.http
        token = client.token
        headers = {
            "Authorization": f"Bearer {token}",
            "traceparent": f"00-{CALLER_TRACE}-{CALLER_PARENT}-01",
        }
        spans.clear()
        answer = test_client.post("/crypto/encrypt", json={"plaintext": PLAINTEXT}, headers=headers)
        assert answer.status_code == 200
        found = by_name(spans)
        server = found["POST /crypto/encrypt"]
        assert server.kind is trace.SpanKind.SERVER
        assert f"{server.context.trace_id:032x}" == CALLER_TRACE
        assert server.parent is not None and f"{server.parent.span_id:016x}" == CALLER_PARENT
        assert server.attributes is not None and server.attributes["http.status_code"] == 200
        wrap = found["kms.wrap"]
        assert wrap.parent is not None and wrap.parent.span_id == server.context.span_id
        assert wrap.attributes is not None
        assert (wrap.attributes["heimdall.provider"], wrap.attributes["heimdall.batch_size"]) == (
            "local",
            1,
        )
        for span in spans.get_finished_spans():
            assert PLAINTEXT not in json.dumps(dict(span.attributes or {}), default=str)
        [event] = [e for e in audit(env) if e["event_type"] == "crypto.encrypt"]
        assert event["trace_id"] == CALLER_TRACE

    def test_without_a_traceparent_the_audit_event_names_the_services_trace(
        self, client: AdminClient, spans: InMemorySpanExporter, env: dict[str, str]
    ) -> None:
        test_client = client.http
        token = client.token
        spans.clear()
        test_client.post(
            "/crypto/encrypt", json={"plaintext": "x"}, headers={"Authorization": f"Bearer {token}"}
        )
        server = by_name(spans)["POST /crypto/encrypt"]
        assert server.parent is None
        [event] = [e for e in audit(env) if e["event_type"] == "crypto.encrypt"]
        assert event["trace_id"] == f"{server.context.trace_id:032x}"


class TestJobSpans:
    def test_a_job_is_one_span_over_its_kms_calls(
        self, env: dict[str, str], spans: InMemorySpanExporter
    ) -> None:
        assert main(["rotate"]) == 0
        found = by_name(spans)
        job = found["job.rotate"]
        for name in ("kms.describe", "kms.rotate"):
            assert found[name].parent is not None
            assert found[name].parent.span_id == job.context.span_id
        assert found["kms.rotate"].context.trace_id == job.context.trace_id

    def test_a_failed_kms_call_records_its_error_type_only(
        self, env: dict[str, str], spans: InMemorySpanExporter
    ) -> None:
        assert main(["retire", "--below-version", "7", "--force"]) != 0
        failed = [s for s in spans.get_finished_spans() if s.status.status_code.name == "ERROR"]
        assert failed
        for span in failed:
            assert span.attributes is not None and "heimdall.error_type" in span.attributes
            assert not span.events  # no recorded exception (its message or traceback)


class TestConfiguredFromEnvironment:
    def test_otel_variables_turn_tracing_on_in_a_real_process(self, tmp_path: Path) -> None:
        """OTEL_TRACES_EXPORTER=console: the spans go to stderr, stdout keeps only the
        command's JSON; OTEL_SERVICE_NAME names the resource."""
        import subprocess
        import sys

        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("HMD_", "OTEL_"))},
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "heimdall-kms-test",
        }
        done = subprocess.run(
            [sys.executable, "-m", "heimdall_kms", "rotate", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["rotated"] is True  # stdout: the summary only
        assert '"name": "job.rotate"' in done.stderr
        assert '"name": "kms.rotate"' in done.stderr
        assert "heimdall-kms-test" in done.stderr

    def test_asking_for_an_unknown_exporter_is_one_line(self, tmp_path: Path) -> None:
        import subprocess
        import sys

        env = {**os.environ, "OTEL_TRACES_EXPORTER": "zipkin-ish"}
        done = subprocess.run(
            [sys.executable, "-m", "heimdall_kms", "keys"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 78
        assert done.stderr == (
            "heimdall-kms: error: OTEL_TRACES_EXPORTER: expected otlp, console or none\n"
        )
