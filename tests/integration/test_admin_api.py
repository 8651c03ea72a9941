"""The admin HTTP API (SPEC §7) against a live OpenBao and the local provider.

Requests go through FastAPI's TestClient into the real app (real provider, real SQLite
tables, real audit file); the TLS tests run a real uvicorn server on a free loopback port.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hvac
import pytest
import trustme
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

import heimdall_kms
from heimdall_kms.admin import create_app, load_tokens
from heimdall_kms.admin.schemas import ErrorBody
from heimdall_kms.admin.targets import ServerTargets
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.audit.verify import verify
from heimdall_kms.cli.serve_cmd import build_server, serve
from heimdall_kms.coalescing import LaneLimits
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import ConfigurationError, InvalidInputError
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from tests.legacy_data import legacy_envelope
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao, free_port
from tests.unit.test_audit_line_bounds import LARGEST, OVERSIZED, append_from_another_process

MASTER_HEX = "ab" * 32
ROLES = ("admin", "app", "worker", "audit")
ROWS = 30


# -- fixtures ---------------------------------------------------------------------------------


def write_tokens(path: Path) -> dict[str, str]:
    """One fresh token per role; the file holds only their SHA-256."""
    tokens = {role: secrets.token_urlsafe(24) for role in ROLES}
    lines = ["# heimdall-kms admin tokens", ""]
    lines += [f"{role} {hashlib.sha256(t.encode()).hexdigest()}" for role, t in tokens.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)  # the service refuses a tokens file group or others may write
    return tokens


class Api:
    """A TestClient plus the tokens, the audit file and the settings of one app."""

    def __init__(
        self, client: TestClient, tokens: dict[str, str], audit: Path, env: dict[str, str]
    ):
        self.client = client
        self.tokens = tokens
        self.audit_path = audit
        self.env = env

    def call(
        self, method: str, path: str, role: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens.get(role, role)}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def wait_for_job(self, job_id: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("GET", f"/admin/crypto/reencrypt/status?job={job_id}", "admin")
            assert status.status_code == 200
            if status.json()["state"] != "running":
                return dict(status.json())
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} still running after {timeout}s")


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    stack: list[TestClient] = []

    def make(env: dict[str, str], **kwargs: Any) -> Api:
        audit = tmp_path / f"audit-{len(stack)}.log"
        env = {**env, "HMD_AUDIT_LOG": str(audit)}
        tokens_file = tmp_path / f"tokens-{len(stack)}.txt"
        tokens = write_tokens(tokens_file)
        app = create_app(Settings.from_env(env), load_tokens(tokens_file), **kwargs)
        client = TestClient(app).__enter__()
        stack.append(client)
        return Api(client, tokens, audit, env)

    yield make
    for client in reversed(stack):
        client.__exit__(None, None, None)


def local_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    LocalKeyring(tmp_path / "keyring.json").ensure_key("heimdall-pii")
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(tmp_path / "keyring.json"),
        **extra,
    }


@pytest.fixture(params=["local", "vault"])
def api(request: pytest.FixtureRequest, tmp_path: Path, make_api: Callable[..., Api]) -> Api:
    database = f"sqlite:///{tmp_path / 'app.db'}"  # the service's own; kms_table fills it
    if request.param == "local":
        return make_api(local_env(tmp_path, HMD_DATABASE_URL=database))
    server: OpenBao = request.getfixturevalue("openbao")
    return make_api(server.env(HMD_DATABASE_URL=database))


def kms_table(env: dict[str, str], path: Path, rows: int = ROWS) -> str:
    """A SQLite table ``t(id, v)`` of kms_v1 values sealed at the key's current version."""
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto, sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        sealed = crypto.encrypt_many(
            [
                (f"value-{i}", {"table": "t", "field": "v", "record": str(i)})
                for i in range(1, rows + 1)
            ]
        )
        db.executemany(
            "INSERT INTO t VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(sealed, 1)]
        )
    return f"sqlite:///{path}"


def stored(url: str) -> dict[int, str | None]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        return dict(db.execute("SELECT id, v FROM t ORDER BY id").fetchall())


def gauge(api: Api) -> dict[str, float]:
    text = api.call("GET", "/metrics").text
    return {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "heimdall_reencryption_progress"
        for sample in family.samples
    }


# -- roles ------------------------------------------------------------------------------------

ALLOWED = {
    ("POST", "/admin/crypto/reencrypt"): {"admin"},
    ("GET", "/admin/crypto/reencrypt/status"): {"admin", "audit"},
    ("POST", "/admin/crypto/rotate"): {"admin"},
    ("GET", "/admin/crypto/keys"): {"admin", "audit"},
    ("POST", "/crypto/encrypt"): {"app"},
    ("POST", "/crypto/decrypt"): {"app", "worker"},
    ("POST", "/crypto/encrypt-batch"): {"app"},
    ("POST", "/crypto/decrypt-batch"): {"app", "worker"},
}
OPEN = [("GET", "/healthz"), ("HEAD", "/healthz"), ("GET", "/metrics"), ("GET", "/openapi.json")]
SUCCESS = {"POST /admin/crypto/reencrypt": 202}


def test_role_matrix_on_every_endpoint(api: Api, tmp_path: Path) -> None:
    kms_table(api.env, tmp_path / "app.db")
    envelope = api.call(
        "POST", "/crypto/encrypt", "app", json={"plaintext": "123-45-6789", "context": {"f": "x"}}
    ).json()
    bodies: dict[str, Any] = {
        "/admin/crypto/reencrypt": {"table": "t", "column": "v", "mode": "rewrap"},
        "/admin/crypto/rotate": {"if_due": True},  # a fresh key is not due: nothing changes
        "/crypto/encrypt": {"plaintext": "x", "context": {"field": "ssn"}},
        "/crypto/decrypt": {"envelope": envelope, "reason": "matrix"},
        "/crypto/encrypt-batch": {"items": [{"plaintext": "x"}]},
        "/crypto/decrypt-batch": {"items": [{"envelope": envelope}], "reason": "matrix"},
    }
    denied = 0
    for (method, path), allowed in ALLOWED.items():
        body = {"json": bodies[path]} if path in bodies else {}
        for who in (*ROLES, None, "not-a-known-token"):
            response = api.call(method, path, who, **body)
            if who in allowed:
                expected = SUCCESS.get(f"{method} {path}", 200)
                assert response.status_code == expected, (method, path, who, response.text)
            elif who in ROLES:
                assert response.status_code == 403, (method, path, who)
                denied += 1
            else:
                assert response.status_code == 401, (method, path, who)
                assert response.headers["WWW-Authenticate"] == "Bearer"
                denied += 1
    for method, path in OPEN:
        for who in (*ROLES, None):
            assert api.call(method, path, who).status_code == 200, (path, who)
    api.client.app.state.admin.guard.close()  # write the refusals still counted
    events = [e for e in api.audit() if e["event_type"] == "access.denied"]
    assert sum(e["details"].get("count", 1) for e in events) == denied
    status = api.call("GET", "/admin/crypto/reencrypt/status", "audit").json()
    assert api.wait_for_job(status["job_id"])["state"] == "completed"


def test_denials_are_audited_without_the_token(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    api = make_api(local_env(tmp_path))
    wrong = "definitely-not-a-token-" + secrets.token_hex(8)
    assert api.call("POST", "/admin/crypto/rotate").status_code == 401
    assert api.call("POST", "/admin/crypto/rotate", wrong).status_code == 401
    assert api.call("POST", "/admin/crypto/rotate", "worker").status_code == 403
    # Malformed JSON from a stranger is still a 401: the token is checked before the body.
    bad_body = api.call(
        "POST",
        "/crypto/decrypt",
        headers={"Content-Type": "application/json"},
        content=b"{not json",
    )
    assert bad_body.status_code == 401
    api.client.app.state.admin.guard.close()  # the second anonymous refusal was counted
    events = [e for e in api.audit() if e["event_type"] == "access.denied"]
    worker_fp = hashlib.sha256(api.tokens["worker"].encode()).hexdigest()[:8]
    wrong_fp = hashlib.sha256(wrong.encode()).hexdigest()[:8]
    assert [e["actor"] for e in events] == [
        "anonymous",
        f"token:unknown:{wrong_fp}",
        f"token:worker:{worker_fp}",
        "anonymous",
    ]
    assert [e["details"]["status"] for e in events] == [401, 401, 403, 401]
    assert events[2]["details"] == {"path": "/admin/crypto/rotate", "method": "POST", "status": 403}
    assert events[3]["details"]["count"] == 1
    assert events[3]["details"]["paths"] == {"/crypto/decrypt": 1}
    assert all(e["result"] == "failure" and e["source_ip"] == "testclient" for e in events)
    log = api.audit_path.read_text()
    assert wrong not in log
    assert all(token not in log for token in api.tokens.values())


def test_encrypt_decrypt_audit_the_token_and_address(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    api = make_api(local_env(tmp_path))
    sealed = api.call(
        "POST",
        "/crypto/encrypt",
        "app",
        json={"plaintext": "123-45-6789", "context": {"field": "ssn", "record": "7"}},
    )
    assert sealed.status_code == 200
    assert sealed.headers["Cache-Control"] == "no-store"
    assert isinstance(parse(sealed.json()), KmsV1Envelope)
    opened = api.call(
        "POST",
        "/crypto/decrypt",
        "worker",
        json={
            "envelope": json.dumps(sealed.json()),
            "reason": "ticket-1",
            "context": {"field": "ssn"},
        },
    )
    assert opened.json() == {"plaintext": "123-45-6789"}
    moved = api.call(
        "POST",
        "/crypto/decrypt",
        "worker",
        json={"envelope": sealed.json(), "reason": "r", "context": {"field": "email"}},
    )
    assert moved.status_code == 422
    assert moved.json()["error_type"] == "integrity"
    events = [e for e in api.audit() if e["event_type"].startswith("crypto.")]
    worker = "token:worker:" + hashlib.sha256(api.tokens["worker"].encode()).hexdigest()[:8]
    assert [e["actor"] for e in events][1:] == [worker, worker]
    assert events[1]["reason"] == "ticket-1"
    assert all(e["source_ip"] == "testclient" for e in events)
    assert "123-45-6789" not in api.audit_path.read_text()


# -- jobs -------------------------------------------------------------------------------------


def test_migrate_job_runs_to_completion(tmp_path: Path, make_api: Callable[..., Api]) -> None:
    path = tmp_path / "legacy.db"
    api = make_api(
        local_env(
            tmp_path,
            HMD_ENCRYPTION_MODE="hybrid",
            HMD_PII_MASTER_KEY=MASTER_HEX,
            HMD_DATABASE_URL=f"sqlite:///{path}",
        )
    )
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, legacy_envelope(MASTER_HEX, f"ssn-{i}")) for i in range(1, ROWS + 1)]
            + [(1001, None), (1002, "[REDACTED]")],
        )
    assert api.call("GET", "/admin/crypto/reencrypt/status", "admin").json()["state"] == "idle"
    started = api.call(
        "POST",
        "/admin/crypto/reencrypt",
        "admin",
        json={"table": "t", "column": "v", "batch_size": 7},
    )
    assert started.status_code == 202
    job = started.json()["job_id"]
    status = api.wait_for_job(job)
    assert {k: status[k] for k in ("state", "total", "completed", "failed", "skipped")} == {
        "state": "completed",
        "total": ROWS,
        "completed": ROWS,
        "failed": 0,
        "skipped": 2,
    }
    assert status["mode"] == "migrate" and status["target"] == "t.v"
    assert api.call("GET", "/admin/crypto/reencrypt/status", "audit").json() == status
    assert gauge(api) == {
        "total": ROWS,
        "completed": ROWS,
        "failed": 0,
        "throttled": 0,
        "kms_rate": 0,
    }
    values = stored(f"sqlite:///{path}")
    with heimdall_kms.from_env(api.env, audit=MemoryAuditSink()) as crypto:
        for i in range(1, ROWS + 1):
            assert crypto.decrypt(values[i] or "", actor="t", reason="verify") == f"ssn-{i}"
    batches = [e for e in api.audit() if e["event_type"] == "reencrypt.batch"]
    assert len(batches) == 5 and all(e["request_id"] == job for e in batches)
    assert all(e["actor"].startswith("token:admin:") for e in batches)


def test_a_job_whose_id_column_is_its_column_is_refused_and_nothing_written(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    """Found fuzzing the API by hand: ``id_column`` = ``column`` was accepted, and the migrate
    job "completed" with every value bound to its own old text as the record, so none could
    be read under its row's context afterwards."""
    path = tmp_path / "legacy.db"
    url = f"sqlite:///{path}"
    env = {"HMD_ENCRYPTION_MODE": "hybrid", "HMD_PII_MASTER_KEY": MASTER_HEX}
    api = make_api(local_env(tmp_path, HMD_DATABASE_URL=url, **env))
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.executemany(
            "INSERT INTO t VALUES (?, ?)",
            [(i, legacy_envelope(MASTER_HEX, f"ssn-{i}")) for i in range(1, 4)],
        )
    before = stored(url)
    for id_column in ("v", "V"):
        body = {"table": "t", "column": "v", "id_column": id_column}
        refused = api.call("POST", "/admin/crypto/reencrypt", "admin", json=body)
        assert refused.status_code == 422, refused.text
        assert "is the column itself" in refused.json()["detail"][0]["msg"]
        report = api.call(
            "GET", f"/admin/crypto/keys?table=t&column=v&id_column={id_column}", "audit"
        )
        assert report.status_code == 422
    assert stored(url) == before
    assert api.call("GET", "/admin/crypto/reencrypt/status", "admin").json()["state"] == "idle"


def test_migrate_needs_hybrid_mode(api: Api, tmp_path: Path) -> None:
    kms_table(api.env, tmp_path / "app.db")
    refused = api.call(
        "POST", "/admin/crypto/reencrypt", "admin", json={"table": "t", "column": "v"}
    )
    assert refused.status_code == 409
    assert refused.json()["error_type"] == "configuration"
    assert "HMD_ENCRYPTION_MODE" in refused.json()["detail"]


def test_rewrap_job_after_rotation_with_pauses_and_conflicts(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    api = make_api(local_env(tmp_path, HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}"))
    url = kms_table(api.env, tmp_path / "app.db")
    before = {i: parse(v or "") for i, v in stored(url).items()}
    rotated = api.call("POST", "/admin/crypto/rotate", "admin", json={"reason": "CHG-1"})
    assert rotated.json()["new_version"] == 2
    body = {
        "table": "t",
        "column": "v",
        "mode": "rewrap",
        "batch_size": 10,
        "interval_seconds": 0.4,
    }
    clock = time.monotonic()
    job = api.call("POST", "/admin/crypto/reencrypt", "admin", json=body).json()["job_id"]
    again = api.call("POST", "/admin/crypto/reencrypt", "admin", json={**body, "mode": "full"})
    assert again.status_code == 409
    assert job in again.json()["detail"]
    status = api.wait_for_job(job)
    # 30 rows in batches of 10: two pauses, between batches only.
    assert 0.8 <= time.monotonic() - clock < 5
    assert (status["state"], status["completed"], status["failed"]) == ("completed", ROWS, 0)
    assert gauge(api) == {
        "total": ROWS,
        "completed": ROWS,
        "failed": 0,
        "throttled": 0,
        "kms_rate": 0,
    }
    for i, value in stored(url).items():
        new, old = parse(value or ""), before[i]
        assert isinstance(new, KmsV1Envelope) and isinstance(old, KmsV1Envelope)
        assert (new.key_version, new.ciphertext) == (2, old.ciphertext)
    assert api.call("GET", "/admin/crypto/reencrypt/status?job=nope", "admin").status_code == 404
    keys = api.call("GET", "/admin/crypto/keys?table=t&column=v", "audit").json()
    assert keys["values_by_target"] == {"t.v": {"2": ROWS}}
    rotations = [e for e in api.audit() if e["event_type"] == "key.rotate"]
    assert rotations[-1]["reason"] == "CHG-1" and rotations[-1]["actor"].startswith("token:admin")


def test_job_requests_are_checked_before_acceptance(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    unconfigured = make_api(local_env(tmp_path))  # no HMD_DATABASE_URL, no targets file
    body = {"table": "t", "column": "v", "mode": "rewrap"}
    no_database = unconfigured.call("POST", "/admin/crypto/reencrypt", "admin", json=body)
    assert no_database.status_code == 409
    assert "HMD_DATABASE_URL" in no_database.json()["detail"]
    api = make_api(local_env(tmp_path, HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'none.db'}"))

    def start(**fields: Any) -> httpx.Response:
        return api.call("POST", "/admin/crypto/reencrypt", "admin", json={**body, **fields})

    bad_type = start(batch_size="5")
    assert bad_type.status_code == 422
    assert bad_type.json()["detail"] == [
        {
            "loc": ["body", "batch_size"],
            "msg": "Input should be a valid integer",
            "type": "int_type",
        }
    ]
    missing_table = start()  # the service's database has no table t
    assert missing_table.status_code == 422 and missing_table.json()["error_type"] == "store"
    assert start(table="t; DROP TABLE t").status_code == 422
    assert start(unknown=1).status_code == 422
    assert api.call("GET", "/admin/crypto/reencrypt/status", "admin").json()["state"] == "idle"


def test_a_schema_qualified_table_is_checked_in_its_own_schema(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    """Found fuzzing the API by hand: ``temp.t`` passed the check (it looked at ``main.t``), was
    accepted 202, and the job then failed on "no such table"."""
    url = kms_table(local_env(tmp_path), tmp_path / "app.db", rows=3)
    api = make_api(local_env(tmp_path, HMD_DATABASE_URL=url))
    body = {"column": "v", "mode": "rewrap"}
    for table, message in (
        ("temp.t", "table 'temp.t' does not exist"),
        ("other.t", "unknown database"),  # SQLite's own words; it names the schema too
    ):
        start = {**body, "table": table}
        refused = api.call("POST", "/admin/crypto/reencrypt", "admin", json=start)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error_type"] == "store"
        assert message in refused.json()["detail"]
        assert table.partition(".")[0] in refused.json()["detail"]
        report = api.call("GET", f"/admin/crypto/keys?table={table}&column=v", "audit")
        assert report.status_code == 422 and message in report.json()["detail"]
    assert api.call("GET", "/admin/crypto/reencrypt/status", "admin").json()["state"] == "idle"
    qualified = {**body, "table": "main.t"}
    accepted = api.call("POST", "/admin/crypto/reencrypt", "admin", json=qualified)
    assert accepted.status_code == 202
    assert api.wait_for_job(accepted.json()["job_id"])["state"] == "completed"


class Listener:
    """A TCP port on loopback that counts the connections made to it (and drops them)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


class TestRequestsNeverNameADatabase:
    """Issue 15 item 2 (SPEC §7): the service works only on its own database and targets."""

    @pytest.fixture
    def served(self, tmp_path: Path, make_api: Callable[..., Api]) -> Api:
        api = make_api(local_env(tmp_path, HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}"))
        kms_table(api.env, tmp_path / "app.db", rows=3)
        return api

    def test_a_database_in_a_job_body_is_refused_and_nothing_is_opened(
        self, served: Api, listener: Listener, tmp_path: Path
    ) -> None:
        for database in (
            f"postgresql://u@127.0.0.1:{listener.port}/db",
            f"postgresql://u@h/db?hostaddr=127.0.0.1&port={listener.port}",
            f"postgresql://u@127.0.0.1:{listener.port}/db?sslkeylogfile={served.audit_path}",
            f"sqlite:///{tmp_path / 'elsewhere.db'}",
        ):
            body = {"database": database, "table": "t", "column": "v", "mode": "rewrap"}
            refused = served.call("POST", "/admin/crypto/reencrypt", "admin", json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["detail"][0]["loc"] == ["body", "database"]
            assert database not in refused.text
        assert listener.accepted == 0
        assert not (tmp_path / "elsewhere.db").exists()
        assert served.call("GET", "/admin/crypto/reencrypt/status", "admin").json()["state"] == (
            "idle"
        )

    @pytest.mark.parametrize("role", ["audit", "admin"])
    def test_a_database_in_the_key_report_query_is_refused_and_nothing_is_opened(
        self, served: Api, listener: Listener, role: str
    ) -> None:
        database = f"postgresql://u@h/db?hostaddr=127.0.0.1&port={listener.port}"
        refused = served.call(
            "GET",
            "/admin/crypto/keys",
            role,
            params={"database": database, "table": "t", "column": "v"},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == [
            {"loc": ["query", "database"], "msg": "unknown parameter", "type": "extra_forbidden"}
        ]
        assert listener.accepted == 0
        counted = served.call("GET", "/admin/crypto/keys?table=t&column=v", role)
        assert counted.status_code == 200 and counted.json()["values_by_target"] == {
            "t.v": {"1": 3}
        }

    @pytest.mark.parametrize(
        ("method", "path", "role"),
        [
            ("GET", "/admin/crypto/reencrypt/status", "audit"),
            ("POST", "/admin/crypto/rotate", "admin"),
            ("POST", "/crypto/encrypt", "app"),
        ],
    )
    def test_any_unknown_query_parameter_is_refused_after_the_token_check(
        self, served: Api, method: str, path: str, role: str
    ) -> None:
        body = {"json": {"plaintext": "x"}} if path == "/crypto/encrypt" else {}
        query = {"params": {"sslkeylogfile": "/tmp/x"}}
        assert served.call(method, path, None, **query, **body).status_code == 401
        refused = served.call(method, path, role, **query, **body)
        assert refused.status_code == 422
        assert refused.json()["detail"][0]["loc"] == ["query", "sslkeylogfile"]

    @pytest.mark.parametrize(
        ("path", "role", "name"),
        [
            ("/admin/crypto/keys?table=t&column=v&table=other", "audit", "table"),
            ("/admin/crypto/reencrypt/status?job=a&job=b", "admin", "job"),
        ],
    )
    def test_a_repeated_query_parameter_is_refused_after_the_token_check(
        self, served: Api, path: str, role: str, name: str
    ) -> None:
        """The route would take the last value, where a proxy may have checked the first."""
        assert served.call("GET", path, None).status_code == 401
        refused = served.call("GET", path, role)
        assert refused.status_code == 422
        assert refused.json()["detail"] == [
            {
                "loc": ["query", name],
                "msg": "a parameter appears twice",
                "type": "value_error",
            }
        ]
        assert "other" not in refused.text

    def test_the_openapi_document_offers_no_database_parameter(self, served: Api) -> None:
        document = served.call("GET", "/openapi.json").json()
        body = document["paths"]["/admin/crypto/reencrypt"]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert "database" not in schema["properties"]
        assert schema.get("additionalProperties") is False
        for path, operations in document["paths"].items():
            for operation in operations.values():
                names = {p["name"] for p in operation.get("parameters", [])}
                assert "database" not in names, path

    def test_a_targets_file_names_the_database_and_the_only_allowed_columns(
        self, tmp_path: Path, make_api: Callable[..., Api]
    ) -> None:
        db = tmp_path / "served.db"
        kms_table(local_env(tmp_path), db, rows=4)
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT)")
        targets = tmp_path / "targets.toml"
        targets.write_text(f'database = "sqlite:///{db}"\n[[targets]]\ntable = "t"\ncolumn = "v"\n')
        api = make_api(local_env(tmp_path), targets=ServerTargets.load(None, targets))
        counted = api.call("GET", "/admin/crypto/keys?table=t&column=v", "audit")
        assert counted.json()["values_by_target"] == {"t.v": {"1": 4}}
        job = api.call(
            "POST",
            "/admin/crypto/reencrypt",
            "admin",
            json={"table": "t", "column": "v", "mode": "rewrap"},
        )
        assert job.status_code == 202
        for call in (
            api.call("GET", "/admin/crypto/keys?table=other&column=v", "audit"),
            api.call(
                "POST", "/admin/crypto/reencrypt", "admin", json={"table": "other", "column": "v"}
            ),
        ):
            assert call.status_code == 422
            assert "targets file" in call.json()["detail"][0]["msg"]


class TestServeTargetsOption:
    def test_a_bad_targets_file_stops_serve_before_it_starts(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name, value in local_env(tmp_path, HMD_AUDIT_LOG=str(tmp_path / "a.log")).items():
            monkeypatch.setenv(name, value)
        tokens = tmp_path / "tokens.txt"
        write_tokens(tokens)
        missing = ["--tokens-file", str(tokens), "--targets", str(tmp_path / "none.toml")]
        with pytest.raises(InvalidInputError, match="targets file"):
            serve.main(missing, standalone_mode=False)
        bad = tmp_path / "bad.toml"
        bad.write_text('database = "mysql://u@h/db"\n[[targets]]\ntable = "t"\ncolumn = "v"\n')
        monkeypatch.setenv("HMD_ADMIN_TARGETS_FILE", str(bad))
        with pytest.raises(ConfigurationError, match="expected sqlite"):
            serve.main(["--tokens-file", str(tokens)], standalone_mode=False)


class TestOversizedAuditLines:
    """Issue 15 item 3: a request cannot make an audit line that wedges the log."""

    def test_a_huge_context_is_refused_before_anything_runs_and_the_log_stays_writable(
        self, tmp_path: Path, make_api: Callable[..., Api]
    ) -> None:
        api = make_api(local_env(tmp_path))
        largest = {"plaintext": "123-45-6789", "context": LARGEST}
        sealed = api.call("POST", "/crypto/encrypt", "app", json=largest)
        assert sealed.status_code == 200
        opened = api.call(
            "POST",
            "/crypto/decrypt",
            "app",
            json={"envelope": sealed.json(), "reason": "r", "context": LARGEST},
        )
        assert opened.status_code == 200
        before = api.audit_path.read_bytes()
        too_big = api.call(
            "POST", "/crypto/encrypt", "app", json={"plaintext": "x", "context": OVERSIZED}
        )
        assert too_big.status_code == 422 and too_big.json()["error_type"] == "invalid_input"
        assert api.audit_path.read_bytes() == before  # nothing done, nothing audited
        forged = {**sealed.json(), "context": OVERSIZED}
        refused = api.call(
            "POST", "/crypto/decrypt", "app", json={"envelope": forged, "reason": "r"}
        )
        assert refused.status_code == 422
        assert refused.json()["error_type"] == "malformed_envelope"
        added = api.audit_path.read_bytes()[len(before) :].splitlines()
        assert len(added) == 1 and len(added[0]) < 1024  # the refusal, without the context
        appended = append_from_another_process({**api.env, "HMD_AUDIT_LOG": str(api.audit_path)})
        assert appended.returncode == 0, appended.stderr
        assert verify(api.audit_path).lines == len(api.audit())


class TestDecryptEnvelopeObject:
    """Issue 15 low: the object form of an envelope gets the checks its JSON text gets."""

    def test_duplicated_keys_and_unknown_fields_are_refused(
        self, tmp_path: Path, make_api: Callable[..., Api]
    ) -> None:
        api = make_api(local_env(tmp_path))
        sealed = api.call(
            "POST", "/crypto/encrypt", "app", json={"plaintext": "p", "context": {"field": "a"}}
        ).json()
        genuine = json.dumps(sealed)
        # {"context": {"field": "b"}, ...the real envelope, whose "context" comes last}
        doubled = '{"envelope": {"context": {"field": "b"}, ' + genuine[1:] + ', "reason": "r"}'
        refused = api.call(
            "POST",
            "/crypto/decrypt",
            "app",
            content=doubled.encode(),
            headers={"Content-Type": "application/json"},
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["msg"] == "a key appears twice in one object"
        smuggled = {**sealed, "ssn": "123-45-6789"}
        extra = api.call(
            "POST", "/crypto/decrypt", "app", json={"envelope": smuggled, "reason": "r"}
        )
        assert extra.status_code == 422 and "123-45-6789" not in extra.text
        assert "unknown envelope field 'ssn'" in extra.json()["detail"][0]["msg"]
        as_text = api.call(
            "POST", "/crypto/decrypt", "app", json={"envelope": genuine, "reason": "r"}
        )
        as_object = api.call(
            "POST", "/crypto/decrypt", "app", json={"envelope": sealed, "reason": "r"}
        )
        assert as_text.json() == as_object.json() == {"plaintext": "p"}


# -- value coalescing and the batch endpoints (issue 21) --------------------------------------


def counted_vault_api(
    server: OpenBao, make_api: Callable[..., Api], **kwargs: Any
) -> tuple[Api, CountingSession]:
    """An app on ``server`` whose provider's HTTP requests are counted."""
    session = CountingSession()

    def provider() -> VaultTransitProvider:
        client = hvac.Client(url=server.addr, token=server.root_token, session=session)
        return VaultTransitProvider(client, TRANSIT_KEY)

    return make_api(server.env(), provider_factory=provider, **kwargs), session


def transit(session: CountingSession, operation: str) -> int:
    return len([s for s in session.sent if f"/transit/{operation}/" in s])


def person(i: int) -> dict[str, str]:
    return {"table": "people", "field": "ssn", "record": str(i)}


def token_actor(api: Api, role: str) -> str:
    return f"token:{role}:" + hashlib.sha256(api.tokens[role].encode()).hexdigest()[:8]


@pytest.mark.vault
class TestBatchEndpoints:
    def test_per_item_results_errors_audit_and_request_count(
        self, openbao: OpenBao, make_api: Callable[..., Api]
    ) -> None:
        api, session = counted_vault_api(openbao, make_api)
        items: list[dict[str, Any]] = [
            {"plaintext": f"pii-{i}-x", "context": person(i)} for i in range(300)
        ]
        items[7] = {"plaintext": "pii-7-x", "context": {"": "x"}}  # its own input error
        sealed = api.call(
            "POST",
            "/crypto/encrypt-batch",
            "app",
            json={"items": items},
            headers={"X-Request-ID": "enc-batch-1"},
        )
        assert sealed.status_code == 200, sealed.text
        assert sealed.headers["Cache-Control"] == "no-store"
        results = sealed.json()["results"]
        assert sealed.json()["failed"] == 1
        assert set(results[7]) == {"error"}
        assert results[7]["error"]["error_type"] == "invalid_input"
        assert results[7]["error"]["retryable"] is False
        envelopes = [r.get("envelope") for r in results]
        assert all(isinstance(parse(e), KmsV1Envelope) for i, e in enumerate(envelopes) if i != 7)
        assert transit(session, "encrypt") <= 2  # 299 values, 250 per Transit batch
        encrypts = [e for e in api.audit() if e["event_type"] == "crypto.encrypt"]
        assert len(encrypts) == 299
        assert {(e["actor"], e["request_id"], e["source_ip"]) for e in encrypts} == {
            (token_actor(api, "app"), "enc-batch-1", "testclient")
        }

        session.sent.clear()
        wanted = [
            {"envelope": e, "context": {"record": str(i)}}
            for i, e in enumerate(envelopes)
            if i != 7
        ]
        wanted[10]["context"] = {"record": "999"}  # item 10 (record 11) claims another record
        wanted.append({"envelope": "not an envelope"})
        opened = api.call(
            "POST", "/crypto/decrypt-batch", "worker", json={"items": wanted, "reason": "t-9"}
        )
        assert opened.status_code == 200, opened.text
        answers = opened.json()["results"]
        assert opened.json()["failed"] == 2
        assert answers[10]["error"]["error_type"] == "integrity"
        assert answers[-1]["error"]["error_type"] == "malformed_envelope"
        texts = [a.get("plaintext") for a in answers[:-1]]
        assert texts == [None if i == 11 else f"pii-{i}-x" for i in range(300) if i != 7]
        assert transit(session, "decrypt") <= 2
        decrypts = [e for e in api.audit() if e["event_type"] == "crypto.decrypt"]
        assert len(decrypts) == 300  # every item, the two failures included
        assert {(e["actor"], e["reason"]) for e in decrypts} == {
            (token_actor(api, "worker"), "t-9")
        }
        assert sorted(e["result"] for e in decrypts).count("failure") == 2
        assert "pii-" not in api.audit_path.read_text()

    def test_a_sealed_vault_fails_every_item_retryable_and_audited(
        self, fresh_openbao: OpenBao, make_api: Callable[..., Api]
    ) -> None:
        api, _ = counted_vault_api(fresh_openbao, make_api)
        fresh_openbao.client().sys.seal()
        items = [{"plaintext": f"pii-{i}-x", "context": person(i)} for i in range(5)]
        answer = api.call("POST", "/crypto/encrypt-batch", "app", json={"items": items})
        assert answer.status_code == 200, answer.text
        assert answer.json()["failed"] == 5
        errors = [r["error"] for r in answer.json()["results"]]
        assert {(e["error_type"], e["retryable"]) for e in errors} == {("unavailable", True)}
        failed = [e for e in api.audit() if e["event_type"] == "crypto.encrypt"]
        assert [e["result"] for e in failed] == ["failure"] * 5

    def test_bodies_are_checked_as_the_single_value_ones(
        self, openbao: OpenBao, make_api: Callable[..., Api]
    ) -> None:
        api, session = counted_vault_api(openbao, make_api)
        refused = [
            {"items": []},
            {"items": [{"plaintext": "x"}] * 1001},
            {"items": [{"plaintext": "x", "database": "postgresql://x"}]},
            {"items": [{"plaintext": "x"}], "extra": 1},
        ]
        for body in refused:
            answer = api.call("POST", "/crypto/encrypt-batch", "app", json=body)
            assert answer.status_code == 422, body
        doubled = b'{"items": [{"plaintext": "a", "plaintext": "b"}]}'
        answer = api.call(
            "POST",
            "/crypto/encrypt-batch",
            "app",
            content=doubled,
            headers={"Content-Type": "application/json"},
        )
        assert answer.status_code == 422
        assert answer.json()["detail"][0]["msg"] == "a key appears twice in one object"
        no_reason = api.call(
            "POST", "/crypto/decrypt-batch", "app", json={"items": [{"envelope": "x"}]}
        )
        assert no_reason.status_code == 422
        assert (
            api.call(
                "POST", "/crypto/encrypt-batch", "worker", json={"items": [{"plaintext": "x"}]}
            ).status_code
            == 403
        )
        assert transit(session, "encrypt") == 0  # nothing refused reached the KMS
        schema = api.call("GET", "/openapi.json").json()["paths"]["/crypto/decrypt-batch"]["post"]
        body = schema["requestBody"]["content"]["application/json"]["schema"]
        assert body["properties"]["items"]["maxItems"] == 1000
        assert "200" in schema["responses"]


@pytest.mark.vault
class TestCoalescedValueRoutes:
    """Concurrent /crypto/encrypt and /crypto/decrypt requests share batched Transit calls."""

    def test_concurrent_requests_share_calls_each_audited_as_its_own(
        self, openbao: OpenBao, make_api: Callable[..., Api]
    ) -> None:
        # A wide window, so that 40 requests through one TestClient meet on a busy machine.
        api, session = counted_vault_api(
            openbao, make_api, coalescing=LaneLimits(window_seconds=0.25)
        )

        def encrypt(i: int) -> httpx.Response:
            body = {"plaintext": f"pii-{i}-x", "context": person(i)}
            headers = {"X-Request-ID": f"enc-{i}"}
            return api.call("POST", "/crypto/encrypt", "app", json=body, headers=headers)

        with ThreadPoolExecutor(40) as pool:
            sealed = list(pool.map(encrypt, range(40)))
        assert [r.status_code for r in sealed] == [200] * 40
        assert transit(session, "encrypt") <= 10
        events = [e for e in api.audit() if e["event_type"] == "crypto.encrypt"]
        assert sorted((e["request_id"], e["context"]["record"]) for e in events) == sorted(
            (f"enc-{i}", str(i)) for i in range(40)
        )

        session.sent.clear()

        def decrypt(i: int) -> httpx.Response:
            stated = {"record": "999" if i == 3 else str(i)}
            body = {"envelope": sealed[i].json(), "reason": f"why-{i}", "context": stated}
            return api.call("POST", "/crypto/decrypt", "worker", json=body)

        with ThreadPoolExecutor(40) as pool:
            opened = list(pool.map(decrypt, range(40)))
        assert opened[3].status_code == 422
        assert opened[3].json()["error_type"] == "integrity"
        assert [r.json()["plaintext"] for i, r in enumerate(opened) if i != 3] == [
            f"pii-{i}-x" for i in range(40) if i != 3
        ]
        assert transit(session, "decrypt") <= 10
        reasons = {
            e["context"]["record"]: e["reason"]
            for e in api.audit()
            if e["event_type"] == "crypto.decrypt"
        }
        assert reasons == {str(i): f"why-{i}" for i in range(40)}


class TestDeniedRequestFlood:
    """Issue 15 low: a flood of refused requests writes no synced line each, loses none."""

    def test_a_burst_is_counted_into_few_lines_and_every_refusal_is_in_the_log(
        self, tmp_path: Path, make_api: Callable[..., Api]
    ) -> None:
        api = make_api(local_env(tmp_path))
        burst = 300
        started = time.monotonic()
        for n in range(burst):
            who = None if n % 2 else "not-a-known-token"
            assert api.call("GET", "/admin/crypto/keys", who).status_code == 401
        elapsed = time.monotonic() - started
        written = [e for e in api.audit() if e["event_type"] == "access.denied"]
        # At most two lines per second per source and actor (the first, then the count).
        assert len(written) <= 4 * (int(elapsed) + 2), len(written)
        api.client.app.state.admin.guard.close()
        events = [e for e in api.audit() if e["event_type"] == "access.denied"]
        assert sum(e["details"].get("count", 1) for e in events) == burst
        counted = [e for e in events if e["details"].get("aggregated")]
        assert counted and all(e["source_ip"] == "testclient" for e in counted)
        unknown = "token:unknown:" + hashlib.sha256(b"not-a-known-token").hexdigest()[:8]
        assert {e["actor"] for e in events} == {"anonymous", unknown}
        assert verify(api.audit_path).lines == len(api.audit())

    def test_the_counts_are_written_when_the_second_is_over(
        self, tmp_path: Path, make_api: Callable[..., Api]
    ) -> None:
        api = make_api(local_env(tmp_path))
        for _ in range(5):
            api.call("POST", "/admin/crypto/rotate")
        deadline = time.monotonic() + 5
        while (
            sum(
                e["details"].get("count", 1)
                for e in api.audit()
                if e["event_type"] == "access.denied"
            )
            < 5
        ):
            assert time.monotonic() < deadline, "the counted refusals were never written"
            time.sleep(0.1)


# -- rotation scheduler ------------------------------------------------------------------------


def test_scheduler_rotates_when_due(tmp_path: Path, make_api: Callable[..., Api]) -> None:
    env = local_env(tmp_path, HMD_ROTATION_CHECK_SECONDS="1", HMD_KEY_ROTATION_DAYS="0")
    api = make_api(env)
    deadline = time.monotonic() + 10
    while api.call("GET", "/admin/crypto/keys", "audit").json()["latest_version"] < 2:
        assert time.monotonic() < deadline, "the scheduler did not rotate"
        time.sleep(0.1)
    rotations = [e for e in api.audit() if e["event_type"] == "key.rotate"]
    assert rotations[0]["actor"] == "scheduler" and rotations[0]["details"]["if_due"] is True


def test_rotation_check_setting() -> None:
    base = {"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX}
    assert Settings.from_env(base).rotation_check_seconds is None
    every_hour = {**base, "HMD_ROTATION_CHECK_SECONDS": "3600"}
    assert Settings.from_env(every_hour).rotation_check_seconds == 3600
    for bad in ("0", "soon"):
        with pytest.raises(ConfigurationError, match=r"^HMD_ROTATION_CHECK_SECONDS: "):
            Settings.from_env({**base, "HMD_ROTATION_CHECK_SECONDS": bad})


# -- health, metrics, OpenAPI ------------------------------------------------------------------


@pytest.mark.vault
def test_healthz_follows_the_kms(fresh_openbao: OpenBao, make_api: Callable[..., Api]) -> None:
    api = make_api(
        fresh_openbao.env(HMD_KMS_BREAKER_THRESHOLD="2", HMD_KMS_BREAKER_COOLDOWN_SECONDS="1")
    )
    healthy = api.call("GET", "/healthz")
    assert (healthy.status_code, healthy.json()) == (
        200,
        {"status": "ok", "provider": "vault", "key": "heimdall-pii", "circuit": "closed"},
    )
    fresh_openbao.client().sys.seal()
    sealed = api.call("GET", "/healthz")
    assert sealed.status_code == 503
    assert sealed.json()["error_type"] == "unavailable"
    api.call("GET", "/healthz")  # a second failed round trip opens the circuit
    opened = api.call("GET", "/healthz")
    assert (opened.status_code, opened.json()["circuit"]) == (503, "open")
    fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)
    time.sleep(1.1)  # the cooldown; then /healthz is the probe that closes it
    recovered = api.call("GET", "/healthz")
    assert (recovered.status_code, recovered.json()["circuit"]) == (200, "closed")


@pytest.mark.vault
def test_healthz_answers_head_as_get(fresh_openbao: OpenBao, make_api: Callable[..., Api]) -> None:
    """Load balancers' health checks ask with HEAD: same check, same status, no body (it was
    405, so such a check saw the service down)."""
    api = make_api(fresh_openbao.env(HMD_KMS_BREAKER_THRESHOLD="100"))
    healthy = api.call("HEAD", "/healthz")
    assert (healthy.status_code, healthy.content) == (200, b"")
    assert healthy.headers["content-type"] == "application/json"
    fresh_openbao.client().sys.seal()
    try:
        sealed = api.call("HEAD", "/healthz")
        assert (sealed.status_code, sealed.content) == (503, b"")
        assert api.call("GET", "/healthz").status_code == 503
    finally:
        fresh_openbao.client().sys.submit_unseal_key(fresh_openbao.unseal_key)


EXPECTED_METRICS = {
    "heimdall_crypto_encrypt": {"provider", "key_version"},
    "heimdall_crypto_decrypt": {"provider", "key_version"},
    "heimdall_crypto_operation_duration_seconds": {"operation", "provider"},
    "heimdall_crypto_errors": {"operation", "provider", "error_type"},
    "heimdall_reencryption_progress": {"status"},
    "heimdall_reencryption_jobs_running": set(),  # docs/operations.md: for the stall alert
    # SPEC §12
    "heimdall_build_info": {"version"},
    "heimdall_kms_circuit_state": {"provider"},
    "heimdall_key_age_seconds": {"provider", "key"},
    "heimdall_key_rotation_due_timestamp_seconds": {"provider", "key"},
    "heimdall_audit_write_failures": set(),
    # docs/audit.md: signed checkpoints and their off-host anchor
    "heimdall_audit_checkpoint_failures": {"stage"},
    "heimdall_audit_anchor_lag_seconds": set(),
}


def test_metrics_are_exactly_those_of_the_spec(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    api = make_api(local_env(tmp_path, HMD_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}"))
    other = make_api(local_env(tmp_path))  # a second app in the same process has its own registry
    sealed = api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "p"}).json()
    api.call("POST", "/crypto/decrypt", "app", json={"envelope": sealed, "reason": "m"})
    sealed["context"] = {"field": "moved"}  # authenticated data changed: an integrity failure
    api.call("POST", "/crypto/decrypt", "app", json={"envelope": sealed, "reason": "m"})
    kms_table(api.env, tmp_path / "app.db", rows=3)
    job = api.call(
        "POST",
        "/admin/crypto/reencrypt",
        "admin",
        json={"table": "t", "column": "v", "mode": "full"},
    )
    api.wait_for_job(job.json()["job_id"])
    response = api.call("GET", "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert set(families) == set(EXPECTED_METRICS)
    for name, labels in EXPECTED_METRICS.items():
        samples = families[name].samples
        assert samples, name
        assert all(set(s.labels) - {"le"} == labels for s in samples), name
    assert families["heimdall_crypto_operation_duration_seconds"].type == "histogram"
    errors = {tuple(sorted(s.labels.items())) for s in families["heimdall_crypto_errors"].samples}
    assert (("error_type", "integrity"), ("operation", "decrypt"), ("provider", "local")) in errors
    others = text_string_to_metric_families(other.call("GET", "/metrics").text)
    counted = [s for f in others if f.name == "heimdall_crypto_encrypt" for s in f.samples]
    assert all(s.value == 0 for s in counted)


def test_openapi_document(tmp_path: Path, make_api: Callable[..., Api]) -> None:
    document = make_api(local_env(tmp_path)).call("GET", "/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token whose SHA-256 is listed in HMD_ADMIN_TOKENS_FILE with its role.",
    }
    for method, path in ALLOWED:
        operation = document["paths"][path][method.lower()]
        assert operation["summary"]
        assert operation["security"] == [{"bearer": []}]
    reencrypt = document["paths"]["/admin/crypto/reencrypt"]["post"]["requestBody"]
    schema = reencrypt["content"]["application/json"]["schema"]
    assert schema["required"] == ["table", "column"]
    assert "security" not in document["paths"]["/healthz"]["get"]
    head = document["paths"]["/healthz"]["head"]  # health checks that ask with HEAD
    assert "security" not in head and head["summary"]
    ids = [op["operationId"] for item in document["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def test_every_reference_of_the_openapi_document_resolves(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    """Found by schemathesis: the batch bodies referred to ``#/$defs/...``, which names
    nothing in the document, so their items were not described (nor fuzzed)."""
    document = make_api(local_env(tmp_path)).call("GET", "/openapi.json").json()
    schemas = document["components"]["schemas"]
    found = set(references(document))
    assert found and all(ref.startswith("#/components/schemas/") for ref in found), found
    assert all(ref.removeprefix("#/components/schemas/") in schemas for ref in found)
    batches = (("/crypto/encrypt-batch", "plaintext"), ("/crypto/decrypt-batch", "envelope"))
    for path, field in batches:
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        item = body["schema"]["properties"]["items"]["items"]
        assert item["required"] == [field] and item["additionalProperties"] is False


def test_every_error_answer_is_documented_with_its_shape(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    """Found by schemathesis: the key report answered 409 (no database), which its operation
    did not list; the error answers had no schema at all."""
    api = make_api(local_env(tmp_path))  # no database: a column's count is a 409
    document = api.call("GET", "/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for method, path in ALLOWED:
        responses = document["paths"][path][method.lower()]["responses"]
        for status in ("401", "403", "413", "422", "503"):
            assert responses[status]["content"]["application/json"]["schema"] == error_ref
    answered = [
        api.call("GET", "/admin/crypto/keys?table=t&column=v", "audit"),
        api.call("POST", "/admin/crypto/reencrypt", "admin", json={"table": "t", "column": "v"}),
        api.call("GET", "/admin/crypto/reencrypt/status?job=nope", "audit"),
        api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "x", "context": {"": "v"}}),
        api.call("POST", "/crypto/encrypt", "app", json={"plaintext": 5}),
        api.call("POST", "/crypto/decrypt", "worker", json={"envelope": "{", "reason": "r"}),
        api.call("POST", "/admin/crypto/rotate", "app"),
        api.call("POST", "/admin/crypto/rotate", None),
    ]
    assert [a.status_code for a in answered] == [409, 409, 404, 422, 422, 422, 403, 401]
    for answer in answered:
        request = answer.request
        route = "/" + request.url.path.lstrip("/")
        responses = document["paths"][route][request.method.lower()]["responses"]
        assert str(answer.status_code) in responses, (route, answer.status_code)
        ErrorBody.model_validate(answer.json())


def test_the_documented_body_schemas_refuse_what_the_routes_refuse(
    tmp_path: Path, make_api: Callable[..., Api]
) -> None:
    """Found by schemathesis (ST202, a schema-valid body refused): the documents let any
    context key through (the single-value routes refuse an empty or long one with 422) and any
    envelope object (the routes refuse a field outside its format's with 422). A batch item's
    context out of bounds is its own result (200), so its schema leaves the bounds out."""
    api = make_api(local_env(tmp_path))
    document = api.call("GET", "/openapi.json").json()

    def verdict(path: str, body: dict[str, Any]) -> tuple[bool, bool]:
        operation = document["paths"][path]["post"]["requestBody"]["content"]
        schema_ok = Draft202012Validator(operation["application/json"]["schema"]).is_valid(body)
        role = "worker" if "decrypt" in path else "app"
        return schema_ok, api.call("POST", path, role, json=body).status_code != 422

    envelope = api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "x"}).json()
    legacy = {"ciphertext": "AA==", "nonce": "AA==", "key_id": "k", "algorithm": "AES-256-GCM"}
    contexts = [{}, {"f": "x"}, {"": "x"}, {"k" * 129: "x"}, {"k": "v" * 1025}]
    contexts.append({str(i): "v" for i in range(33)})
    cases = [("/crypto/encrypt", {"plaintext": "x", "context": c}) for c in contexts]
    cases += [
        ("/crypto/encrypt-batch", {"items": [{"plaintext": "x", "context": c}]}) for c in contexts
    ]
    cases += [
        ("/crypto/decrypt", {"envelope": e, "reason": "r"})
        for e in (envelope, {**envelope, "extra": 1}, {**envelope, "encryption_version": None})
    ]
    cases += [
        ("/crypto/decrypt-batch", {"items": [{"envelope": e}], "reason": "r"})
        for e in ({**envelope, "extra": 1}, {**legacy, "context": {}}, {**legacy, "x": 1})
    ]
    cases.append(("/crypto/decrypt", {"envelope": envelope, "context": {"": "x"}, "reason": "r"}))
    verdicts = [verdict(path, body) for path, body in cases]
    assert [schema for schema, _ in verdicts] == [server for _, server in verdicts]
    assert sum(server for _, server in verdicts) == 2 + len(contexts) + 1  # both ways covered


# -- body limits and fuzzing ------------------------------------------------------------------


def test_request_bodies_are_bounded(tmp_path: Path, make_api: Callable[..., Api]) -> None:
    api = make_api(local_env(tmp_path))
    big = json.dumps({"plaintext": "x" * (1024 * 1024)}).encode()
    assert api.call("POST", "/crypto/encrypt", "app", content=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit still holds
        yield from (b"x" * 65536 for _ in range(20))

    assert api.call("POST", "/crypto/encrypt", "app", content=chunks()).status_code == 413
    assert api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "ok"}).status_code == 200


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)
IDENT = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,8}\Z") | st.text(max_size=8)
TEXT = st.text(max_size=40)
# Plausible values per field (and anything at all), so that bodies reach past validation.
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    # Not a field any more: always refused as unknown, whatever it holds.
    "database": st.sampled_from(["sqlite:///nowhere.db", "sqlite:///", "mysql://u:p@h/d"]),
    "table": IDENT,
    "column": IDENT,
    "id_column": IDENT,
    "mode": st.sampled_from(["migrate", "rewrap", "full", "MIGRATE", ""]),
    "batch_size": st.integers(-5, 20_000),
    "interval_seconds": st.floats(-1, 5000, allow_nan=False),
    "if_due": st.booleans(),
    "reason": TEXT,
    "plaintext": TEXT,
    "context": st.dictionaries(TEXT, TEXT, max_size=3),
    "envelope": TEXT,
    "items": st.lists(
        st.fixed_dictionaries(
            {}, optional={"plaintext": TEXT, "envelope": TEXT, "context": st.just({"f": "x"})}
        ),
        max_size=3,
    ),
}
FIELDS = {
    "/admin/crypto/reencrypt": (
        "database",
        "table",
        "id_column",
        "column",
        "mode",
        "batch_size",
        "interval_seconds",
    ),
    "/admin/crypto/rotate": ("if_due", "reason"),
    "/crypto/encrypt": ("plaintext", "context"),
    "/crypto/decrypt": ("envelope", "context", "reason"),
    "/crypto/encrypt-batch": ("items",),
    "/crypto/decrypt-batch": ("items", "reason"),
}
REQUIRED = {
    "/admin/crypto/reencrypt": ("table", "column"),
    "/admin/crypto/rotate": (),
    "/crypto/encrypt": ("plaintext",),
    "/crypto/decrypt": ("envelope", "reason"),
    "/crypto/encrypt-batch": ("items",),
    "/crypto/decrypt-batch": ("items", "reason"),
}
ROLE_FOR = {
    "/admin/crypto/reencrypt": "admin",
    "/admin/crypto/rotate": "admin",
    "/crypto/encrypt": "app",
    "/crypto/decrypt": "worker",
    "/crypto/encrypt-batch": "app",
    "/crypto/decrypt-batch": "worker",
}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(FIELDS)))
    shape = draw(st.sampled_from(["bytes", "json", "fields", "plausible"]))
    if shape == "bytes":
        return path, draw(st.binary(max_size=64))
    if shape == "json":
        return path, json.dumps(draw(JSON)).encode()
    if shape == "fields":
        optional = {name: FIELD_VALUES[name] | JSON for name in FIELDS[path]}
        body = draw(st.fixed_dictionaries({}, optional=optional))
    else:  # the required fields, with plausible values only: reaches the service itself
        need = REQUIRED[path]
        body = draw(
            st.fixed_dictionaries(
                {name: FIELD_VALUES[name] for name in need},
                optional={name: FIELD_VALUES[name] for name in FIELDS[path] if name not in need},
            )
        )
    return path, json.dumps(body).encode()


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("fuzz")
    tokens_file = tmp / "tokens.txt"
    tokens = write_tokens(tokens_file)
    env = {**local_env(tmp), "HMD_AUDIT_LOG": str(tmp / "audit.log")}
    with TestClient(create_app(Settings.from_env(env), load_tokens(tokens_file))) as client:
        yield Api(client, tokens, tmp / "audit.log", env)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=bodies())
def test_fuzzed_bodies_never_cause_a_server_error(
    fuzz_api: Api, request: tuple[str, bytes]
) -> None:
    path, body = request
    response = fuzz_api.call(
        "POST", path, ROLE_FOR[path], content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500, (path, body, response.text)
    if response.status_code == 422 and response.json()["error_type"] == "invalid_request":
        assert all(set(error) == {"loc", "msg", "type"} for error in response.json()["detail"])


# -- tokens file ------------------------------------------------------------------------------

DIGEST = hashlib.sha256(b"t").hexdigest()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"admin {DIGEST}\nroot {DIGEST[::-1]}\n", "line 2: unknown role"),
        (f"# c\n\nadmin {DIGEST} extra\n", "line 3: expected 'ROLE SHA256HEX'"),
        ("admin my-raw-secret-token\n", "line 1: expected the 64-hex-digit SHA-256"),
        (f"admin {DIGEST}\naudit {DIGEST.upper()}\n", "line 2: the same token hash is on line 1"),
        ("# only comments\n\n", "lists no token"),
    ],
)
def test_tokens_file_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as caught:
        load_tokens(path)
    text = str(caught.value)
    assert text.startswith(f"HMD_ADMIN_TOKENS_FILE: {path}")
    assert message in text and "\n" not in text
    assert "my-raw-secret-token" not in text


def test_serve_refuses_to_start_without_a_good_setup(tmp_path: Path) -> None:
    import click

    with pytest.raises(ConfigurationError, match="cannot read"):
        load_tokens(tmp_path / "missing.txt")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("admin nothex\n")
    with pytest.raises(ConfigurationError, match="line 1"):
        serve.main(["--tokens-file", str(tokens)], standalone_mode=False)
    with pytest.raises(click.UsageError, match=r"refusing plain HTTP on 0\.0\.0\.0"):
        serve.main(["--host", "0.0.0.0", "--tokens-file", str(tokens)], standalone_mode=False)
    with pytest.raises(ConfigurationError, match="HMD_ADMIN_TOKENS_FILE: required"):
        serve.main([], standalone_mode=False)
    legacy = Settings.from_env({"HMD_ENCRYPTION_MODE": "legacy", "HMD_PII_MASTER_KEY": MASTER_HEX})
    with pytest.raises(ConfigurationError, match="needs a KMS"):
        create_app(legacy, load_tokens_ok(tmp_path))


def load_tokens_ok(tmp_path: Path) -> Any:
    path = tmp_path / "ok.txt"
    write_tokens(path)
    return load_tokens(path)


# -- TLS over a real server ---------------------------------------------------------------------


@dataclass(frozen=True)
class TLSServer:
    """serve over TLS: its port, the CA of its certificate, the uvicorn server."""

    port: int
    ca: trustme.CA
    server: Any


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[TLSServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    env = {**local_env(tmp_path), "HMD_AUDIT_LOG": str(tmp_path / "audit.log")}
    app = create_app(Settings.from_env(env), load_tokens_ok(tmp_path))
    port = free_port()
    server = build_server(
        app,
        host="127.0.0.1",
        port=port,
        tls_cert=tmp_path / "cert.pem",
        tls_key=tmp_path / "key.pem",
        log_level="warning",
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield TLSServer(port, ca, server)
    server.should_exit = True
    thread.join(15)


def handshake(port: int, ca: trustme.CA, highest: ssl.TLSVersion, legacy: bool = False) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    if legacy:
        # Let this client really offer TLS 1.0/1.1 (OpenSSL 3 hides them above level 0).
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.set_ciphers("ALL:@SECLEVEL=0")
    context.maximum_version = highest
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_prefers_1_3_and_refuses_1_1(tls_server: TLSServer, tmp_path: Path) -> None:
    port = tls_server.port
    ca = tls_server.ca
    server = tls_server.server
    assert server.config.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(port, ca, ssl.TLSVersion.MAXIMUM_SUPPORTED) == "TLSv1.3"
    assert handshake(port, ca, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(port, ca, old, legacy=True)
    # The same client does speak TLS 1.1 to a server that allows it: the refusal is ours.
    assert _tls11_control(ca) == "TLSv1.1"
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with httpx.Client(verify=context) as client:
        response = client.get(f"https://127.0.0.1:{port}/healthz")
    assert (response.status_code, response.json()["status"]) == (200, "ok")


def _tls11_control(ca: trustme.CA) -> str:
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server_context.minimum_version = ssl.TLSVersion.TLSv1
    server_context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        version = handshake(port, ca, ssl.TLSVersion.TLSv1_1, legacy=True)
        thread.join(5)
    return version


@pytest.mark.vault
def test_a_throttled_online_call_is_answered_429_with_the_kms_retry_after(
    fresh_openbao: OpenBao, make_api: Callable[..., Api]
) -> None:
    root = fresh_openbao.client()
    root.write_data("sys/quotas/config", data={"enable_rate_limit_response_headers": True})
    api = make_api(fresh_openbao.env())
    assert api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "p"}).status_code == 200
    root.write_data(
        "sys/quotas/rate-limit/transit", data={"path": "transit/", "rate": 1, "interval": "1m"}
    )
    api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "p"})  # uses the one request
    started = time.monotonic()
    throttled = api.call("POST", "/crypto/encrypt", "app", json={"plaintext": "p"})
    assert time.monotonic() - started < 10  # online: fails fast
    assert throttled.status_code == 429
    assert throttled.json()["error_type"] == "rate_limited"
    assert 30 <= int(throttled.headers["Retry-After"]) <= 60  # the quota's own, not a guess
