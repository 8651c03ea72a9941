"""One-shot jobs export their metrics (SPEC §12): a textfile for the node exporter's textfile
collector, written atomically, and a push to a Pushgateway (a tiny local HTTP server that
records what it is sent)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.metrics import ERROR_TYPES
from tests.integration.dbtables import hybrid_local_env
from tests.legacy_data import legacy_envelope
from tests.servers import free_port

MASTER_HEX = "ab" * 32
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith(("HMD_", "VAULT_")):
            monkeypatch.delenv(name)
    return hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)


def legacy_table(path: Path, legacy: int, kms: int, env: dict[str, str]) -> str:
    """``t(id, v)`` with ``legacy`` legacy envelopes and ``kms`` kms_v1 values."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        rows = [(i, legacy_envelope(MASTER_HEX, f"value-{i}")) for i in range(1, legacy + 1)]
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            for i in range(legacy + 1, legacy + kms + 1):
                context = {"table": "t", "field": "v", "record": str(i)}
                rows.append((i, crypto.encrypt(f"value-{i}", context=context).to_json()))
        db.executemany("INSERT INTO t VALUES (?, ?)", rows)
    return f"sqlite:///{path}"


def run(*argv: str) -> int:
    return main(list(argv))


class TestTextfile:
    def test_status_writes_the_census_for_the_legacy_alert(
        self, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = legacy_table(tmp_path / "app.db", legacy=4, kms=2, env=env)
        directory = tmp_path / "textfile"
        directory.mkdir()
        stale = directory / "heimdall-kms-status.prom"
        stale.write_text("# an earlier run\nheimdall_stored_values 99\n")
        args = ["status", "--database", url, "--table", "t", "--column", "v"]
        assert run(*args, "--metrics-file", str(directory)) == 0
        assert [p.name for p in directory.iterdir()] == [stale.name]  # no temporary left
        found = parse(stale.read_text())
        job = ("heimdall_job", "heimdall-kms-status")
        assert found[("heimdall_stored_values", (job, ("kind", "legacy"), ("target", "t.v")))] == 4
        assert found[("heimdall_stored_values", (job, ("kind", "kms_v1"), ("target", "t.v")))] == 2
        version = heimdall_kms.__version__
        assert found[("heimdall_build_info", (job, ("version", version)))] == 1
        ran = found[("heimdall_job_last_run_timestamp_seconds", (("command", "status"), job))]
        assert abs(ran - time.time()) < 60
        ok = found[("heimdall_job_last_success_timestamp_seconds", (("command", "status"), job))]
        assert ok == ran

    def test_a_failed_gate_records_the_run_but_not_a_success(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        url = legacy_table(tmp_path / "app.db", legacy=1, kms=0, env=env)
        out = tmp_path / "gate.prom"
        args = ["status", "--database", url, "--table", "t", "--column", "v", "--fail-if-legacy"]
        assert run(*args, "--metrics-file", str(out)) == 3
        names = {name for name, _ in parse(out.read_text())}
        assert "heimdall_job_last_run_timestamp_seconds" in names
        assert "heimdall_job_last_success_timestamp_seconds" not in names

    def test_migrate_exports_progress_and_zero_error_series(
        self, env: dict[str, str], tmp_path: Path
    ) -> None:
        url = legacy_table(tmp_path / "app.db", legacy=5, kms=0, env=env)
        out = tmp_path / "migrate.prom"
        target = ["--database", url, "--table", "t", "--column", "v"]
        assert run("migrate", *target, "--metrics-file", str(out), "--metrics-job", "m1") == 0
        found = parse(out.read_text())
        job = ("heimdall_job", "m1")
        assert found[("heimdall_reencryption_progress", (job, ("status", "completed")))] == 5
        assert found[("heimdall_reencryption_jobs_running", (job,))] == 0
        assert (
            found[
                (
                    "heimdall_crypto_encrypt_total",
                    (job, ("key_version", "1"), ("provider", "local")),
                )
            ]
            == 5
        )
        for error_type in ERROR_TYPES:
            labels = (
                ("error_type", error_type),
                job,
                ("operation", "encrypt"),
                ("provider", "local"),
            )
            assert found[("heimdall_crypto_errors_total", labels)] == 0
        assert found[("heimdall_kms_circuit_state", (job, ("provider", "local")))] == 0

    def test_rotate_exports_the_new_versions_age_and_due_date(
        self, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HMD_METRICS_TEXTFILE", str(tmp_path))
        monkeypatch.setenv("HMD_ENCRYPTION_MODE", "kms")
        monkeypatch.delenv("HMD_PII_MASTER_KEY")
        assert run("rotate") == 0
        found = parse((tmp_path / "heimdall-kms-rotate.prom").read_text())
        labels = (
            ("heimdall_job", "heimdall-kms-rotate"),
            ("key", "heimdall-pii"),
            ("provider", "local"),
        )
        assert 0 <= found[("heimdall_key_age_seconds", labels)] < 60
        due = found[("heimdall_key_rotation_due_timestamp_seconds", labels)]
        assert due - time.time() == pytest.approx(90 * 86400, abs=120)

    @pytest.mark.parametrize(
        ("option", "message"),
        [
            ("{tmp}/missing/dir/x.prom", "HMD_METRICS_TEXTFILE: cannot write into"),
            ("{tmp}/x.txt", "must end in .prom"),
        ],
    )
    def test_an_unusable_textfile_is_refused_before_the_job_runs(
        self,
        env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        option: str,
        message: str,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("HMD_ENCRYPTION_MODE", "kms")
        monkeypatch.delenv("HMD_PII_MASTER_KEY")
        assert run("rotate", "--metrics-file", option.format(tmp=tmp_path)) == 78
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1
        audit = Path(env["HMD_AUDIT_LOG"])
        assert not audit.exists() or "key.rotate" not in audit.read_text()  # nothing rotated


@dataclass
class Pushgateway:
    """Records every request: (method, path, body)."""

    url: str
    received: list[tuple[str, str, str]] = field(default_factory=list)


@pytest.fixture
def pushgateway() -> Iterator[Pushgateway]:
    gateway = Pushgateway("")

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            gateway.received.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_PUT = do_POST = _record  # noqa: N815 - the names http.server calls

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    gateway.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield gateway
    server.shutdown()
    server.server_close()


class TestPushgateway:
    def test_reencrypt_pushes_its_group(
        self,
        env: dict[str, str],
        tmp_path: Path,
        pushgateway: Pushgateway,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        url = legacy_table(tmp_path / "app.db", legacy=0, kms=3, env=env)
        monkeypatch.setenv("HMD_PUSHGATEWAY_URL", pushgateway.url)
        target = ["--database", url, "--table", "t", "--column", "v"]
        assert run("reencrypt", *target) == 0
        [(method, path, body)] = pushgateway.received
        assert (method, path) == (
            "PUT",
            "/metrics/job/heimdall-kms/heimdall_job/heimdall-kms-reencrypt",
        )
        found = parse(body)
        assert found[("heimdall_reencryption_progress", (("status", "total"),))] == 3
        assert (
            found[("heimdall_job_last_success_timestamp_seconds", (("command", "reencrypt"),))] > 0
        )
        assert not any(name.endswith("_created") for name, _ in found)

    def test_an_unreachable_gateway_does_not_fail_the_finished_job(
        self,
        env: dict[str, str],
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:

        url = legacy_table(tmp_path / "app.db", legacy=2, kms=0, env=env)
        monkeypatch.setenv("HMD_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
        assert run("migrate", "--database", url, "--table", "t", "--column", "v") == 0
        assert "metrics export failed (URLError)" in caplog.messages


class TestKeyMetricsAfterTheWork:
    def test_a_failed_lookup_after_the_rotation_only_loses_the_metric(
        self, env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The rotation is done when the key lookup for its metrics fails: a warning, no error."""
        from datetime import timedelta

        from heimdall_kms.cli._job_metrics import JobTelemetry
        from heimdall_kms.composition import load_provider
        from heimdall_kms.config import Settings
        from heimdall_kms.telemetry.export import MetricsExport

        telemetry = JobTelemetry("rotate", MetricsExport("r", tmp_path / "r.prom"))
        kms = load_provider(Settings.from_env(env))
        Path(env["HMD_LOCAL_KEYRING"]).write_text('{"keys": {}}')  # the key is gone now
        telemetry.publish_key(kms, timedelta(days=90))
        assert any(m.startswith("key metrics: describe failed") for m in caplog.messages)
        telemetry.export.write(telemetry.registry)
        assert "heimdall_key_age_seconds{" not in (tmp_path / "r.prom").read_text()  # no sample
