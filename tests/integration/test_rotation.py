"""Rotation lifecycle on a live OpenBao and on the local provider, over a SQLite table."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.composition import load_provider
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import KeyVersionRetiredError
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.reencrypt import ReencryptMode, ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.rotation import ClockSource, is_due, rotate
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store
from tests.servers import start_openbao

ROWS = 120


@pytest.fixture(params=["local", "vault"])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    values = {"HMD_ENCRYPTION_MODE": "kms", "HMD_AUDIT_LOG": str(tmp_path / "audit.log")}
    server = None
    if request.param == "local":
        values |= {"HMD_KMS_PROVIDER": "local", "HMD_LOCAL_KEYRING": str(tmp_path / "kr.json")}
        LocalKeyring(tmp_path / "kr.json").ensure_key("heimdall-pii")
    else:
        server = start_openbao()
        values |= server.env(HMD_AUDIT_LOG=values["HMD_AUDIT_LOG"])
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    yield values
    if server is not None:
        server.stop()


@pytest.fixture
def table(tmp_path: Path, env: dict[str, str]) -> str:
    """A SQLite table of kms_v1 values sealed at the key's current version."""
    path = tmp_path / "app.db"
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto, sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        sealed = crypto.encrypt_many(
            [
                (f"value-{i}", {"table": "t", "field": "v", "record": str(i)})
                for i in range(1, ROWS + 1)
            ]
        )
        db.executemany(
            "INSERT INTO t VALUES (?, ?)", [(i, e.to_json()) for i, e in enumerate(sealed, 1)]
        )
    return f"sqlite:///{path}"


def stored(url: str) -> dict[int, KmsV1Envelope]:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT id, v FROM t").fetchall()
    result = {}
    for row_id, value in rows:
        envelope = parse(value)
        assert isinstance(envelope, KmsV1Envelope)
        result[row_id] = envelope
    return result


def decrypt_all(env: dict[str, str], url: str) -> list[str]:
    envelopes = stored(url)
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
        return crypto.decrypt_many(
            [envelopes[i] for i in sorted(envelopes)], actor="t", reason="verify"
        )


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def targets(url: str) -> list[str]:
    return ["--database", url, "--table", "t", "--column", "v"]


def audit_events(env: dict[str, str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in Path(env["HMD_AUDIT_LOG"]).read_text().splitlines()]


EXPECTED = [f"value-{i}" for i in range(1, ROWS + 1)]


def test_rotate_keeps_old_values_readable_and_new_values_use_the_new_version(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["rotate", "--json"], capsys)
    assert code == 0
    # Vault tells its own time (the Date header); the local provider has only this host's.
    clock = "kms" if env["HMD_KMS_PROVIDER"] == "vault" else "local"
    assert json.loads(out) | {"next_due": None} == {
        "rotated": True,
        "old_version": 1,
        "new_version": 2,
        "next_due": None,
        "clock": clock,
    }
    assert decrypt_all(env, table) == EXPECTED
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
        fresh = crypto.encrypt("new", context={"field": "v"})
    assert isinstance(fresh, KmsV1Envelope)
    assert fresh.key_version == 2
    rotations = [e for e in audit_events(env) if e["event_type"] == "key.rotate"]
    assert rotations[-1]["key_version"] == 2
    assert rotations[-1]["result"] == "success"


def test_rotate_if_due(
    env: dict[str, str],
    table: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, out, _ = run(["rotate", "--if-due", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["rotated"] is False  # a fresh key is not 90 days old
    settings = Settings.from_env(env)
    kms = load_provider(settings)
    info = kms.describe()
    created = info.latest.created_at
    assert created is not None
    cadence = timedelta(days=90)
    sink = MemoryAuditSink()
    young = rotate(
        kms, sink, actor="cron", if_due=True, cadence=cadence, now=created + timedelta(days=89)
    )
    assert not young.rotated
    assert sink.events == []
    old = rotate(
        kms,
        sink,
        actor="cron",
        if_due=True,
        cadence=cadence,
        now=created + timedelta(days=90, seconds=1),
    )
    if env["HMD_KMS_PROVIDER"] == "vault":
        # Vault tells its own time: by its clock the key is seconds old, whatever `now` says.
        assert (old.rotated, old.clock) == (False, ClockSource.KMS)
        assert sink.events == []
        cadence = timedelta(0)  # due at once by any clock
        old = rotate(kms, sink, actor="cron", if_due=True, cadence=cadence)
    assert old.rotated
    assert (old.old_version, old.new_version) == (1, 2)
    # The new version's age is counted from its own creation time in the KMS.
    newest = kms.describe().latest.created_at
    assert newest is not None
    assert old.due_at == newest + cadence
    assert not is_due(kms.describe(), now=newest + timedelta(days=89), cadence=timedelta(days=90))
    kms.close()
    monkeypatch.setenv("HMD_KEY_ROTATION_DAYS", "0")
    code, out, _ = run(["rotate", "--if-due", "--json"], capsys)
    assert json.loads(out)["new_version"] == 3


def test_rewrap_changes_only_the_wrapped_dek(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored(table)
    run(["rotate"], capsys)
    code, out, err = run(
        ["reencrypt", *targets(table), "--mode", "rewrap", "--json", "--batch-size", "50"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["completed"] == ROWS
    after = stored(table)
    for row_id, old in before.items():
        new = after[row_id]
        assert new.ciphertext == old.ciphertext
        assert new.nonce == old.nonce
        assert new.context == old.context
        assert new.encrypted_dek != old.encrypted_dek
        assert (old.key_version, new.key_version) == (1, 2)
    assert decrypt_all(env, table) == EXPECTED
    code, out, _ = run(["reencrypt", *targets(table), "--json"], capsys)
    assert json.loads(out)["completed"] == 0  # nothing left below the latest version


def test_rewrap_makes_no_unwrap_call(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["rotate"], capsys)
    settings = Settings.from_env(env)
    kms = MeteredProvider(load_provider(settings))
    store = open_store(table, Target("t", "v"))
    with Crypto(settings, kms=kms, audit=MemoryAuditSink()) as crypto:
        report = run_reencrypt(crypto, [store], ReencryptOptions(batch_size=40))
    store.close()
    assert report.totals.completed == ROWS
    assert kms.calls == {"describe": 1, "rewrap": 3}  # no unwrap, no wrap: the DEKs stay in the KMS


def test_retire_is_refused_while_values_need_the_version_then_works(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old_dek = stored(table)[1].encrypted_dek
    run(["rotate"], capsys)
    code, out, err = run(["retire", "--below-version", "2", *targets(table)], capsys)
    assert code == 4
    assert out == ""
    assert f"{ROWS} stored values still need a version below 2" in err
    refused = [e for e in audit_events(env) if e["event_type"] == "key.retire"]
    assert refused[-1]["result"] == "failure"
    assert refused[-1]["error_type"] == "refused"
    code, _, err = run(["retire", "--below-version", "2"], capsys)
    assert code == 4  # no targets named: nothing proves it safe
    assert "name the targets" in err
    assert run(["reencrypt", *targets(table)], capsys)[0] == 0
    code, out, _ = run(["retire", "--below-version", "2", *targets(table), "--json"], capsys)
    assert code == 0
    assert json.loads(out)["min_decryption_version"] == 2
    # The KMS itself now refuses the old wrapped DEK, while every stored value still reads.
    with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
        assert crypto.kms is not None
        (outcome,) = crypto.kms.unwrap_many([old_dek], [{}])
    assert isinstance(outcome, KeyVersionRetiredError)
    assert decrypt_all(env, table) == EXPECTED
    code, out, _ = run(["keys", *targets(table), "--json"], capsys)
    report = json.loads(out)
    assert report["min_decryption_version"] == 2
    assert [v["version"] for v in report["versions"]] == [2]
    assert report["versions"][0]["values"] == ROWS


def test_forced_retire_is_loud_and_audited(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(["rotate"], capsys)
    code, out, err = run(
        [
            "retire",
            "--below-version",
            "2",
            *targets(table),
            "--force",
            "--reason",
            "INC-7",
            "--json",
        ],
        capsys,
    )
    assert code == 0
    assert "WARNING: --force" in err
    assert f"{ROWS} stored values" in err
    assert json.loads(out)["stranded_values"] == ROWS
    event = [e for e in audit_events(env) if e["event_type"] == "key.retire"][-1]
    assert event["result"] == "success"
    assert event["reason"] == "INC-7"
    assert event["details"]["forced"] is True  # type: ignore[index]
    assert event["details"]["stranded_values"] == ROWS  # type: ignore[index]


def test_full_reencryption_changes_every_ciphertext(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored(table)
    run(["rotate"], capsys)
    code, out, err = run(["reencrypt", *targets(table), "--mode", "full", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["completed"] == ROWS
    after = stored(table)
    for row_id, old in before.items():
        new = after[row_id]
        assert new.ciphertext != old.ciphertext
        assert new.nonce != old.nonce
        assert new.encrypted_dek != old.encrypted_dek
        assert new.key_version == 2
        assert new.context == old.context
    assert decrypt_all(env, table) == EXPECTED
    code, out, _ = run(
        ["reencrypt", *targets(table), "--mode", "full", "--all-versions", "--json"], capsys
    )
    assert json.loads(out)["completed"] == ROWS  # --all-versions: even values at the latest
    batches = [e for e in audit_events(env) if e["event_type"] == "reencrypt.batch"]
    assert batches
    decrypts = [e for e in audit_events(env) if e["event_type"] == "crypto.decrypt"]
    assert all(str(e["reason"]).startswith("reencrypt full") for e in decrypts)


def test_reencrypt_dry_run_writes_nothing(
    env: dict[str, str], table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored(table)
    run(["rotate"], capsys)
    settings = Settings.from_env(env)
    store = open_store(table, Target("t", "v"))
    with Crypto(settings, kms=load_provider(settings), audit=MemoryAuditSink()) as crypto:
        report = run_reencrypt(
            crypto, [store], ReencryptOptions(dry_run=True, mode=ReencryptMode.FULL)
        )
    store.close()
    assert report.totals.completed == ROWS
    assert stored(table) == before
