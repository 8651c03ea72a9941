"""Issue 15's low-severity findings, one class per unit: each a short fix and its proof."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import pytest

from heimdall_kms import primitives
from heimdall_kms.admin import load_tokens
from heimdall_kms.audit import AuditEvent, EventType, FileAuditSink, Result
from heimdall_kms.cli import main
from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError, InvalidInputError, KMSError
from heimdall_kms.providers.local import LocalKeyring
from heimdall_kms.store import load_targets

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


class TestTokensFile:
    @pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
    def test_a_file_group_or_others_may_write_is_refused(self, tmp_path: Path, mode: int) -> None:
        path = tmp_path / "tokens"
        path.write_text(f"admin {hashlib.sha256(b't').hexdigest()}\n")
        path.chmod(mode)
        with pytest.raises(ConfigurationError, match="writable by group or others"):
            load_tokens(path)
        path.chmod(0o644)
        assert len(load_tokens(path)) == 1


class TestSettingsRepr:
    def test_the_database_password_is_not_shown(self) -> None:
        password = "S3cret-" + "pw"
        settings = Settings.from_env(
            {
                "HMD_ENCRYPTION_MODE": "legacy",
                "HMD_PII_MASTER_KEY": "ab" * 32,
                "HMD_DATABASE_URL": f"postgresql://app:{password}@db.internal/heimdall",
            }
        )
        assert settings.database_url is not None and password in settings.database_url
        assert password not in repr(settings) and password not in str(settings)
        assert "ab" * 32 not in repr(settings)


class TestLocalKeyringLock:
    def test_a_symlinked_lock_file_is_refused_and_its_target_left_alone(
        self, tmp_path: Path
    ) -> None:
        target = tmp_path / "elsewhere"
        keyring = tmp_path / "keyring.json"
        (tmp_path / "keyring.json.lock").symlink_to(target)
        with pytest.raises(ConfigurationError, match="symbolic link"):
            LocalKeyring(keyring).ensure_key("k")
        assert not target.exists() and not keyring.exists()


class TestTargetsFileNesting:
    @pytest.mark.parametrize(
        "text",
        ["a = " + "[" * 100_000 + "]" * 100_000, "a = " + "{b=" * 50_000 + "1" + "}" * 50_000],
    )
    def test_deep_nesting_is_a_one_line_error(self, tmp_path: Path, text: str) -> None:
        path = tmp_path / "targets.toml"
        path.write_text(text)
        with pytest.raises(InvalidInputError, match="nested too deeply") as caught:
            load_targets(path)
        assert "\n" not in str(caught.value)


class TestDekSource:
    def test_a_regular_file_in_place_of_dev_urandom_is_never_used_for_keys(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        planted = tmp_path / "urandom"
        planted.write_bytes(bytes(32 * 64))  # all zeros: predictable keys if it were read
        real_open = os.open

        def planted_open(path: object, flags: int, *args: int) -> int:
            if str(path) == "/dev/urandom":
                return real_open(planted, flags, *args)
            return real_open(path, flags, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "open", planted_open)
        deks = primitives.new_deks(64)
        assert len(deks) == 64 and all(len(dek) == primitives.DEK_BYTES for dek in deks)
        assert all(any(dek) for dek in deks)
        assert len({bytes(dek) for dek in deks}) == 64

    def test_the_real_device_is_accepted(self) -> None:
        fd = primitives._open_urandom()
        assert fd is not None or not hasattr(os, "readv")
        if fd is not None:
            os.close(fd)


VAULT_BASE = {"HMD_KMS_PROVIDER": "vault", "HMD_KMS_KEY_ID": "k", "HMD_VAULT_TOKEN": "s.x"}


class TestVaultPlainHttp:
    @pytest.mark.parametrize("addr", ["http://vault.internal:8200", "http://10.0.0.5:8200"])
    def test_plain_http_to_another_host_is_refused(self, addr: str) -> None:
        with pytest.raises(ConfigurationError, match="HMD_VAULT_ALLOW_INSECURE_HTTP") as caught:
            Settings.from_env({**VAULT_BASE, "HMD_VAULT_ADDR": addr})
        assert str(caught.value).startswith("HMD_VAULT_ADDR:")

    def test_unless_explicitly_allowed(self) -> None:
        env = {**VAULT_BASE, "HMD_VAULT_ADDR": "http://vault.internal:8200"}
        settings = Settings.from_env({**env, "HMD_VAULT_ALLOW_INSECURE_HTTP": "true"})
        assert settings.vault is not None and settings.vault.addr.startswith("http://")
        for unlike in ("yes", "True", "TRUE"):  # exactly the documented word turns it on
            with pytest.raises(ConfigurationError, match=r"expected true \| false"):
                Settings.from_env({**env, "HMD_VAULT_ALLOW_INSECURE_HTTP": unlike})

    @pytest.mark.parametrize(
        "addr",
        ["http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200", "https://v:1"],
    )
    def test_loopback_and_https_are_accepted(self, addr: str) -> None:
        assert Settings.from_env({**VAULT_BASE, "HMD_VAULT_ADDR": addr}).vault is not None


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 {} to anything and records the headers it was sent."""

    seen: ClassVar[list[dict[str, str]]] = []

    def _answer(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = b'{"data": {}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, *_: object) -> None:
        return None


def _redirector(target: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            self.send_response(307)
            self.send_header("Location", target + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def log_message(self, *_: object) -> None:
            return None

    return Redirect


@contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class TestVaultRedirect:
    TOKEN = "s.never-leaves-" + "this-host"

    @pytest.mark.parametrize("call", ["describe", "wrap", "hmac"])
    def test_a_redirect_is_not_followed_and_the_token_goes_nowhere(self, call: str) -> None:
        from heimdall_kms.providers.base import HashKey
        from heimdall_kms.providers.vault.transit import VaultTransitProvider

        _Recorder.seen.clear()
        with _serving(_Recorder) as elsewhere, _serving(_redirector(elsewhere)) as vault:
            settings = Settings.from_env(
                {
                    **VAULT_BASE,
                    "HMD_VAULT_ADDR": vault,
                    "HMD_VAULT_TOKEN": self.TOKEN,
                    "HMD_KMS_RETRY_ATTEMPTS": "1",
                }
            )
            provider = VaultTransitProvider.from_settings(settings)
            calls: dict[str, Callable[[], object]] = {
                "describe": provider.describe,
                "wrap": lambda: provider.wrap_many([bytearray(32)], [{}]),
                "hmac": lambda: provider.hmac_many([b"x"], HashKey("heimdall-pii-hmac", 1)),
            }
            try:
                with pytest.raises(KMSError, match="redirect") as caught:
                    calls[call]()
            finally:
                provider.close()
        assert self.TOKEN not in str(caught.value)
        assert _Recorder.seen == []  # nothing at all reached the other address
