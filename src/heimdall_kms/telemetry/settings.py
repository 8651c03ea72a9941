"""The telemetry settings (SPEC §12), read from the environment mapping the CLI passes in.

They are apart from :class:`heimdall_kms.config.Settings` because logging must be set up
before, and independently of, the KMS settings: a command whose KMS settings are wrong still
reports that in the configured log format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from heimdall_kms.errors import ConfigurationError

# How often the key gauges are refreshed by default (heimdall_kms.key_metrics). Defined here, not
# there, so that reading the settings (every command does) loads no metrics library.
DEFAULT_REFRESH_SECONDS = 300.0

__all__ = ["DEFAULT_REFRESH_SECONDS", "LogFormat", "TelemetrySettings"]


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    log_format: LogFormat = LogFormat.TEXT  # HMD_LOG_FORMAT
    key_metrics_seconds: float = DEFAULT_REFRESH_SECONDS  # HMD_KEY_METRICS_SECONDS
    # HMD_LOG_LEVEL; unset: the command's default (warning; info for serve and for json logs)
    log_level: int | None = None

    def level(self, default: int) -> int:
        if self.log_level is not None:
            return self.log_level
        return min(default, logging.INFO) if self.log_format is LogFormat.JSON else default

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TelemetrySettings:
        """Raises: ConfigurationError naming the variable."""
        return cls(_log_format(environ), _refresh_seconds(environ), _log_level(environ))


def _log_format(environ: Mapping[str, str]) -> LogFormat:
    raw_format = environ.get("HMD_LOG_FORMAT", "").strip().lower() or LogFormat.TEXT.value
    try:
        return LogFormat(raw_format)
    except ValueError:
        raise ConfigurationError("HMD_LOG_FORMAT: expected text | json") from None


def _refresh_seconds(environ: Mapping[str, str]) -> float:
    raw_seconds = environ.get("HMD_KEY_METRICS_SECONDS", "").strip()
    if not raw_seconds:
        return DEFAULT_REFRESH_SECONDS
    try:
        seconds = float(raw_seconds)
    except ValueError:
        seconds = -1.0
    if not 10 <= seconds <= 86400:
        raise ConfigurationError(
            "HMD_KEY_METRICS_SECONDS: expected a number of seconds from 10 to 86400"
        )
    return seconds


def _log_level(environ: Mapping[str, str]) -> int | None:
    raw_level = environ.get("HMD_LOG_LEVEL", "").strip().lower()
    if raw_level and raw_level not in _LEVELS:
        raise ConfigurationError("HMD_LOG_LEVEL: expected debug | info | warning | error")
    return _LEVELS.get(raw_level)
