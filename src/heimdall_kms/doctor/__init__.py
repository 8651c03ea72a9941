"""``heimdall-kms doctor``: check a whole configuration the way a newcomer needs it checked.

Every check gives one line — ✓ passed, ✗ failed (with the fix), ! a warning, - skipped because
an earlier check failed — and nothing stops early: a malformed setting is a ✗ line, not an
exit. The checks run for every provider through ``load_provider``, ``describe()`` and the
facade; for Vault, :mod:`.vault` adds the server's seal state, TLS trust and the token.
"""

from __future__ import annotations

from heimdall_kms.doctor.report import Check, DoctorReport, Status
from heimdall_kms.doctor.run import run_doctor

__all__ = ["Check", "DoctorReport", "Status", "run_doctor"]
