"""Interoperability with the legacy engine's format, checked by an independent implementation.

The engine (``tests/interop/engine``: Rust, ``ring``, ``serde_json``, base64) writes the values
this tool must read and migrate, reads back what this tool writes in the legacy format
(``reencrypt --mode legacy``, the hybrid rollback switch), recognises ``kms_v1`` values with its
``is_encrypted``, and hashes as ``hash`` must. SQLite and PostgreSQL (text, jsonb, json).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.policy import PolicyEngine, parse_policy
from tests.integration.dbtables import (
    UserTable,
    hybrid_local_env,
    run_main,
    target_args,
)
from tests.interop.engine_tool import Engine, build_engine

MASTER_HEX = "ab" * 32
TEXTS = ["123-45-6789", "", "Zoë Ångström, 山田太郎, 🚀", "x" * 1_200_000, 'quote " and \\ and \n']


@pytest.fixture(scope="session")
def engine() -> Engine:
    return build_engine()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    return hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)


class TestEngineWritesThisToolReads:
    """What the engine wrote, in the shapes Heimdall stores, is counted and migrated here."""

    def test_engine_values_migrate(
        self,
        engine: Engine,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        written = engine.encrypt(MASTER_HEX, "default-key-v1", TEXTS)
        lenient = [  # extra fields and a null version: the engine reads them, so must this
            json.dumps({**json.loads(written[0]), "ingested_by": "etl-7"}),
            json.dumps({**json.loads(written[0]), "encryption_version": None}),
        ]
        assert [r.get("plaintext") for r in engine.decrypt(MASTER_HEX, lenient)] == [TEXTS[0]] * 2
        rows = list(enumerate([*written, *lenient], 1))
        table.insert(rows)
        code, out, err = run_main(["status", *target_args(table), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["encryption_version"]["legacy"] == len(rows)
        code, out, err = run_main(
            ["migrate", *target_args(table), "--batch-size", "3", "--json"], capsys
        )
        assert code == 0, err
        assert json.loads(out)["completed"] == len(rows)
        expected = {1 + i: text for i, text in enumerate(TEXTS)} | {6: TEXTS[0], 7: TEXTS[0]}
        stored = table.values()
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            for row_id, text in expected.items():
                assert crypto.decrypt(stored[row_id] or "", actor="t", reason="verify") == text
        # The old engine's is_encrypted recognises every migrated kms_v1 value.
        assert engine.is_encrypted([v or "" for v in stored.values()]) == [True] * len(rows)
        code, _, err = run_main(["status", *target_args(table), "--fail-if-legacy"], capsys)
        assert code == 0, err

    def test_engine_values_in_property_bags_migrate(
        self,
        engine: Engine,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        written = engine.encrypt(MASTER_HEX, "default-key-v1", TEXTS[:3])
        table.insert(
            [(i, json.dumps({"field_type": "ssn", "raw": v})) for i, v in enumerate(written, 1)]
        )
        code, _, _ = run_main(["status", *target_args(table), "--fail-if-legacy"], capsys)
        assert code == 3  # unseen without the path
        code, out, err = run_main(
            ["migrate", *target_args(table, "--json-path", "raw"), "--json"], capsys
        )
        assert code == 0, err
        assert json.loads(out)["completed"] == 3
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            for row_id, value in table.values().items():
                raw = json.loads(value or "")["raw"]
                assert engine.is_encrypted([raw]) == [True]
                text = crypto.decrypt(raw, actor="t", reason="verify")
                assert text == TEXTS[row_id - 1]


class TestThisToolWritesEngineReads:
    """This tool's legacy output decrypts in the engine with the env key alone."""

    def test_reencrypt_mode_legacy_output(
        self,
        engine: Engine,
        table: UserTable,
        env: dict[str, str],
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        # kms_v1 values written in hybrid mode (never legacy before), then rolled back.
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            sealed = crypto.encrypt_many(
                [
                    (text, {"table": table.table, "field": "ssn", "record": str(i)})
                    for i, text in enumerate(TEXTS[:3], 1)
                ]
            )
        table.insert([(i, env_.to_json()) for i, env_ in enumerate(sealed, 1)])
        code, _, err = run_main(["reencrypt", *target_args(table), "--mode", "legacy"], capsys)
        assert code == 0, err
        read = engine.decrypt(MASTER_HEX, [v or "" for v in table.values().values()])
        assert [r.get("plaintext") for r in read] == TEXTS[:3]

    def test_hybrid_rollback_switch_output(self, engine: Engine, env: dict[str, str]) -> None:
        texts = [t for t in TEXTS if len(t) < 1024 * 1024]  # new values: 1 MiB at most
        with heimdall_kms.from_env(
            {**env, "HMD_HYBRID_WRITE_FORMAT": "legacy"}, audit=MemoryAuditSink()
        ) as crypto:
            written = [e.to_json() for e in crypto.encrypt_many([(t, {}) for t in texts])]
        assert [r.get("plaintext") for r in engine.decrypt(MASTER_HEX, written)] == texts


class TestEngineChecks:
    """The engine's own checks over this tool's values."""

    def test_is_encrypted_accepts_kms_v1_and_refuses_plaintext(
        self, engine: Engine, env: dict[str, str]
    ) -> None:
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            value = crypto.encrypt("123-45-6789", context={"field": "ssn"}).to_json()
            rewrapped = crypto.rewrap_outcomes([parse(value)])[0]
        assert isinstance(rewrapped, KmsV1Envelope)
        old_style = json.dumps({k: v for k, v in json.loads(value).items() if k != "key_id"})
        assert engine.is_encrypted([value, rewrapped.to_json(), old_style, "123-45-6789"]) == [
            True,
            True,
            False,  # what issue 17 found: a kms_v1 value without key_id failed the validator
            False,
        ]

    def test_hash_is_the_engines_for_every_input(self, engine: Engine, env: dict[str, str]) -> None:
        values = ["a@b.c", "", "Zoë", "sha256:" + "ab" * 32, "[REDACTED]", "hmac:vault:v1:x"]
        with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
            policy = PolicyEngine(crypto, parse_policy({"rules": {"email": "hash"}}))
            ours = [policy.protect({"email": v})["email"] for v in values]
        assert ours == engine.hash(values)
