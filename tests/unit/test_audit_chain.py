"""The audit log's hash chain: every kind of tampering is found and named, appends from
several writers keep one chain, and a sink that cannot write stops the operation."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result, StreamAuditSink
from heimdall_kms.audit.query import AuditFilter, query
from heimdall_kms.audit.verify import verify
from heimdall_kms.cli import main
from heimdall_kms.errors import AuditCrashError, AuditTamperedError, AuditWriteError


def event(n: int, kind: EventType = EventType.DECRYPT, actor: str = "alice") -> AuditEvent:
    return AuditEvent(
        kind,
        actor,
        f"req-{n}",
        Result.SUCCESS,
        timestamp=f"2026-11-28T10:{n:02d}:00Z",
        field_identifier="ssn",
        key_version=1 + n % 2,
        reason="ticket",
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    sink = FileAuditSink(path)
    for start in range(0, 12, 4):  # three batches
        sink.emit([event(n) for n in range(start, start + 4)])
    sink.close()
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def broken(path: Path) -> AuditTamperedError:
    with pytest.raises(AuditTamperedError) as caught:
        verify(path)
    return caught.value


def test_intact_chain(log: Path) -> None:
    result = verify(log, require_checkpoint=True)
    assert result.lines == 12
    assert result.checkpoint == "matches"
    first = json.loads(lines(log)[0])
    assert first["seq"] == 1
    assert first["prev_hash"] == "0" * 64


def test_edited_line(log: Path) -> None:
    content = lines(log)
    content[4] = content[4].replace('"actor":"alice"', '"actor":"mallory"')
    log.write_text("".join(content))
    error = broken(log)
    assert error.line == 5
    assert "edited" in str(error)


def test_edited_line_with_recomputed_hash_breaks_the_next_link(log: Path) -> None:
    from heimdall_kms.audit.chain import seal_line

    content = lines(log)
    doc = json.loads(content[4])
    doc["actor"] = "mallory"
    body = {k: v for k, v in doc.items() if k not in ("seq", "prev_hash", "hash")}
    content[4], _ = seal_line(body, doc["seq"], doc["prev_hash"])
    log.write_text("".join(content))
    error = broken(log)
    assert error.line == 6
    assert "does not link" in str(error)


def test_removed_line(log: Path) -> None:
    content = lines(log)
    del content[6]
    log.write_text("".join(content))
    error = broken(log)
    assert error.line == 7
    assert "1 line(s) removed" in str(error)


def test_reordered_lines(log: Path) -> None:
    content = lines(log)
    content[3], content[4] = content[4], content[3]
    log.write_text("".join(content))
    error = broken(log)
    assert error.line == 4
    assert "removed" in str(error) or "reordered" in str(error)


def test_duplicated_line(log: Path) -> None:
    content = lines(log)
    content.insert(5, content[4])
    log.write_text("".join(content))
    assert "reordered or duplicated" in str(broken(log))


def test_truncated_end_is_caught_by_the_checkpoint(log: Path) -> None:
    log.write_text("".join(lines(log)[:9]))
    error = broken(log)
    assert "3 line(s) truncated from the end" in str(error)


def test_a_checkpoint_left_behind_is_named_and_the_next_batch_heals_it(log: Path) -> None:
    # What a power loss can leave: the log on disk (it is synced), the checkpoint not yet.
    eighth = json.loads(lines(log)[7])
    head = log.with_name(log.name + ".head")
    head.write_text(json.dumps({"seq": 8, "hash": eighth["hash"]}))
    with pytest.raises(AuditCrashError) as caught:
        verify(log)
    assert "4 line(s) after the checkpoint at seq 8" in str(caught.value)
    sink = FileAuditSink(log)
    sink.emit([event(20)])
    sink.close()
    assert verify(log, require_checkpoint=True).lines == 13


def test_the_checkpoint_is_one_fixed_size_record_overwritten_in_place(log: Path) -> None:
    head = log.with_name(log.name + ".head")
    before = head.stat().st_ino
    sink = FileAuditSink(log)
    sink.emit([event(20)])
    sink.emit([event(21)])
    sink.close()
    assert head.stat().st_ino == before
    assert head.stat().st_size == 128
    assert json.loads(head.read_text())["seq"] == 14


def test_a_replaced_checkpoint_file_is_followed(log: Path) -> None:
    head = log.with_name(log.name + ".head")
    sink = FileAuditSink(log)
    sink.emit([event(20)])
    replacement = head.with_name("other")
    replacement.write_text(head.read_text())
    replacement.replace(head)  # another writer's (or an operator's) rename
    sink.emit([event(21)])
    sink.close()
    assert verify(log, require_checkpoint=True).lines == 14


def test_verifying_a_log_in_use_sees_no_tampering(log: Path) -> None:
    # A writer keeps appending batches while verify walks the log: every verify must see a
    # consistent snapshot (no false "truncated" or "behind"), and the final one everything.
    stop = threading.Event()

    def writer() -> None:
        sink = FileAuditSink(log)
        n = 100
        while not stop.is_set():
            sink.emit([event(n % 60), event((n + 1) % 60)])
            n += 2
        sink.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = [verify(log, require_checkpoint=True).lines for _ in range(30)]
    finally:
        stop.set()
        thread.join()
    assert seen == sorted(seen)
    assert seen[-1] > 12  # the writer really wrote during the checks
    assert verify(log, require_checkpoint=True).lines >= seen[-1]


def test_cut_mid_line(log: Path) -> None:
    log.write_text("".join(lines(log))[:-20])
    error = broken(log)
    assert error.line == 12
    assert "cut off mid-line" in str(error)


def test_a_partial_last_line_stops_further_writes(log: Path) -> None:
    log.write_text("".join(lines(log))[:-20])
    sink = FileAuditSink(log)
    with pytest.raises(AuditWriteError, match="partial line"):
        sink.emit([event(99)])


def test_two_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    first, second = FileAuditSink(path), FileAuditSink(path)
    for n in range(10):
        (first if n % 3 else second).emit([event(n), event(n + 100)])
    assert verify(path).lines == 20


def test_processes_append_to_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "shared.log"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result\n"
        "sink = FileAuditSink(Path(sys.argv[1]))\n"
        "for n in range(50):\n"
        "    sink.emit([AuditEvent(EventType.ENCRYPT, 'p', str(n), Result.SUCCESS)] * 3)\n"
    )
    workers = [subprocess.Popen([sys.executable, "-c", code, str(path)]) for _ in range(4)]
    assert [w.wait(timeout=60) for w in workers] == [0, 0, 0, 0]
    assert verify(path, require_checkpoint=True).lines == 600


def test_stream_sink_is_chained(tmp_path: Path) -> None:
    stream = io.StringIO()
    sink = StreamAuditSink(stream)
    sink.emit([event(1), event(2)])
    sink.emit([event(3)])
    path = tmp_path / "stderr.log"
    path.write_text(stream.getvalue())
    assert verify(path).lines == 3


def test_unwritable_sink_fails_closed() -> None:
    sink = FileAuditSink(Path("/dev/full"))
    with pytest.raises(AuditWriteError):
        sink.emit([event(1)])


def test_query(log: Path) -> None:
    found = list(query(log, AuditFilter(event_types=["crypto.decrypt"], key_version=2)))
    assert [e["request_id"] for e in found] == [f"req-{n}" for n in range(1, 12, 2)]
    from datetime import datetime

    window = AuditFilter(
        since=datetime.fromisoformat("2026-11-28T10:03:00Z"),
        until=datetime.fromisoformat("2026-11-28T10:05:00Z"),
    )
    assert [e["request_id"] for e in query(log, window)] == ["req-3", "req-4", "req-5"]
    assert list(query(log, AuditFilter(actor="nobody"))) == []


DECRYPT_EVENT = {
    "event_type": "crypto.decrypt",
    "actor": "alice",
    "field_identifier": "ssn",
    "key_version": 2,
    "result": "success",
    "timestamp": "2026-11-28T10:04:00Z",
}


class TestAuditFilter:
    def test_every_asked_key_must_match(self) -> None:
        """Each asked value must equal the event's; one mismatch is enough to leave it out."""
        assert AuditFilter(actor="alice", field="ssn", key_version=2, result="success").matches(
            DECRYPT_EVENT
        )
        assert not AuditFilter(field="email").matches(DECRYPT_EVENT)
        assert not AuditFilter(result="failure").matches(DECRYPT_EVENT)
        assert not AuditFilter(actor="alice", key_version=1).matches(DECRYPT_EVENT)

    def test_a_window_leaves_out_an_event_without_a_readable_time(self) -> None:
        """A time window cannot vouch for an event whose timestamp does not parse."""
        from datetime import datetime

        window = AuditFilter(since=datetime.fromisoformat("2026-11-28T10:00:00Z"))
        assert window.matches(DECRYPT_EVENT)
        assert not window.matches({**DECRYPT_EVENT, "timestamp": "yesterday"})
        assert AuditFilter().matches({**DECRYPT_EVENT, "timestamp": "yesterday"})


def test_cli(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] == "intact"
    assert (
        main(
            [
                "audit",
                "query",
                str(log),
                "--event-type",
                "crypto.decrypt",
                "--since",
                "2026-11-28T10:10:00Z",
                "--count",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == "2"
    content = lines(log)
    del content[2]
    log.write_text("".join(content))
    assert main(["audit", "verify", str(log)]) == 5
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["heimdall-kms: error: line 3: seq 4 follows seq 2: 1 line(s) removed before it"]
    assert main(["audit", "query", str(log), "--since", "yesterday"]) == 2


def test_cli_operation_stops_when_the_audit_log_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HMD_ENCRYPTION_MODE", "legacy")
    monkeypatch.setenv("HMD_PII_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("HMD_AUDIT_LOG", "/dev/full")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"123-45-6789")))
    assert main(["encrypt", "--field", "ssn"]) == 74
    out, err = capsys.readouterr()
    assert out == ""  # no envelope: the operation did not happen
    assert err.startswith("heimdall-kms: error: cannot write audit log /dev/full")
