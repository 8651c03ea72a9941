"""The demo's last chapter: the key lifecycle, on the demo's own key (never the configured one).

Rotate, see retirement refused while values need the old version, re-wrap every DEK inside
the KMS (ciphertexts untouched), retire, and read everything back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import timedelta

from heimdall_kms.audit import AuditSink
from heimdall_kms.composition import job_services
from heimdall_kms.config import Settings
from heimdall_kms.errors import RefusedError
from heimdall_kms.jobs.metered import MeteredProvider
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.jobs.report import JobReport, ProgressCallback
from heimdall_kms.jobs.retire import retire
from heimdall_kms.jobs.rotation import rotate
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.metrics import unexported_metrics
from heimdall_kms.providers import KeyManagementService
from heimdall_kms.service import Crypto
from heimdall_kms.store import FieldStore

__all__ = ["Lifecycle", "PhaseMeter", "ProgressFactory", "no_progress", "run_lifecycle"]

# One progress display per job ("migrate", "reencrypt --mode rewrap"), opened around it.
ProgressFactory = Callable[[str], AbstractContextManager[ProgressCallback | None]]


def no_progress(_: str) -> AbstractContextManager[ProgressCallback | None]:
    return nullcontext(None)


class PhaseMeter(MeteredProvider):
    """Counts one chapter's KMS calls; the demo closes the provider itself, once, at its end
    (so the local provider's NOT FOR PRODUCTION warning is logged once, not per chapter)."""

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    old_version: int
    rotated_to: int
    retire_refused_first: bool
    rewrapped: int
    ciphertexts_untouched: bool
    retired_below: int
    readable_after_retire: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "rotated_to": self.rotated_to,
            "retire_refused_first": self.retire_refused_first,
            "rewrapped": self.rewrapped,
            "ciphertexts_untouched": self.ciphertexts_untouched,
            "retired_below": self.retired_below,
            "readable_after_retire": self.readable_after_retire,
        }


def run_lifecycle(  # noqa: PLR0917 - private to the demo, each argument distinct
    settings: Settings,
    provider: KeyManagementService,
    store: FieldStore,
    sink: AuditSink,
    originals: Mapping[str, str],
    say: Callable[[str], None],
    progress: ProgressFactory,
) -> Lifecycle:
    """Rotate, see retirement refused, rewrap, retire, and read everything back."""
    kms = PhaseMeter(provider)
    before = _values(store)
    turned = rotate(
        kms,
        sink,
        actor="demo-admin",
        if_due=False,
        cadence=timedelta(days=90),
        reason="demo: routine rotation",
    )
    new = turned.new_version
    say(
        f"5. heimdall-kms rotate: v{turned.old_version} -> v{new}; old values still "
        "decrypt, new ones use the new version"
    )
    refused = _retire_refused(kms, store, sink, new)
    old = turned.old_version
    say(f"   retiring the versions below v{new} is refused: stored values still need v{old}")
    services = job_services(settings, kms, sink, unexported_metrics(), actor="demo-admin")
    with services.crypto as crypto:
        report = _rewrap(services, store, progress)
        after = _values(store)
        untouched = all(_ciphertext(after[i]) == _ciphertext(before[i]) for i in originals)
        say(
            f"   reencrypt rewrap: {report.totals.completed:,} DEKs re-wrapped inside "
            f"the KMS; every ciphertext byte-identical: {_yes(untouched)}"
        )
        retire(kms, [store], sink, below_version=new, actor="demo-admin")
        readable = _read_back(crypto, after, originals)
    say(
        f"   retire below v{new}: done; all {len(originals):,} values still decrypt: "
        f"{_yes(readable)}"
    )
    return Lifecycle(
        turned.old_version, new, refused, report.totals.completed, untouched, new, readable
    )


def _rewrap(services: JobServices, store: FieldStore, progress: ProgressFactory) -> JobReport:
    """``reencrypt --mode rewrap`` over the demo's table.

    Raises:
        HeimdallKMSError: what stopped the job.
    """
    with progress("reencrypt rewrap") as view:
        report = run_reencrypt(services, [store], ReencryptOptions(batch_size=250), view)
    if report.stop_error is not None:
        raise report.stop_error
    return report


def _read_back(
    crypto: Crypto, after: Mapping[str, str | None], originals: Mapping[str, str]
) -> bool:
    """Whether every stored value decrypts to its original, in one call."""
    ids = sorted(originals)
    texts = crypto.decrypt_many(
        [after[i] or "" for i in ids],
        actor="demo-analyst",
        reason="demo: read back after retirement",
    )
    return texts == [originals[i] for i in ids]


def _values(store: FieldStore) -> dict[str, str | None]:
    return {row.key: row.value for rows in store.scan(5000) for row in rows}


def _retire_refused(
    kms: KeyManagementService, store: FieldStore, sink: AuditSink, below: int
) -> bool:
    """Whether retiring the versions below ``below`` is refused (it must be, before rewrap)."""
    try:
        retire(kms, [store], sink, below_version=below, actor="demo-admin")
    except RefusedError:
        return True
    return False


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def _ciphertext(value: str | None) -> str:
    return str(json.loads(value or "{}").get("ciphertext"))
