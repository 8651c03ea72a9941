"""Building the checkpointer (and its anchor writer and syslog sender) the settings ask for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from heimdall_kms.audit.anchor import AnchorWriter
from heimdall_kms.audit.checkpoint import default_log_id
from heimdall_kms.audit.checkpointer import Checkpointer, CheckpointPolicy, Destination
from heimdall_kms.audit.signers import signer_from_settings
from heimdall_kms.config import Settings

if TYPE_CHECKING:
    from heimdall_kms.audit_settings import AuditAnchoring
    from heimdall_kms.metrics import Metrics

__all__ = ["checkpointer_for", "log_id"]


def log_id(log: Path, settings: Settings) -> str:
    anchoring = settings.audit_anchoring
    return (anchoring.log_id if anchoring else None) or default_log_id(log)


def checkpointer_for(
    log: Path, settings: Settings, metrics: Metrics | None = None
) -> Checkpointer | None:
    """The checkpointer for the file ``log``, or None when no signing key is configured;
    its failures are counted in ``metrics`` (without it, in a registry nothing exports).

    Raises:
        ConfigurationError: the signing key cannot be used with the settings.
        KMSError: the login to the KMS failed.
    """
    anchoring = settings.audit_anchoring
    signer = signer_from_settings(settings)
    if anchoring is None or signer is None:
        return None
    if metrics is None:
        from heimdall_kms.metrics import unexported_metrics  # noqa: PLC0415

        metrics = unexported_metrics()
    policy = CheckpointPolicy(
        log_id=log_id(log, settings),
        seconds=anchoring.checkpoint_seconds,
        lines=anchoring.checkpoint_lines,
    )
    return Checkpointer(
        log,
        signer,
        policy,
        destinations=_destinations(anchoring, metrics),
        on_failure=metrics.audit_checkpoint_failures.labels("sign").inc,
    )


def _destinations(anchoring: AuditAnchoring, metrics: Metrics) -> list[Destination]:
    """The off-host copies the settings ask for: the PostgreSQL anchor, syslog."""
    destinations: list[Destination] = []
    if anchoring.anchor_url is not None:
        destinations.append(
            AnchorWriter(
                anchoring.anchor_url,
                anchoring.anchor_table,
                on_failure=metrics.audit_checkpoint_failures.labels("anchor").inc,
                on_lag=metrics.audit_anchor_lag.set,
            )
        )
    if anchoring.syslog is not None:
        from heimdall_kms.audit.syslog_anchor import SyslogAnchor  # noqa: PLC0415

        failures = metrics.audit_checkpoint_failures.labels("syslog").inc
        destinations.append(SyslogAnchor(anchoring.syslog, on_failure=failures))
    return destinations
