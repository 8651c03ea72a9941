"""deploy/observability/: the alert rules pass ``promtool check rules`` and their fixtures
(``promtool test rules``, one firing fixture per alert), and every metric, label and label
value the rules and the dashboard use is one that heimdall-kms really exports — read from a
live ``serve``'s ``/metrics`` and from the textfiles real job runs write.

promtool comes from Debian's ``prometheus`` package (scripts/test.sh installs it). Under
``CI=true`` a missing promtool fails these tests instead of skipping them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from heimdall_kms.cli import main
from tests.integration.test_observability import local_env, start_serve
from tests.legacy_data import legacy_envelope

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULES = OBSERVABILITY / "alerts.yml"
RULE_TESTS = OBSERVABILITY / "alerts.test.yml"
DASHBOARD = OBSERVABILITY / "dashboard.json"
MASTER_HEX = "ab" * 32
# Labels Prometheus adds at scrape time, and the one the job textfiles add to every sample.
TARGET_LABELS = {"job", "instance", "heimdall_job"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is not None:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("promtool is missing: scripts/test.sh installs it (apt-get install prometheus)")
    pytest.skip("promtool is not installed (Debian package prometheus)")


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args],
        cwd=OBSERVABILITY,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def rules() -> list[dict[str, object]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def expressions() -> list[str]:
    """Every PromQL expression of the rules and of the dashboard's panels."""
    found = [str(rule["expr"]) for rule in rules()]
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        found += [str(target["expr"]) for target in panel.get("targets", [])]
    return found


class TestAlertRules:
    def test_promtool_accepts_the_rules(self) -> None:
        checked = run_promtool("check", "rules", RULES.name)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {len(rules())} rules found" in checked.stdout

    def test_the_fixtures_pass(self) -> None:
        tested = run_promtool("test", "rules", RULE_TESTS.name)
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "SUCCESS" in tested.stdout

    def test_every_alert_has_a_fixture_where_it_fires(self) -> None:
        tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
        firing = {
            case["alertname"]
            for test in tests
            for case in test.get("alert_rule_test", [])
            if case.get("exp_alerts")
        }
        assert firing == {str(rule["alert"]) for rule in rules()}
        for rule in rules():
            assert {"summary", "description"} <= set(rule["annotations"])  # type: ignore[arg-type]
            assert rule["labels"]["severity"] in {"warning", "critical"}  # type: ignore[index]


# -- what heimdall-kms really exports ----------------------------------------------------------


Exported = dict[str, dict[str, set[str]]]  # sample name -> label name -> values seen


def collect(text: str, into: Exported) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = into.setdefault(sample.name, defaultdict(set))
            for name, value in sample.labels.items():
                labels[name].add(value)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The samples of a live serve's /metrics and of the textfiles of real job runs."""
    found: Exported = {}
    serve_dir = tmp_path_factory.mktemp("serve")
    live = start_serve(serve_dir, local_env(serve_dir), "local")
    server = next(live)
    try:
        server.wait_for("heimdall_key_age_seconds")
        collect(server.call("GET", "/metrics", "app").text, found)
    finally:
        next(live, None)
    jobs = tmp_path_factory.mktemp("jobs")
    for text in job_textfiles(jobs):
        collect(text, found)
    return found


def job_textfiles(tmp_path: Path) -> list[str]:
    env = {
        **local_env(tmp_path, HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=MASTER_HEX),
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    saved = {name: os.environ.get(name) for name in [*env, "HMD_METRICS_TEXTFILE"]}
    os.environ.update(env)
    os.environ["HMD_METRICS_TEXTFILE"] = str(tmp_path)
    try:
        db = tmp_path / "app.db"
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            connection.executemany(
                "INSERT INTO t VALUES (?, ?)",
                [(i, legacy_envelope(MASTER_HEX, f"v{i}")) for i in range(1, 4)],
            )
        target = ["--database", f"sqlite:///{db}", "--table", "t", "--column", "v"]
        assert main(["status", *target]) == 0
        assert main(["migrate", *target]) == 0
        assert main(["reencrypt", *target]) == 0
        assert main(["rotate"]) == 0
        assert main(["keys"]) == 0
        assert main(["retire", "--below-version", "1", *target]) == 0
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    files = sorted(tmp_path.glob("*.prom"))
    assert {f.stem for f in files} >= {
        f"heimdall-kms-{c}" for c in ("status", "migrate", "reencrypt", "rotate", "keys", "retire")
    }
    return [f.read_text() for f in files]


_SELECTOR = re.compile(r"\b(heimdall_[a-z0-9_]+)\s*(?:\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def selectors() -> Iterator[tuple[str, str, list[tuple[str, str, str]]]]:
    """(expression, metric name, [(label, operator, value)]) for each metric selector."""
    for expr in expressions():
        for match in _SELECTOR.finditer(expr):
            name = match.group(1)
            if name in TARGET_LABELS:
                continue  # a label (heimdall_job), not a metric
            yield expr, name, _MATCHER.findall(match.group(2) or "")


class TestRulesAndDashboardUseExportedMetrics:
    def test_every_metric_is_exported(self, exported: Exported) -> None:
        used = {name for _, name, _ in selectors()}
        assert used, "no metric found in the rules and the dashboard"
        missing = sorted(used - set(exported))
        assert not missing, f"used but not exported: {missing}"

    def test_every_label_and_label_value_is_exported(self, exported: Exported) -> None:
        for expr, name, matchers in selectors():
            labels = exported[name]
            for label, operator, value in matchers:
                if label in TARGET_LABELS:
                    continue
                assert label in labels, f"{name} has no label {label} ({expr})"
                if operator in ("=", "=~") and re.fullmatch(r"[a-z0-9_|]+", value):
                    unknown = set(value.split("|")) - labels[label]
                    assert not unknown, f"{name}{{{label}}} never takes {unknown} ({expr})"

    def test_the_dashboard_is_a_grafana_dashboard(self) -> None:
        dashboard = json.loads(DASHBOARD.read_text())
        assert dashboard["uid"] == "heimdall-kms" and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dashboard["panels"]:
            if panel["type"] != "row":
                assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


class TestServiceMonitor:
    def test_it_selects_the_admin_service_and_its_port(self) -> None:
        monitor = yaml.safe_load((OBSERVABILITY / "servicemonitor.yaml").read_text())
        service = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "service.yaml").read_text())
        assert monitor["kind"] == "ServiceMonitor"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        assert wanted.items() <= service["metadata"]["labels"].items()
        assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
        ports = {port["name"] for port in service["spec"]["ports"]}
        [endpoint] = monitor["spec"]["endpoints"]
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
