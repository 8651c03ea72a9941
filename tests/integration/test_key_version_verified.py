"""An envelope's ``key_version`` is checked against its wrapped DEK (issue 15 item 4, SPEC §4.2).

A row edited to say ``key_version: 2`` over a v1 DEK is refused on decrypt, blocks the retire
guard, and cannot pass as a v2 read in the audit log. Local provider and a live OpenBao.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.cli import main
from heimdall_kms.envelope import parse
from heimdall_kms.errors import MalformedEnvelopeError
from heimdall_kms.wrapped_key import format_wrapped, parse_wrapped, wrapped_by
from tests.integration.sealed_table import SealedTable, sealed_table
from tests.servers import run_cli

ROWS = 12
FORGED = 7


@dataclass
class Forged:
    env: dict[str, str]
    url: str
    db: Path
    log: Path
    text: str  # the edited row's stored value

    def targets(self) -> list[str]:
        return ["--database", self.url, "--table", "t", "--column", "v"]


@pytest.fixture(params=["local", "vault"])
def forged(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Forged]:
    """Every value rewrapped to v2, except row 7: its v1 envelope, edited to say v2."""
    with sealed_table(request.param, tmp_path, monkeypatch, rows=ROWS, prefix="ssn-") as t:
        yield _forge(t)


def _forge(t: SealedTable) -> Forged:
    env, db, log, sealed, url = t.env, t.db, t.log, t.sealed, t.url
    assert main(["rotate"]) == 0
    assert main(["reencrypt", "--database", url, "--table", "t", "--column", "v"]) == 0
    old = json.loads(sealed[FORGED].to_json())
    assert old["key_version"] == 1
    # A careful forger keeps key_id (which names the version too) consistent with the edit.
    text = json.dumps({**old, "key_version": 2, "key_id": old["key_id"][: -len("v1")] + "v2"})
    with sqlite3.connect(db) as c:
        c.execute("UPDATE t SET v = ? WHERE id = ?", (text, FORGED))
    return Forged(env, url, db, log, text)


class TestForgedKeyVersion:
    def test_decrypt_refuses_it(self, forged: Forged) -> None:
        """Exit 65 (malformed), no plaintext."""
        done = run_cli(["decrypt", "--actor", "a", "--reason", "r"], forged.env, forged.text)
        out, err = done.stdout.decode(), done.stderr.decode()
        assert done.returncode == 65
        assert "ssn-" not in out + err
        assert "key_version" in err

    def test_retire_guard_refuses_while_it_is_stored(
        self, forged: Forged, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The census cannot believe v2, so retiring v1 is refused, and the KMS keeps v1."""
        capsys.readouterr()
        assert main(["retire", "--below-version", "2", *forged.targets()]) == 4
        assert "1 damaged envelopes" in capsys.readouterr().err
        assert main(["status", *forged.targets(), "--json"]) == 0
        census = json.loads(capsys.readouterr().out)
        assert census["unparseable"] == 1 and census["unparseable_ids"] == [str(FORGED)]
        assert census["key_version"] == {"2": ROWS - 1}
        with heimdall_kms.from_env(forged.env, audit=MemoryAuditSink()) as crypto:
            assert crypto.kms is not None
            assert crypto.kms.describe().min_decryption_version == 1

    def test_audit_never_records_it_as_a_v2_read(
        self, forged: Forged, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A read of the row is a failure, so `--key-version 2` shows no successful read of it."""
        with heimdall_kms.from_env(forged.env) as crypto:
            (outcome,) = crypto.decrypt_outcomes([forged.text], actor="reader", reason="r")
        assert isinstance(outcome, MalformedEnvelopeError)
        capsys.readouterr()
        main(
            [
                "audit",
                "query",
                str(forged.log),
                "--event-type",
                "crypto.decrypt",
                "--actor",
                "reader",
            ]
        )
        (event,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert (event["result"], event["error_type"]) == ("failure", "malformed_envelope")
        assert event.get("key_version") != 2


class TestWrappedKeyCodec:
    @pytest.mark.parametrize(
        "text",
        [
            "vault:v3:AAAA",
            "local:v1:d3JhcA==",
            "aws:v12:Zm9v",
            "gcp:v2:YmFy",
            "azure:v4:id:A256KW:x",
        ],
    )
    def test_round_trip(self, text: str) -> None:
        form = parse_wrapped(text)
        assert form is not None
        assert format_wrapped(form.provider, form.version, form.body) == text

    @pytest.mark.parametrize(
        "text", ["vault:v0:AAAA", "vault:3:AAAA", "vault:v3:", "Vault:v3:AA", "vault:v3:a b", ""]
    )
    def test_not_the_form(self, text: str) -> None:
        assert parse_wrapped(text) is None

    @pytest.mark.parametrize(
        "text",
        [
            "vault:v3:AAAA",
            "vault:v3:AA==",
            "vault:v0:AAAA",
            "vault:v3:",
            "vault:v3:a b",
            "vault:v3:AA-_",
            "local:v3:AAAA",
            "vault:v1234567890:AAAA",
            "",
        ],
    )
    def test_wrapped_by_asks_what_parse_wrapped_and_a_body_check_ask(self, text: str) -> None:
        body = r"[A-Za-z0-9+/=]+"
        form = parse_wrapped(text)
        expected = form is not None and form.provider == "vault" and re.fullmatch(body, form.body)
        assert (wrapped_by("vault", body).fullmatch(text) is not None) == bool(expected)

    def test_repr_names_no_ciphertext(self) -> None:
        form = parse_wrapped("vault:v3:c2VjcmV0LWtleQ==")
        assert "c2VjcmV0" not in repr(form)

    @pytest.mark.parametrize(
        ("dek", "error"),
        [("local:v2:d3JhcA==", "key_version"), ("vault:v1:d3JhcA==", "encrypted_dek")],
    )
    def test_envelope_parse_checks_the_version_and_provider(self, dek: str, error: str) -> None:
        envelope = {
            "encryption_version": "kms_v1",
            "provider": "local",
            "key_identifier": "k",
            "key_version": 1,
            "algorithm": "AES-256-GCM",
            "ciphertext": "AAAAAAAAAAAAAAAAAAAAAA==",
            "nonce": "AAAAAAAAAAAAAAAA",
            "encrypted_dek": dek,
            "context": {},
            "encryption_timestamp": "2026-01-01T00:00:00.000000Z",
        }
        with pytest.raises(MalformedEnvelopeError, match=error):
            parse(envelope)
