"""The shapes Heimdall really stores, read by the census and the jobs (issue 17, SPEC §3).

Property bags (``{"field_type": …, "raw": "<envelope>"}``) in text and jsonb columns, envelopes
as jsonb strings, plaintext before the cut-over gate: on SQLite and PostgreSQL (text, jsonb, json).
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from Crypto.Cipher import AES

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import KmsV1Envelope, LegacyEnvelope, parse
from heimdall_kms.providers.local import LocalKeyring
from tests.integration.dbtables import (
    UserTable,
    hybrid_local_env,
    run_main,
    stored_text,
    target_args,
)
from tests.legacy_data import legacy_envelope

MASTER_HEX = "ab" * 32
SHA = "sha256:" + "0" * 64
HMAC = "hmac:vault:v1:" + "A" * 43 + "="


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)


def census(table: UserTable, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run_main(["status", *target_args(table, *extra), "--json"], capsys)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def gate(table: UserTable, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code, _, err = run_main(["status", *target_args(table, *extra), "--fail-if-legacy"], capsys)
    return code, err


def bag(envelope: str, *, quoted: bool) -> str:
    """A property bag as Heimdall's ingest writes it, with odd spacing and a bystander key."""
    raw = json.dumps(envelope) if quoted else envelope
    return '{"field_type":  "ssn", "raw": ' + raw + ' ,"seen": [1, 2.50, "x"]}'


class TestCutOverGate:
    """``status --fail-if-legacy`` fails on anything but protected values."""

    def test_plaintext_fails_the_gate_unless_allowed(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        table.insert(
            [
                (1, None),
                (2, stored_text(table, SHA)),
                (3, stored_text(table, HMAC)),
                (4, stored_text(table, "[REDACTED]")),
                (5, legacy_envelope(MASTER_HEX, "123-45-6789")),
            ]
        )
        code, _, err = run_main(["migrate", *target_args(table)], capsys)
        assert code == 0, err
        assert gate(table, capsys) == (0, "")
        table.insert([(6, stored_text(table, "4111 1111 1111 1111"))])
        code, err = gate(table, capsys)
        assert code == 3
        assert "1 plaintext remain" in err
        assert "4111" not in err
        code, _, err = run_main(
            ["status", *target_args(table), "--fail-if-legacy", "--allow-plaintext"], capsys
        )
        assert code == 0, err
        assert census(table, capsys)["plaintext"] == 1

    @pytest.mark.parametrize(
        "value",
        ["sha256:4111111111111111", "sha256:" + "A" * 64, "hmac:x:y:4111111111111111"],
    )
    def test_a_companion_of_the_wrong_shape_is_plaintext(
        self,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
        value: str,
    ) -> None:
        table.insert([(1, stored_text(table, value))])
        assert census(table, capsys)["plaintext"] == 1
        assert gate(table, capsys)[0] == 3

    @pytest.mark.parametrize("quoted", [True, False], ids=["escaped", "object"])
    def test_an_envelope_inside_a_document_fails_the_gate_with_a_hint(
        self,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
        quoted: bool,
    ) -> None:
        envelope = legacy_envelope(MASTER_HEX, "123-45-6789")
        deep = json.dumps({"a": [{"b": json.dumps({"c": json.loads(envelope)})}]})
        table.insert([(1, bag(envelope, quoted=quoted)), (2, deep)])
        found = census(table, capsys)
        assert found["nested_envelope"] == 2
        assert found["nested_envelope_ids"] == ["1", "2"]
        assert found["encryption_version"] == {"kms_v1": 0, "legacy": 0}
        code, err = gate(table, capsys)
        assert code == 3
        assert "2 nested envelope remain" in err
        assert "--json-path" in err
        code, _, err = run_main(
            ["status", *target_args(table, "--fail-if-legacy", "--allow-plaintext")], capsys
        )
        assert code == 3, err  # a hidden envelope is not plaintext someone may allow

    def test_an_envelope_stored_as_a_json_string(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # to_jsonb(text): read without the option on jsonb; on a text column it is a quoted
        # document the census cannot read as an envelope, so it is reported.
        envelope = legacy_envelope(MASTER_HEX, "123-45-6789")
        table.insert([(i, json.dumps(envelope)) for i in range(1, 4)])
        found = census(table, capsys)
        if not table.json_column:
            assert found["nested_envelope"] == 3
            assert gate(table, capsys)[0] == 3
            return
        assert found["encryption_version"]["legacy"] == 3
        code, out, err = run_main(["migrate", *target_args(table), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["completed"] == 3
        for row_id, value in table.values().items():
            inner = json.loads(value or "")
            assert isinstance(inner, str)  # still a jsonb string, now of a kms_v1 envelope
            assert parse(inner).context == {  # type: ignore[union-attr]
                "table": table.table,
                "field": "ssn",
                "record": str(row_id),
            }
        assert gate(table, capsys) == (0, "")


class TestJsonPath:
    """``--json-path``: the envelope inside a document, the rest of the document kept."""

    @pytest.mark.parametrize("quoted", [True, False], ids=["escaped", "object"])
    def test_migrate_status_reencrypt_retire_at_a_path(
        self,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
        quoted: bool,
    ) -> None:
        texts = {i: f"{i:03d}-45-6789" for i in range(1, 31)}
        table.insert(
            [(i, bag(legacy_envelope(MASTER_HEX, t), quoted=quoted)) for i, t in texts.items()]
        )
        table.insert([(40, '{"field_type": "note"}'), (41, None)])
        before = table.values()
        path = ("--json-path", "raw")
        assert census(table, capsys, *path)["encryption_version"]["legacy"] == 30
        code, out, err = run_main(
            ["migrate", *target_args(table, *path), "--batch-size", "7", "--json"], capsys
        )
        assert code == 0, err
        summary = json.loads(out)
        assert (summary["completed"], summary["failed"]) == (30, 0)
        after = table.values()
        assert after[40] == before[40]
        assert after[41] is None
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            for row_id, text in texts.items():
                envelope = self._kept_document(
                    table, before[row_id] or "", after[row_id] or "", quoted
                )
                assert isinstance(envelope, KmsV1Envelope)
                assert envelope.context == {
                    "table": table.table,
                    "field": "ssn",
                    "path": "raw",
                    "record": str(row_id),
                }
                assert crypto.decrypt(envelope, actor="t", reason="verify") == text
        found = census(table, capsys, *path)
        assert found["encryption_version"] == {"kms_v1": 30, "legacy": 0}
        assert found["not_envelope"]["absent"] == 1
        assert gate(table, capsys, *path) == (0, "")
        assert gate(table, capsys)[0] == 3  # without the path the envelopes are unseen
        code, _, err = run_main(["rotate"], capsys)
        assert code == 0, err
        code, out, err = run_main(["retire", "--below-version", "2", *target_args(table)], capsys)
        assert code == 4
        assert "inside JSON documents" in err
        code, out, err = run_main(["reencrypt", *target_args(table, *path), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["completed"] == 30
        rewrapped = table.values()
        for row_id in texts:
            envelope = self._kept_document(
                table, before[row_id] or "", rewrapped[row_id] or "", quoted
            )
            assert isinstance(envelope, KmsV1Envelope)
            assert envelope.key_version == 2
        code, _, err = run_main(
            ["retire", "--below-version", "2", *target_args(table, *path)], capsys
        )
        assert code == 0, err

    @staticmethod
    def _kept_document(
        table: UserTable, old: str, new: str, quoted: bool
    ) -> KmsV1Envelope | LegacyEnvelope:
        """The envelope at ``raw`` of ``new``, after checking the rest of ``old`` is kept."""
        old_doc, new_doc = json.loads(old), json.loads(new)
        raw = new_doc.pop("raw")
        del old_doc["raw"]
        assert new_doc == old_doc
        assert isinstance(raw, str) is quoted
        written = json.loads(raw) if quoted else raw
        if written.get("encryption_version") == "kms_v1":
            # Every kms_v1 value names its key for the legacy engine's is_encrypted.
            assert written["key_id"] == f"local:heimdall-pii:v{written['key_version']}"
        if not table.json_column:
            # Text columns: byte for byte, apart from the value at the path.
            assert new.startswith('{"field_type":  "ssn", "raw": ')
            assert new.endswith(' ,"seen": [1, 2.50, "x"]}')
        return parse(raw)

    def test_targets_file_json_path(
        self,
        table: UserTable,
        env: dict[str, str],
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table.insert([(1, bag(legacy_envelope(MASTER_HEX, "x"), quoted=True))])
        targets = tmp_path / "targets.toml"
        targets.write_text(
            f'database = "{table.url}"\n'
            f'[[targets]]\ntable = "{table.table}"\ncolumn = "ssn"\njson_path = "raw"\n'
        )
        code, out, err = run_main(["migrate", "--targets", str(targets), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["targets"][0]["target"] == f"{table.table}.ssn:raw"
        code, _, err = run_main(["status", "--targets", str(targets), "--fail-if-legacy"], capsys)
        assert code == 0, err

    def test_a_row_whose_document_is_ambiguous_fails_by_id(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        envelope = legacy_envelope(MASTER_HEX, "x")
        if table.backend == "postgres-jsonb":
            pytest.skip("jsonb keeps one of two equal keys: the ambiguity cannot be stored")
        table.insert(
            [(1, '{"raw": ' + envelope + ', "raw": "plain"}'), (2, bag(envelope, quoted=True))]
        )
        code, out, _ = run_main(
            ["migrate", *target_args(table, "--json-path", "raw"), "--json"], capsys
        )
        assert code == 3
        summary = json.loads(out)
        assert summary["completed"] == 1
        assert [f["id"] for f in summary["failures"]] == ["1"]


class TestLenientLegacy:
    """Legacy envelopes the engine reads (SPEC §4.1) are counted and migrated here too."""

    def test_lenient_variants_migrate(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        variants = [
            {"created_at": "2023-01-01T00:00:00Z"},
            {"encryption_version": None},
            {"algorithm": "aes-256-gcm"},
            {"ingest": {"source": "batch-7"}},
        ]
        rows = []
        for i, extra in enumerate(variants, 1):
            rows.append(
                (i, json.dumps({**json.loads(legacy_envelope(MASTER_HEX, f"v{i}")), **extra}))
            )
        table.insert(rows)
        assert census(table, capsys)["encryption_version"]["legacy"] == len(variants)
        code, out, err = run_main(["migrate", *target_args(table), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["completed"] == len(variants)
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            for row_id, value in table.values().items():
                envelope = parse(value or "")
                assert isinstance(envelope, KmsV1Envelope)
                assert crypto.decrypt(envelope, actor="t", reason="verify") == f"v{row_id}"
        assert gate(table, capsys) == (0, "")


class TestSize:
    """Whatever the engine wrote is migrated; what cannot be handled fails its row only."""

    def test_a_large_value_in_the_middle_of_a_table(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        big = "x" * 1_200_000 + "-end"
        texts = {i: big if i == 10 else f"v{i}" for i in range(1, 21)}
        table.insert([(i, legacy_envelope(MASTER_HEX, t)) for i, t in texts.items()])
        assert census(table, capsys)["encryption_version"]["legacy"] == 20
        code, out, err = run_main(
            ["migrate", *target_args(table), "--batch-size", "4", "--json"], capsys
        )
        assert code == 0, err
        assert json.loads(out)["completed"] == 20
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            value = table.values()[10] or ""
            assert crypto.decrypt(value, actor="t", reason="verify") == big
        code, _, err = run_main(["rotate"], capsys)
        assert code == 0, err
        code, out, err = run_main(
            ["reencrypt", *target_args(table), "--mode", "full", "--json"], capsys
        )
        assert code == 0, err
        assert json.loads(out)["completed"] == 20
        assert gate(table, capsys) == (0, "")

    def test_a_row_that_cannot_be_sealed_fails_by_id_and_the_run_goes_on(
        self, tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A record id longer than a context value may be: that row fails, the others migrate.
        path = tmp_path / "keys.db"
        long_id = "k" * 2000
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (id TEXT PRIMARY KEY, ssn TEXT)")
            db.executemany(
                "INSERT INTO t VALUES (?, ?)",
                [(k, legacy_envelope(MASTER_HEX, k[:5])) for k in ("a", long_id, "z")],
            )
        args = ["--database", f"sqlite:///{path}", "--table", "t", "--column", "ssn"]
        code, out, _ = run_main(["migrate", *args, "--json"], capsys)
        assert code == 3
        summary = json.loads(out)
        assert summary["completed"] == 2
        assert summary["stopped_by"] is None
        assert [(f["id"], f["error_type"]) for f in summary["failures"]] == [
            (long_id, "invalid_input")
        ]


def open_legacy(key_hex: str, stored_value: str) -> str:
    """Decrypt a legacy envelope with the env key alone, as the old engine does (pycryptodome)."""
    obj = json.loads(stored_value)
    sealed = base64.b64decode(obj["ciphertext"])
    cipher = AES.new(bytes.fromhex(key_hex), AES.MODE_GCM, nonce=base64.b64decode(obj["nonce"]))
    return cipher.decrypt_and_verify(sealed[:-16], sealed[-16:]).decode("utf-8")


class TestLegacyMode:
    """``reencrypt --mode legacy``: every kms_v1 value back in the format the old engine reads."""

    def test_rollback_to_the_old_engine(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        texts = {i: f"{i:03d}-00-1111" for i in range(1, 13)}
        table.insert([(i, legacy_envelope(MASTER_HEX, t)) for i, t in texts.items()])
        table.insert([(50, stored_text(table, "[REDACTED]")), (51, None)])
        code, _, err = run_main(["migrate", *target_args(table)], capsys)
        assert code == 0, err
        migrated = table.values()
        code, out, err = run_main(
            ["reencrypt", *target_args(table), "--mode", "legacy", "--batch-size", "5", "--json"],
            capsys,
        )
        assert code == 0, err
        summary = json.loads(out)
        assert (summary["job"], summary["completed"], summary["skipped"]) == (
            "reencrypt-legacy",
            12,
            2,
        )
        rolled_back = table.values()
        for row_id, text in texts.items():
            value = rolled_back[row_id] or ""
            assert isinstance(parse(value), LegacyEnvelope)
            assert open_legacy(MASTER_HEX, value) == text  # the env key alone reads it
        assert rolled_back[50] == migrated[50]
        # Resumable and idempotent: a rerun finds nothing left to do.
        code, out, err = run_main(
            ["reencrypt", *target_args(table), "--mode", "legacy", "--json"], capsys
        )
        assert code == 0, err
        assert json.loads(out)["completed"] == 0
        # Journaled: the run can be undone, back to the kms_v1 values.
        code, _, err = run_main(
            ["migrate", *target_args(table), "--rollback", summary["run_id"], "--json"], capsys
        )
        assert code == 0, err
        assert table.values() == migrated
        audit = Path(env["HMD_AUDIT_LOG"]).read_text()
        assert all(text not in audit for text in texts.values())

    def test_refused_outside_hybrid_mode(
        self,
        table: UserTable,
        env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        monkeypatch.setenv("HMD_ENCRYPTION_MODE", "kms")
        monkeypatch.delenv("HMD_PII_MASTER_KEY")
        code, _, err = run_main(["reencrypt", *target_args(table), "--mode", "legacy"], capsys)
        assert code == 78
        assert "HMD_ENCRYPTION_MODE: the rollback to the legacy format needs hybrid" in err


class TestEnvelopesNobodyReads:
    """An envelope behind a BOM or a label is no reader's envelope and nobody's plaintext: the
    gates report it (unparseable, by id), also where plaintext is allowed."""

    def test_the_cut_over_gate_and_the_compliance_report(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        envelope = legacy_envelope(MASTER_HEX, "123-45-6789")
        table.insert(
            [
                (1, stored_text(table, "\ufeff" + envelope)),
                (2, stored_text(table, "enc:" + envelope)),
                (3, stored_text(table, "a note")),
            ]
        )
        found = census(table, capsys)
        assert (found["unparseable"], found["plaintext"]) == (2, 1)
        assert found["unparseable_ids"] == ["1", "2"]
        code, _, err = run_main(
            ["status", *target_args(table, "--fail-if-legacy", "--allow-plaintext")], capsys
        )
        assert code == 3
        assert "2 unparseable remain" in err
        _, out, _ = run_main(["compliance", "report", *target_args(table), "--json"], capsys)
        evidence = json.loads(out)["evidence"]["no_env_key_values"]
        assert (evidence["holds"], evidence["unparseable"]) == (False, 2)
        code, out, _ = run_main(["migrate", *target_args(table), "--json"], capsys)
        assert code == 3  # failed by id, never overwritten
        assert [f["id"] for f in json.loads(out)["failures"]] == ["1", "2"]

    def test_retire_refuses_while_one_needs_the_version(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        context = {"table": table.table, "field": "ssn", "record": "1"}
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            sealed = crypto.encrypt("123-45-6789", context=context).to_json()
        table.insert([(1, stored_text(table, "\ufeff" + sealed))])
        code, _, err = run_main(["rotate"], capsys)
        assert code == 0, err
        code, _, err = run_main(["retire", "--below-version", "2", *target_args(table)], capsys)
        assert code == 4, err  # it was retired, and the value could never be read again
        assert "1 damaged envelopes" in err


class TestWhatTheJobsLookAt:
    """The jobs' SQL pre-filter admits every value the census reads as an envelope or reports
    as a damaged one: a job skipped them without looking and said "completed" (exit 0) while
    the census counted them, and no run could ever migrate them."""

    def test_escaped_keys_another_version(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        legacy = legacy_envelope(MASTER_HEX, "123-45-6789")
        escaped = legacy.replace('"ciphertext"', '"cipher\\u0074ext"')  # any JSON reader's
        table.insert(
            [
                (1, stored_text(table, escaped)),
                (2, stored_text(table, '{"encryption_version": "kms_v2", "payload": "x"}')),
            ]
        )
        code, out, err = run_main(["migrate", *target_args(table), "--json"], capsys)
        assert code == 3, err
        summary = json.loads(out)
        assert summary["completed"] == 1
        assert [f["id"] for f in summary["failures"]] == ["2"]
        code, err = gate(table, capsys)
        assert "1 unparseable remain" in err  # and no legacy
        context = {"table": table.table, "field": "ssn", "record": "1"}
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            sealed = crypto.encrypt("123-45-6789", context=context).to_json()
        table.set(1, stored_text(table, sealed.replace('"kms_v1"', '"kms\\u005fv1"', 1)))
        table.set(2, None)
        code, _, err = run_main(["rotate"], capsys)
        assert code == 0, err
        code, out, err = run_main(["reencrypt", *target_args(table), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["completed"] == 1
        assert census(table, capsys)["key_version"] == {"2": 1}

    def test_an_envelope_stored_as_a_sqlite_blob_fails_its_row(
        self, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # The census counts it (legacy); migrate ruled it out unread (SQLite's LIKE never
        # matches a BLOB) and said completed, and could not have replaced bytes with text.
        legacy = legacy_envelope(MASTER_HEX, "123-45-6789")
        path = tmp_path / "blobs.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, ssn BLOB)")
            db.executemany("INSERT INTO t VALUES (?, ?)", [(1, legacy.encode()), (2, legacy)])
        args = ["--database", f"sqlite:///{path}", "--table", "t", "--column", "ssn"]
        code, out, err = run_main(["migrate", *args, "--json"], capsys)
        assert code == 3, err
        summary = json.loads(out)
        assert (summary["completed"], summary["skipped"]) == (1, 0)
        assert [(f["id"], "BLOB" in f["message"]) for f in summary["failures"]] == [("1", True)]
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT ssn FROM t WHERE id = 1").fetchone() == (legacy.encode(),)
        code, _, err = run_main(["status", *args, "--fail-if-legacy"], capsys)
        assert (code, "1 legacy remain" in err) == (3, True)


class TestAnotherKey:
    """A ``kms_v1`` value sealed by a key this deployment does not use cannot be read here
    (decrypt refuses it): the cut-over gate counts it as it counts one needing a retired
    version, instead of as a protected value."""

    def test_fails_the_gate(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        LocalKeyring(Path(env["HMD_LOCAL_KEYRING"])).ensure_key("other-key")
        context = {"table": table.table, "field": "ssn", "record": "1"}
        other = {**env, "HMD_KMS_KEY_ID": "other-key"}
        with heimdall_kms.from_env(other, audit=MemoryAuditSink()) as crypto:
            sealed = crypto.encrypt("123-45-6789", context=context).to_json()
        table.insert([(1, stored_text(table, sealed))])
        code, err = gate(table, capsys)
        assert code == 3
        assert "1 sealed by another key remain" in err
        found = census(table, capsys)
        assert found["encryption_version"]["kms_v1"] == 1
        assert found["sealed_by_another_key"] == 1
        assert found["targets"][0]["sealed_by_another_key"] == 1
        code, out, err = run_main(["status", *target_args(table)], capsys)
        assert code == 0, err
        assert "sealed by another key than this deployment's (unreadable here): 1" in out
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            mine = crypto.encrypt("123-45-6789", context=context).to_json()
        table.set(1, stored_text(table, mine))
        assert gate(table, capsys) == (0, "")


class TestComplianceEvidence:
    """The compliance report's census does not call unseen envelopes "no env-key values"."""

    def test_nested_envelopes_are_not_evidence_of_none(
        self, table: UserTable, env: dict[str, str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        table.insert([(1, bag(legacy_envelope(MASTER_HEX, "x"), quoted=True))])
        _, out, err = run_main(["compliance", "report", *target_args(table), "--json"], capsys)
        found = json.loads(out)["evidence"]["no_env_key_values"]
        assert (found["holds"], found["legacy"], found["nested_envelope"]) == (False, 0, 1), err
        _, out, _ = run_main(
            ["compliance", "report", *target_args(table, "--json-path", "raw"), "--json"], capsys
        )
        found = json.loads(out)["evidence"]["no_env_key_values"]
        assert (found["holds"], found["legacy"], found["nested_envelope"]) == (False, 1, 0)
