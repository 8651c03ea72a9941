"""Protect generated records through a live OpenBao with the policy engine.

Starts its own OpenBao dev server and streams N generated records (5 fields: 2 encrypted, 1
keyed-hashed, 1 scrubbed, 1 passed through) through a child process that runs exactly what
`heimdall-kms protect` runs (the policy engine's NDJSON stream over the Vault provider), with
a requests session that counts the HTTP requests sent to Vault. Prints records/s, KMS
requests per record and the child's peak RSS. Run from the repository root:

    python benchmarks/protect_bench.py [--records 1000000] [--batch-size 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heimdall_kms.testing import start_openbao

POLICY = {
    "rules": {"ssn": "encrypt", "card": "encrypt", "email": "hmac", "password": "scrub"},
    "default_action": "passthrough",
    "record_id": "id",
}
GENERATOR = (
    "import sys\n"
    "w = sys.stdout.write\n"
    "for i in range({n}):\n"
    '    w(\'{{"id":%d,"ssn":"%09d","card":"4111-%012d","email":"u%d@x.io",'
    '"password":"pw%d","city":"Oslo"}}\\n\' % (i, i, i, i, i))\n'
)
CHILD = """
import os, sys
from pathlib import Path
import hvac
from heimdall_kms.audit import open_sink
from heimdall_kms.config import Settings
from heimdall_kms.policy import PolicyEngine, load_policy
from heimdall_kms.policy.stream import process_ndjson
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.testing import CountingSession

# Counted at the transport adapter: the provider's batch requests skip Session.send.
counting = CountingSession()

settings = Settings.from_env(os.environ)
client = hvac.Client(url=settings.vault.addr, token=settings.vault.token.reveal(),
                     session=counting)
crypto = Crypto(settings, kms=VaultTransitProvider(client, settings.kms_key_id),
                audit=open_sink(settings.audit_log))
engine = PolicyEngine(crypto, load_policy(Path(sys.argv[1])))
process_ndjson(sys.stdin.buffer, sys.stdout, engine.protect_many, batch_size=int(sys.argv[2]))
print("HTTP_REQUESTS", len(counting.sent), file=sys.stderr)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print("PEAK_KIB", hwm, file=sys.stderr)  # VmHWM: this process only (ru_maxrss is inherited)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-protect-bench-"))
    policy = workdir / "policy.json"
    policy.write_text(json.dumps(POLICY))
    server = start_openbao()
    try:
        env = {**os.environ, **server.env(HMD_AUDIT_LOG=str(workdir / "audit.log"))}
        started = time.perf_counter()
        source = subprocess.Popen(
            [sys.executable, "-c", GENERATOR.format(n=args.records)], stdout=subprocess.PIPE
        )
        with open(os.devnull, "wb") as sink:
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(policy), str(args.batch_size)],
                stdin=source.stdout,
                stdout=sink,
                stderr=subprocess.PIPE,
                env=env,
                check=True,
            )
        source.wait()
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    requests_sent = int(child.stderr.decode().split("HTTP_REQUESTS")[-1].split()[0])
    peak_mib = int(child.stderr.decode().split("PEAK_KIB")[-1].split()[0]) / 1024
    print(
        f"\nprotect {args.records:,} records (2 encrypted + 1 HMAC field each) through OpenBao, "
        f"batch {args.batch_size}"
    )
    print(f"{'records/s':>12}{'KMS requests':>14}{'per record':>12}{'peak RSS MiB':>14}")
    print(
        f"{args.records / seconds:>12,.0f}{requests_sent:>14,}"
        f"{requests_sent / args.records:>12.5f}{peak_mib:>14.1f}"
    )


if __name__ == "__main__":
    main()
