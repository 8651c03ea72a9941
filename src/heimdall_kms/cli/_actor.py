"""``--actor``: who runs an operator command, as its audit events record it.

One default for every command that changes something (encrypt, protect, migrate, reencrypt,
rotate, retire, journal purge): the login user of the process, so a runbook that omits
``--actor`` still records the person (or the service account) that ran it. ``decrypt`` and
``reveal`` require ``--actor`` (SPEC §3): reading a value names its reader on purpose.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["actor_option", "login_user"]

_F = TypeVar("_F", bound=Callable[..., Any])


def login_user() -> str:
    """The login name (``LOGNAME``, ``USER``, ``LNAME``, ``USERNAME``, then the password
    database); ``uid:N`` for a process whose user has no name (a bare container)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return f"uid:{os.getuid()}"


def actor_option(what: str) -> Callable[[_F], _F]:
    """The ``--actor`` option of an operator command; ``what`` completes "Who ..."."""
    return click.option(
        "--actor",
        default=login_user,
        show_default="the login user",
        help=f"Who {what} (audited).",
    )
