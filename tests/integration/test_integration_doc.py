"""docs/integration.md's SQLAlchemy and FastAPI examples, run as written against OpenBao."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from heimdall_kms.envelope import KmsV1Envelope, parse
from tests.servers import OpenBao

pytestmark = pytest.mark.vault

DOC = Path(__file__).resolve().parents[2] / "docs" / "integration.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
SSN = "123-45-6789"


@pytest.fixture
def example(
    openbao: OpenBao, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    for name, value in openbao.env(HMD_AUDIT_LOG=str(tmp_path / "audit.log")).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'app.db'}")
    (models,) = [b for b in BLOCKS if "attach(sessionmaker" in b]
    (web,) = [b for b in BLOCKS if "FastAPI()" in b]
    # A module of its own, as in an application (SQLAlchemy resolves annotations by module).
    path = tmp_path / "integration_example.py"
    path.write_text(models + web, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("integration_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "integration_example", module)
    spec.loader.exec_module(module)
    namespace = vars(module)
    yield namespace
    namespace["crypto"].close()
    namespace["engine"].dispose()


def audit_events(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "audit.log").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class TestIntegrationDoc:
    def test_the_request_scope_reaches_every_audit_event(
        self, example: dict[str, Any], tmp_path: Path
    ) -> None:
        client = TestClient(example["app"])
        headers = {"X-User": "u1", "X-Request-ID": "gw-req-42"}
        created = client.post("/people", params={"name": "Ann", "ssn": SSN}, headers=headers)
        assert created.status_code == 200, created.text
        assert created.headers["X-Request-ID"] == "gw-req-42"
        person_id = created.json()["id"]
        read = client.get(f"/people/{person_id}", headers={**headers, "X-Request-ID": "gw-43"})
        assert read.json() == {"name": "Ann", "ssn": SSN}
        with example["engine"].connect() as connection:
            (stored,) = connection.exec_driver_sql("SELECT ssn FROM people").one()
        envelope = parse(stored)
        assert isinstance(envelope, KmsV1Envelope)
        assert dict(envelope.context) == {"table": "people", "field": "ssn", "record": "1"}
        crypto_events = [e for e in audit_events(tmp_path) if e["event_type"].startswith("crypto.")]
        assert [
            (e["event_type"], e["actor"], e["reason"], e["request_id"]) for e in crypto_events
        ] == [
            ("crypto.encrypt", "user:u1", "POST /people", "gw-req-42"),
            ("crypto.decrypt", "user:u1", f"GET /people/{person_id}", "gw-43"),
        ]

    def test_an_odd_request_id_is_replaced_not_refused(self, example: dict[str, Any]) -> None:
        client = TestClient(example["app"])
        response = client.post(
            "/people", params={"name": "Bo", "ssn": SSN}, headers={"X-Request-ID": "bad id!"}
        )
        assert response.status_code == 200
        assert re.fullmatch(r"[0-9a-f-]{36}", response.headers["X-Request-ID"])
