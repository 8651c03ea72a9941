"""The CLI's wait for a key change to take effect: bounded, one line per wait on stderr."""

from __future__ import annotations

import click

from heimdall_kms.config import Settings
from heimdall_kms.jobs.propagation import Propagation

__all__ = ["propagation"]


def propagation(settings: Settings) -> Propagation:
    """At most ``HMD_KMS_PROPAGATION_SECONDS``, reporting each wait on stderr."""
    return Propagation(
        bound_seconds=settings.kms_propagation_seconds,
        progress=lambda line: click.echo(f"heimdall-kms: {line}", err=True),
    )
