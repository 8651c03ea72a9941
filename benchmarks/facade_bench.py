"""The facade's own cost per value, with no network: ``encrypt_many``/``decrypt_many`` through
the in-process :class:`heimdall_kms.testing.FakeKMS` (real AES-GCM wraps), a FileAuditSink and
metrics on, as in production.

What it isolates is the package's Python work per value (context checks, sealing, audit events
and lines, metrics), which a loaded machine's KMS round trips hide in throughput_bench.py. To
compare two versions of the code, run it alternately against each tree, e.g.

    PYTHONPATH=/path/to/old/src python benchmarks/facade_bench.py --label old
    python benchmarks/facade_bench.py --label new

Numbers depend on the machine; compare rows of one session, never across machines.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import prometheus_client

from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.metrics import Metrics
from heimdall_kms.service import Crypto
from heimdall_kms.testing import FakeKMS


def rate(values: int, rounds: int, work: Callable[[], object]) -> tuple[float, float]:
    """Median values/s of ``rounds`` runs of ``work``, and the least CPU time per value (µs)
    of this thread: the figure a loaded machine disturbs least."""
    rates, cpu = [], []
    for _ in range(rounds):
        start, thread = time.perf_counter(), time.thread_time()
        work()
        cpu.append((time.thread_time() - thread) / values * 1e6)
        rates.append(values / (time.perf_counter() - start))
    return statistics.median(rates), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=250, help="values per call")
    parser.add_argument("--rounds", type=int, default=9, help="runs per row; the median is shown")
    parser.add_argument("--label", default="this tree")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="facade-bench-"))
    settings = Settings.from_env(
        {
            "HMD_ENCRYPTION_MODE": "kms",
            "HMD_KMS_PROVIDER": "local",
            "HMD_LOCAL_KEYRING": str(workdir / "keyring.json"),
            "HMD_AUDIT_LOG": str(workdir / "audit.log"),
        }
    )
    metrics = Metrics(prometheus_client.CollectorRegistry())
    sink = FileAuditSink(workdir / "audit.log")
    items = [
        (f"123-45-{i:04d}", {"table": "people", "field": "ssn", "record": f"r{i}"})
        for i in range(args.values)
    ]
    with Crypto(settings, kms=FakeKMS(), audit=sink, metrics=metrics) as crypto:
        envelopes = crypto.encrypt_many(items)
        texts = [envelope.to_json() for envelope in envelopes]
        rows = [
            ("encrypt_many", rate(args.values, args.rounds, lambda: crypto.encrypt_many(items))),
            (
                "decrypt_many (envelopes)",
                rate(
                    args.values,
                    args.rounds,
                    lambda: crypto.decrypt_many(envelopes, actor="bench", reason="bench"),
                ),
            ),
            (
                "decrypt_many (stored JSON)",
                rate(
                    args.values,
                    args.rounds,
                    lambda: crypto.decrypt_many(texts, actor="bench", reason="bench"),
                ),
            ),
        ]
    print(f"\n{args.values:,} values per call, FakeKMS, audit + metrics on: {args.label}")
    print(f"| {'row':<28} | {'values/s':>10} | {'CPU µs/value':>12} |")
    for name, (per_second, cpu) in rows:
        print(f"| {name:<28} | {per_second:>10,.0f} | {cpu:>12.2f} |")


if __name__ == "__main__":
    main()
