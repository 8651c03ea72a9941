"""``heimdall-kms serve``: the admin HTTP API (SPEC §7) under uvicorn, over TLS 1.2+.

FastAPI and uvicorn (extra ``server``) are imported when the command runs, never when the
CLI loads. The TLS context is uvicorn's own, tightened before the server starts: minimum
TLS 1.2 (TLS 1.3 is negotiated whenever the client offers it, which every current client
does), and for TLS 1.2 only ECDHE key exchange with AEAD ciphers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from heimdall_kms.config import Settings
from heimdall_kms.errors import ConfigurationError, ListenError
from heimdall_kms.settings_env import is_loopback
from heimdall_kms.telemetry.logs import configure_logging
from heimdall_kms.telemetry.settings import TelemetrySettings

if TYPE_CHECKING:
    import uvicorn

__all__ = ["build_server", "harden_tls", "is_loopback", "listen", "serve"]

# TLS 1.2 suites: forward secrecy and authenticated encryption only. (TLS 1.3 suites are all
# AEAD and are configured separately by OpenSSL.)
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def harden_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """Refuse TLS 1.0 and 1.1 whatever the OpenSSL configuration allows."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, for uvicorn to serve on.

    Bound here rather than by uvicorn, whose own failure is several log lines and an exit code
    that means something else in this tool's table.

    Raises:
        ListenError: the address is in use, not allowed, or not this host's.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or type(exc).__name__
        raise ListenError(f"cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def build_server(
    app: Any,
    *,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    forwarded_allow_ips: str | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured (not yet running) uvicorn server; TLS when ``tls_cert`` is given.

    Raises:
        ConfigurationError: the certificate or key cannot be loaded.
    """
    import uvicorn  # noqa: PLC0415 - the server extra is only needed by this command.

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        ssl_ciphers=TLS12_CIPHERS,
        # The audit log records every request that matters; the access log would also write
        # query strings (which may name a database URL) to stdout.
        access_log=False,
        proxy_headers=forwarded_allow_ips is not None,
        forwarded_allow_ips=forwarded_allow_ips,
        server_header=False,
        # uvicorn's loggers propagate to the root handler, so its lines take HMD_LOG_FORMAT too.
        log_config=None,
        log_level=log_level,
        lifespan="on",
    )
    _load(config)
    if config.ssl is not None:
        harden_tls(config.ssl)
    return uvicorn.Server(config)


def _load(config: uvicorn.Config) -> None:
    """Raises ConfigurationError: the certificate or key cannot be loaded."""
    try:
        config.load()
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or "unreadable"
        raise ConfigurationError(f"--tls-cert/--tls-key: cannot load them: {reason}") from None


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8443,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (in use: exit 71).",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="PEM certificate (chain) for HTTPS; TLS 1.2 is the minimum, 1.3 preferred.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="PEM key."
)
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Allow plain HTTP on a non-loopback address. Bearer tokens, plaintext and "
    "envelopes would cross the network unencrypted: only behind a TLS-terminating proxy "
    "on a trusted network.",
)
@click.option(
    "--tokens-file",
    envvar="HMD_ADMIN_TOKENS_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="'ROLE SHA256HEX' lines (default: HMD_ADMIN_TOKENS_FILE).",
)
@click.option(
    "--targets",
    "targets_file",
    envvar="HMD_ADMIN_TARGETS_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML targets file: the only columns jobs and counts may work on, and the database "
    "(default: any column of HMD_DATABASE_URL). Requests never name a database.",
)
@click.option(
    "--forwarded-allow-ips",
    metavar="IPS",
    help="Trust X-Forwarded-For from these proxy addresses (comma-separated), so the "
    "audited source_ip is the client's. Default: the TCP peer is the source.",
)
def serve(
    *,
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    insecure_http: bool,
    tokens_file: Path | None,
    targets_file: Path | None,
    forwarded_allow_ips: str | None,
) -> None:
    """Run the admin HTTP API: re-encryption jobs, rotation, key report, encrypt/decrypt,
    /healthz (a real KMS round trip) and /metrics. See docs/admin-api.md.

    Without --tls-cert the server listens on loopback only, unless --insecure-http.
    HMD_ROTATION_CHECK_SECONDS=N makes it run `rotate --if-due` every N seconds.
    """
    _check_transport(host, tls_cert, tls_key, insecure_http=insecure_http)
    if tokens_file is None:
        raise ConfigurationError(
            "HMD_ADMIN_TOKENS_FILE: required by serve (one 'ROLE SHA256HEX' line per token)"
        )
    with _server_extra():
        import uvicorn  # noqa: F401, PLC0415 - fail early, before the KMS is contacted.

        from heimdall_kms.admin import create_app, load_tokens  # noqa: PLC0415
        from heimdall_kms.admin.targets import ServerTargets  # noqa: PLC0415
    tokens = load_tokens(tokens_file)
    settings = Settings.from_env(os.environ)
    telemetry = TelemetrySettings.from_env(os.environ)
    # The request log is at info: serve logs at info unless HMD_LOG_LEVEL says otherwise.
    configure_logging(telemetry.log_format, telemetry.level(logging.INFO))
    targets = ServerTargets.load(settings.database_url, targets_file)
    sock = listen(host, port)
    app = create_app(
        settings, tokens, targets=targets, key_metrics_seconds=telemetry.key_metrics_seconds
    )
    server = build_server(
        app,
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        forwarded_allow_ips=forwarded_allow_ips,
    )
    with sock:
        server.run(sockets=[sock])


def _check_transport(
    host: str, tls_cert: Path | None, tls_key: Path | None, *, insecure_http: bool
) -> None:
    """Raises click.UsageError: half a TLS pair, or plain HTTP off loopback not asked for."""
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_cert is None and not is_loopback(host) and not insecure_http:
        raise click.UsageError(
            f"refusing plain HTTP on {host}: give --tls-cert/--tls-key, or --insecure-http "
            "behind a TLS-terminating proxy"
        )


@contextlib.contextmanager
def _server_extra() -> Iterator[None]:
    """Raises ConfigurationError naming the extra when FastAPI, Starlette or uvicorn is missing."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("fastapi", "starlette", "uvicorn"):
            raise ConfigurationError("serve needs: pip install 'heimdall-kms[server]'") from None
        raise
