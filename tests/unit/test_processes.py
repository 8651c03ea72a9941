"""heimdall_kms.testing.processes.wait_ready: how the server starters wait for their server."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heimdall_kms.testing.processes import stop_process, wait_ready


def _python(code: str, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "server.log"


@pytest.fixture
def sleeper(log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = _python("import time; time.sleep(60)", log_path)
    yield process
    stop_process(process)


def _wait(
    process: subprocess.Popen[bytes],
    log_path: Path,
    ready: Callable[[], bool],
    *,
    seconds: float = 30,
) -> None:
    wait_ready(
        process,
        ready,
        name="srv",
        log_path=log_path,
        deadline=time.monotonic() + seconds,
        late="did not become healthy",
    )


class TestWaitReady:
    def test_returns_once_ready(self, sleeper: subprocess.Popen[bytes], log_path: Path) -> None:
        """It asks until the check says yes, and leaves the server running."""
        answers = iter([False, False, True])
        _wait(sleeper, log_path, lambda: next(answers))
        assert sleeper.poll() is None

    def test_a_server_that_exits_is_reported_with_its_log(self, log_path: Path) -> None:
        """The message ends with what the server wrote before it exited."""
        process = _python("print('port already in use'); raise SystemExit(3)", log_path)
        process.wait()
        with pytest.raises(RuntimeError, match=r"^srv exited: port already in use"):
            _wait(process, log_path, lambda: False)

    def test_a_server_not_ready_by_the_deadline_is_killed(
        self, sleeper: subprocess.Popen[bytes], log_path: Path
    ) -> None:
        with pytest.raises(RuntimeError, match=r"^srv did not become healthy in time$"):
            _wait(sleeper, log_path, lambda: False, seconds=0.2)
        assert sleeper.wait(timeout=10) != 0
