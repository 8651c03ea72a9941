"""The telemetry pieces on their own: settings, log formatters, request correlation, the
metrics export's checks."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from heimdall_kms.errors import ConfigurationError
from heimdall_kms.telemetry import correlation
from heimdall_kms.telemetry.export import MetricsExport
from heimdall_kms.telemetry.logs import JSONFormatter, TextFormatter
from heimdall_kms.telemetry.settings import LogFormat, TelemetrySettings
from heimdall_kms.telemetry.tracing import configure as configure_tracing


class TestTelemetrySettings:
    def test_defaults(self) -> None:
        settings = TelemetrySettings.from_env({})
        assert (settings.log_format, settings.key_metrics_seconds) == (LogFormat.TEXT, 300.0)
        assert settings.level(logging.WARNING) == logging.WARNING
        assert TelemetrySettings.from_env({"HMD_LOG_FORMAT": "JSON"}).level(logging.WARNING) == (
            logging.INFO
        )
        assert TelemetrySettings.from_env({"HMD_LOG_LEVEL": "error"}).level(logging.INFO) == (
            logging.ERROR
        )

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("HMD_LOG_FORMAT", "yaml"),
            ("HMD_LOG_LEVEL", "loud"),
            ("HMD_KEY_METRICS_SECONDS", "5"),
            ("HMD_KEY_METRICS_SECONDS", "nan"),
            ("HMD_KEY_METRICS_SECONDS", "soon"),
        ],
    )
    def test_a_bad_value_names_its_variable(self, name: str, value: str) -> None:
        with pytest.raises(ConfigurationError, match=rf"^{name}: "):
            TelemetrySettings.from_env({name: value})


def record(message: str, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("heimdall_kms.t", logging.WARNING, __file__, 1, message, (), None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


class TestFormatters:
    def test_json_lines_carry_level_event_and_the_request_id(self) -> None:
        token = correlation.use(correlation.from_headers("req-1", None))
        try:
            line = JSONFormatter().format(record("done", event="job.x", fields={"n": 3}))
        finally:
            correlation.reset(token)
        document = json.loads(line)
        assert document["level"] == "warning" and document["event"] == "job.x"
        assert (document["request_id"], document["n"], document["message"]) == ("req-1", 3, "done")
        assert "hash" not in document  # never the audit stream's shape

    def test_an_exception_is_named_by_its_type_only(self) -> None:
        try:
            raise ValueError("secret-value-123")
        except ValueError:
            import sys

            failed = record("boom")
            failed.exc_info = sys.exc_info()
        for formatter in (JSONFormatter(), TextFormatter()):
            line = formatter.format(failed)
            assert "secret-value-123" not in line and "ValueError" in line
            assert "\n" not in line

    def test_text_is_one_line(self) -> None:
        line = TextFormatter().format(record("a\nb", fields={"k": "v"}))
        assert line == "heimdall-kms: warning: a b k=v"


class TestCorrelation:
    def test_valid_headers(self) -> None:
        found = correlation.from_headers(
            "abc-1", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
        assert (found.request_id, found.trace_id, found.caller_id) == (
            "abc-1",
            "4bf92f3577b34da6a3ce929d0e0e4736",
            True,
        )

    @pytest.mark.parametrize("bad", ["", "a" * 129, "a b", "a;b", "é", "a\x00"])
    def test_an_invalid_request_id_is_replaced(self, bad: str) -> None:
        found = correlation.from_headers(bad, None)
        assert found.request_id != bad and not found.caller_id and found.trace_id is None


class TestMetricsExport:
    def test_a_directory_gets_the_jobs_file(self, tmp_path: Path) -> None:
        export = MetricsExport("heimdall-kms-status", tmp_path)
        export.check()
        assert export.path == tmp_path / "heimdall-kms-status.prom"

    @pytest.mark.parametrize(
        ("export", "message"),
        [
            (MetricsExport("j", Path("/nonexistent/dir/x.prom")), "cannot write into"),
            (MetricsExport("j", Path("x.txt")), "must end in .prom"),
            (MetricsExport("j", None, "ftp://gateway"), "HMD_PUSHGATEWAY_URL"),
        ],
    )
    def test_unusable_settings_are_refused(self, export: MetricsExport, message: str) -> None:
        with pytest.raises(ConfigurationError, match=message):
            export.check()


class TestTracingConfigure:
    def test_nothing_is_installed_unless_an_exporter_is_asked_for(self) -> None:
        """No exporter variable, the SDK switched off, or 'none': the exporter name is not read."""
        configure_tracing({})
        configure_tracing({"OTEL_SDK_DISABLED": "TRUE", "OTEL_TRACES_EXPORTER": "zipkin-ish"})
        configure_tracing(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": " none "}
        )
        with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER"):
            configure_tracing({"OTEL_TRACES_EXPORTER": "zipkin-ish"})


def test_logs_are_not_written_through_a_foreign_root_handler() -> None:
    """configure_logging leaves a root logger configured by someone else alone."""
    from heimdall_kms.telemetry.logs import configure_logging

    root = logging.getLogger()
    foreign = logging.StreamHandler(io.StringIO())
    root.addHandler(foreign)
    try:
        before = list(root.handlers)
        configure_logging(LogFormat.JSON, logging.INFO)
        assert root.handlers == before
    finally:
        root.removeHandler(foreign)


class TestLibraryMetrics:
    def test_from_env_exports_zero_error_series_and_counts_lost_audit_events(
        self, tmp_path: Path
    ) -> None:
        """An application embedding the library and exposing prometheus-client's registry
        gets the zero series and the audit failure count too."""
        from prometheus_client import REGISTRY

        import heimdall_kms
        from heimdall_kms.errors import AuditWriteError
        from heimdall_kms.providers.local import LocalKeyring

        LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
        env = {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
            "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        }
        failures = "heimdall_audit_write_failures_total"
        before = REGISTRY.get_sample_value(failures) or 0.0
        crypto = heimdall_kms.from_env(env)
        labels = {"operation": "decrypt", "provider": "local", "error_type": "mode_violation"}
        assert REGISTRY.get_sample_value("heimdall_crypto_errors_total", labels) is not None
        crypto.audit.inner.close()  # type: ignore[attr-defined]  # writes now fail
        with pytest.raises(AuditWriteError):
            crypto.encrypt("x")
        assert REGISTRY.get_sample_value(failures) == before + 1
        crypto.close()
