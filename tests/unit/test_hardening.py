"""Issue 15's low-severity findings, one class per unit: each a short fix and its proof."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result
from heimdall_kms.cli import main

TAMPERED = 5


def _sealed_log(path: Path, lines: int = 3) -> list[str]:
    sink = FileAuditSink(path)
    for n in range(lines):
        sink.emit([AuditEvent(EventType.DECRYPT, "alice", f"req-{n}", Result.SUCCESS)])
    sink.close()
    return path.read_text(encoding="utf-8").splitlines(keepends=True)


class TestDrillWorkdir:
    def test_a_non_empty_workdir_is_refused_and_left_as_it_was(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in list(os.environ):
            if name.startswith("HMD_"):
                monkeypatch.delenv(name)
        precious = tmp_path / "audit.log"
        precious.write_text("someone's audit log\n")
        code = main(["drill", "rotation", "--workdir", str(tmp_path), "--records", "5"])
        err = capsys.readouterr().err
        assert code != 0 and err.count("\n") == 1 and "not empty" in err
        assert precious.read_text() == "someone's audit log\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log"]


class TestAuditVerifyRefusesOddLines:
    @pytest.mark.parametrize(
        ("forge", "says"),
        [
            # The same key twice: json keeps the last, so the hash still matches.
            (lambda line: line.replace('{"actor":', '{"actor":"mallory","actor":', 1), "twice"),
            (lambda line: '{"actor":"\\ud800","seq":2,"prev_hash":"0","hash":"0"}\n', "Unicode"),
            (lambda line: '{"a":' * 100_000 + "1" + "}" * 100_000 + "\n", "JSON"),
            (lambda line: '{"seq":2,"prev_hash":"\\u00e9","hash":"0","x":1}\n', "Unicode"),
        ],
    )
    def test_a_forged_line_is_reported_as_damaged_with_its_number(
        self,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        forge: Callable[[str], str],
        says: str,
    ) -> None:
        log = tmp_path / "audit.log"
        lines = _sealed_log(log)
        lines[1] = forge(lines[1])
        log.write_text("".join(lines), encoding="utf-8")
        code = main(["audit", "verify", str(log)])
        err = capsys.readouterr().err
        assert code == TAMPERED, err
        assert "line 2" in err and says in err
        assert "Traceback" not in err
