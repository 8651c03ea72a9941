"""The syslog copy of signed checkpoints (HMD_AUDIT_SYSLOG, issue 24 item 2): real sockets on
this machine receive what the tool sends, and a receiver that never reads costs no operation
any time."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import heimdall_kms
from heimdall_kms.audit.checkpoint import checkpoints_path, new_checkpoint, parse_checkpoint
from heimdall_kms.audit.signers import LocalSigner
from heimdall_kms.audit.syslog_anchor import SyslogAnchor
from heimdall_kms.audit_settings import (
    SyslogScheme,
    SyslogTarget,
    parse_syslog_url,
    read_anchoring,
)
from heimdall_kms.errors import ConfigurationError
from heimdall_kms.metrics import default_metrics
from heimdall_kms.providers.local import LocalKeyring

# <PRI> = facility * 8 + severity: auth (4) and info (6) by default, local3 (19) when asked.
MESSAGE = re.compile(rb"<(\d+)>heimdall-kms: (\{.*\})")


def _env(tmp_path: Path, syslog: str, **extra: str) -> dict[str, str]:
    keyring = tmp_path / "keyring.json"
    LocalKeyring(keyring).ensure_key("pii")
    return {
        "HMD_ENCRYPTION_MODE": "kms",
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(keyring),
        "HMD_KMS_KEY_ID": "pii",
        "HMD_AUDIT_SIGNING_KEY": "pii-audit",
        "HMD_AUDIT_LOG": str(tmp_path / "audit.log"),
        "HMD_AUDIT_SYSLOG": syslog,
        **extra,
    }


def _write(env: dict[str, str], count: int = 3) -> None:
    with heimdall_kms.from_env(env) as crypto:
        for number in range(count):
            crypto.encrypt(f"value {number}", context={"field": "ssn"}, actor="app")


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    yield receiver
    receiver.close()


class TestSyslogCopy:
    def test_each_signed_checkpoint_arrives_over_udp(
        self, tmp_path: Path, udp: socket.socket
    ) -> None:
        port = udp.getsockname()[1]
        env = _env(tmp_path, f"udp://127.0.0.1:{port}")
        _write(env)
        _write(env, 2)
        received = [MESSAGE.fullmatch(udp.recv(65536)) for _ in range(2)]
        assert all(received)
        assert {int(m.group(1)) for m in received if m} == {4 * 8 + 6}
        sent = [parse_checkpoint(m.group(2)) for m in received if m]
        kept = [
            parse_checkpoint(line)
            for line in checkpoints_path(tmp_path / "audit.log").read_text().splitlines()
        ]
        assert sent == kept and [c.seq for c in sent] == [3, 5]
        signer = LocalSigner(LocalKeyring(tmp_path / "keyring.json"), "pii-audit")
        assert signer.verify_many([(c.message(), c.signature) for c in sent]) == [True, True]

    def test_a_unix_datagram_socket_and_another_facility(self, tmp_path: Path) -> None:
        path = tmp_path / "log.sock"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))
        receiver.settimeout(5)
        try:
            _write(_env(tmp_path, f"unix://{path}", HMD_AUDIT_SYSLOG_FACILITY="local3"))
            found = MESSAGE.fullmatch(receiver.recv(65536))
        finally:
            receiver.close()
        assert found is not None and int(found.group(1)) == 19 * 8 + 6
        assert json.loads(found.group(2))["seq"] == 3

    def test_no_receiver_costs_no_time_and_is_counted(self, tmp_path: Path) -> None:
        failures = default_metrics().audit_checkpoint_failures.labels("syslog")
        before = failures._value.get()
        started = time.monotonic()
        _write(_env(tmp_path, f"unix://{tmp_path}/nobody.sock"))
        assert time.monotonic() - started < 3
        assert failures._value.get() == before + 1
        # The evidence is unaffected: the checkpoint is signed and kept next to the log.
        assert checkpoints_path(tmp_path / "audit.log").read_text().count("\n") == 1


class TestNeverBlocking:
    def test_a_receiver_that_never_reads_holds_up_neither_put_nor_close(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "full.sock"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(str(path))  # bound, never read: its buffer fills, then sends block
        failed: list[int] = []
        anchor = SyslogAnchor(
            SyslogTarget(SyslogScheme.UNIX, str(path)),
            timeout_seconds=0.2,
            on_failure=lambda: failed.append(1),
            capacity=50,
        )
        signer = LocalSigner(LocalKeyring(tmp_path / "keyring.json"), "pii-audit")
        checkpoint = new_checkpoint("host:/log", 1, "ab" * 32, signer)
        try:
            started = time.monotonic()
            for _ in range(500):
                anchor.put(checkpoint)
            putting = time.monotonic() - started
            started = time.monotonic()
            done = anchor.close(timeout=1.0)
            closing = time.monotonic() - started
        finally:
            receiver.close()
        assert putting < 0.5, putting  # 500 puts, none waited for the socket
        assert closing < 1.5 and not done  # bounded, and it says not everything went out
        assert failed  # a full queue and timed-out sends are counted


class TestSettings:
    @pytest.mark.parametrize(
        ("url", "address"),
        [
            ("udp://127.0.0.1", ("127.0.0.1", 514)),
            ("udp://syslog.example:1514", ("syslog.example", 1514)),
            ("udp://[::1]:514/", ("::1", 514)),
            ("unix:///dev/log", "/dev/log"),
        ],
    )
    def test_the_accepted_forms(self, url: str, address: object) -> None:
        assert parse_syslog_url(url).address == address

    @pytest.mark.parametrize(
        "url",
        ["tcp://host:514", "udp://", "udp://host:99999", "unix://relative", "udp://h/x", "syslog"],
    )
    def test_other_forms_are_one_line_errors(self, url: str) -> None:
        with pytest.raises(ConfigurationError, match="HMD_AUDIT_SYSLOG: expected"):
            parse_syslog_url(url)

    def test_an_unknown_facility_and_syslog_without_a_signing_key(self) -> None:
        with pytest.raises(ConfigurationError, match="HMD_AUDIT_SYSLOG_FACILITY"):
            parse_syslog_url("udp://h", "nonsense")
        with pytest.raises(ConfigurationError, match="set HMD_AUDIT_SIGNING_KEY too"):
            read_anchoring({"HMD_AUDIT_SYSLOG": "udp://127.0.0.1"})
        anchoring = read_anchoring(
            {"HMD_AUDIT_SIGNING_KEY": "k", "HMD_AUDIT_SYSLOG": "udp://127.0.0.1:1514"}
        )
        assert anchoring is not None and anchoring.syslog == SyslogTarget(
            SyslogScheme.UDP, "127.0.0.1", 1514
        )
        assert anchoring.anchor_url is None  # syslog alone, without the PostgreSQL anchor
