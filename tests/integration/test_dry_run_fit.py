"""A dry run tells which values' new envelopes will not fit a ``varchar(N)`` column, sealing
nothing: the predicted length is compared with envelopes really sealed (local provider and
OpenBao, many plaintexts, contexts and slots), and the dry run's failed rows with the real
run's on PostgreSQL."""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heimdall_kms
from heimdall_kms import primitives
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.envelope import KmsV1Envelope, check_context, parse
from heimdall_kms.jobs.classify import Slot, classify
from heimdall_kms.jobs.fit import (
    SizeModel,
    legacy_need,
    measure,
    measured,
    size_model,
    unfit,
    wrapped_chars,
)
from heimdall_kms.jobs.services import JobServices
from heimdall_kms.kinds import AWSKeyVersioning, ProviderName
from heimdall_kms.providers.aws.client import create_key_for_alias
from heimdall_kms.providers.azure.provider import AzureKeyVaultProvider
from heimdall_kms.providers.base import key_admin
from heimdall_kms.providers.gcp.provider import GCPKMSProvider
from heimdall_kms.providers.local import LocalKeyring
from tests.contract.backends.azure import WORKER, key_client
from tests.contract.backends.gcp import rest_client
from tests.fakes.azure_kv_http import UNWRAP_ONLY, FakeKeyVaultServer
from tests.fakes.gcp_kms_http import FakeKMSServer, start_fake_kms
from tests.integration.clouds import aws_cloud, azure_env, gcp_cloud, start_azure
from tests.integration.dbtables import hybrid_local_env, postgres_table, run_main
from tests.legacy_data import legacy_envelope
from tests.servers import TRANSIT_KEY, OpenBao
from tests.servers_aws import MotoServer, start_moto

MASTER_HEX = "ab" * 32
_TEXT = st.characters(blacklist_categories=("Cs",))  # what UTF-8 can carry
CONTEXTS = st.dictionaries(
    st.text(_TEXT, min_size=1, max_size=12), st.text(_TEXT, max_size=40), min_size=1, max_size=4
)


def slots(old: str) -> list[Slot]:
    """Where a value may sit: the whole column, a JSON string at a path, an object at one."""
    quoted = json.dumps({"field_type": "ssn", "raw": old, "n": "é"}, ensure_ascii=False)
    nested = json.dumps({"a": [1, 2], "raw": json.loads(old)})
    found = [classify(old), classify(quoted, path=("raw",)), classify(nested, path=("raw",))]
    return [value.slot for value in found if value.slot is not None]


OLD = legacy_envelope(MASTER_HEX, "123-45-6789")


def local_crypto(directory: Path, mode: str = "kms", **extra: str) -> heimdall_kms.Crypto:
    """The real local provider on a keyring made in ``directory``."""
    keyring = directory / "keyring.json"
    LocalKeyring(keyring).ensure_key("heimdall-pii")
    env = {
        "HMD_ENCRYPTION_MODE": mode,
        "HMD_KMS_PROVIDER": "local",
        "HMD_LOCAL_KEYRING": str(keyring),
        **extra,
    }
    return heimdall_kms.from_env(env, audit=MemoryAuditSink())


def vault_crypto(openbao: OpenBao, key: str, key_type: str) -> heimdall_kms.Crypto:
    openbao.client().secrets.transit.create_key(key, key_type=key_type)
    return heimdall_kms.from_env(openbao.env(HMD_KMS_KEY_ID=key), audit=MemoryAuditSink())


@pytest.fixture(scope="module", params=["local", "aes256-gcm96", "chacha20-poly1305", "rsa-2048"])
def crypto(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[heimdall_kms.Crypto]:
    if request.param == "local":
        made = local_crypto(tmp_path_factory.mktemp("fit"))
    else:
        openbao = request.getfixturevalue("openbao")
        made = vault_crypto(openbao, f"fit-{request.param}", request.param)
    yield made
    made.close()


def model_of(crypto: heimdall_kms.Crypto) -> SizeModel:
    assert crypto.kms is not None
    return size_model(crypto.kms, key_admin(crypto.kms).describe())


class TestPredictedLength:
    """The model's length is the sealed envelope's, exactly, for these providers."""

    @settings(
        max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(plaintexts=st.lists(st.text(_TEXT, max_size=300), min_size=1, max_size=5), ctx=CONTEXTS)
    def test_sealed(
        self, crypto: heimdall_kms.Crypto, plaintexts: list[str], ctx: dict[str, str]
    ) -> None:
        context = check_context(ctx)
        model = model_of(crypto)
        envelopes = crypto.encrypt_many([(text, context) for text in plaintexts])
        for text, envelope in zip(plaintexts, envelopes, strict=True):
            for slot in slots(OLD):
                need = model.sealed(slot, len(text.encode("utf-8")), context)
                assert need.least == need.most == len(slot.put(envelope.to_json()))

    @settings(
        max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(text=st.text(_TEXT, max_size=200), ctx=CONTEXTS)
    def test_rewrapped_and_sealed_again(
        self, rotated: tuple[heimdall_kms.Crypto, KmsV1Envelope], text: str, ctx: dict[str, str]
    ) -> None:
        """After rotations from v1 to v10 (one more digit), for ``reencrypt``'s two modes."""
        rotated_crypto, old = rotated
        model = model_of(rotated_crypto)
        assert model.versions == (10, 10)
        [new] = rotated_crypto.rewrap_outcomes([old])
        assert isinstance(new, KmsV1Envelope) and new.key_version == 10
        [fresh] = rotated_crypto.encrypt_many([(text, check_context(ctx))])
        for slot in slots(old.to_json()):
            assert model.rewrapped(slot, old).least == len(slot.put(new.to_json()))
            need = model.sealed(slot, len(text.encode("utf-8")), check_context(ctx))
            assert need.least == need.most == len(slot.put(fresh.to_json()))


@pytest.fixture(scope="module")
def legacy_writer(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[heimdall_kms.Crypto, heimdall_kms.Crypto, str]]:
    """A hybrid facade and the legacy writer ``reencrypt --mode legacy`` seals with."""
    crypto = local_crypto(
        tmp_path_factory.mktemp("legacy"), "hybrid", HMD_PII_MASTER_KEY=MASTER_HEX
    )
    writer = JobServices.of(crypto).legacy_writer
    assert writer is not None
    yield crypto, writer, crypto.settings.legacy_key_id
    crypto.close()


@settings(max_examples=40, deadline=None)
@given(text=st.text(_TEXT, max_size=300), ctx=CONTEXTS)
def test_predicted_length_back_in_the_legacy_format(
    legacy_writer: tuple[heimdall_kms.Crypto, heimdall_kms.Crypto, str],
    text: str,
    ctx: dict[str, str],
) -> None:
    """``reencrypt --mode legacy``: the env-key envelope the legacy writer really makes."""
    crypto, writer, key_id = legacy_writer
    [sealed] = crypto.encrypt_many([(text, check_context(ctx))])
    [legacy] = writer.encrypt_many([(text, check_context(ctx))])
    assert isinstance(sealed, KmsV1Envelope)
    for slot in slots(sealed.to_json()):
        need = legacy_need(slot, sealed, key_id)
        assert need.least == need.most == len(slot.put(legacy.to_json()))


@pytest.fixture(scope="module", params=["local", "vault"])
def rotated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[heimdall_kms.Crypto, KmsV1Envelope]]:
    """A key with one envelope sealed at v1, then rotated to v10."""
    if request.param == "local":
        made = local_crypto(tmp_path_factory.mktemp("rot"))
    else:
        made = vault_crypto(request.getfixturevalue("openbao"), "fit-rotated", "aes256-gcm96")
    envelope = made.encrypt("x" * 37, context={"table": "t", "field": "c", "record": "1"})
    assert isinstance(envelope, KmsV1Envelope)
    assert made.kms is not None
    for _ in range(9):
        key_admin(made.kms).rotate()
    yield made, envelope
    made.close()


def test_a_provider_that_does_not_say_gives_a_lower_bound() -> None:
    """A cloud provider's wrapped key has no documented length: unmeasured (no wrap could be
    made), only a lower bound, so no value is said to fit for certain, and the reason says
    so."""
    body = wrapped_chars(ProviderName.AWS, None)
    assert body.least == 44 and body.most is None
    model = SizeModel(ProviderName.AWS, "alias/k", (3, 3), body)
    [slot] = slots(OLD)[:1]
    need = model.sealed(slot, 11, check_context({"field": "ssn"}))
    assert need.most is None and not need.fits(10_000)
    assert unfit("t.c", need, 10_000, predicted=True) == (
        f"its new value will be at least {need.least} characters (the wrapped key's length is "
        "not known: no wrap with the key's latest version could be made to measure it) and "
        "t.c holds at most 10000 (varchar(10000)): it may not fit; widen the column to text or "
        "a longer varchar first"
    )
    assert "will be at least" in unfit("t.c", need, need.least - 1, predicted=True)


def test_a_wrap_under_another_version_than_the_latest_measures_nothing(tmp_path: Path) -> None:
    """A new version not yet in effect everywhere: the measuring wrap landed on v9 while the
    KMS says v10 is the latest, so the run may wrap under either and v10's length is not
    measured: nothing is taken from it (the lower bound stays)."""
    crypto = local_crypto(tmp_path)
    try:
        assert crypto.kms is not None
        [wrapped] = crypto.kms.wrap_many([primitives.new_dek()], [{}])
        model = measured(crypto.kms, wrapped)
        assert model is not None and model.exact
        assert measured(crypto.kms, wrapped, wrapped.key_version) == model
        assert measured(crypto.kms, wrapped, wrapped.key_version + 1) is None
    finally:
        crypto.close()


# -- the dry run on a PostgreSQL varchar(N) column -----------------------------------------------


# What the token of a Vault case may do with the key besides ``decrypt``.
_MAY = {"vault-no-read": ("encrypt",), "vault-no-wrap": ()}


@pytest.fixture(params=["local", "vault", "vault-no-read", "vault-no-wrap"])
def hybrid_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """``vault-no-read``: a token that may wrap but not read the key's metadata, so the dry
    run learns the latest version and the wrapped length from one wrap of a throwaway DEK;
    ``vault-no-wrap``: one that may do neither, so the dry run does not know them (and
    allows for any number of digits and any wrapped length)."""
    if request.param == "local":
        return hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)
    openbao: OpenBao = request.getfixturevalue("openbao")
    token = {}
    if request.param in _MAY:
        root = openbao.client()
        verbs = ("decrypt", *_MAY[request.param])
        paths = [f"transit/{verb}/{TRANSIT_KEY}" for verb in verbs]
        rules = "".join(f'path "{path}" {{ capabilities = ["update"] }}\n' for path in paths)
        root.sys.create_or_update_policy(f"fit-{request.param}", rules)
        made = root.auth.token.create(policies=[f"fit-{request.param}"], ttl="10m")
        token = {"HMD_VAULT_TOKEN": made["auth"]["client_token"]}
    env = openbao.env(
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        **token,
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def varchar_table(postgres_url: str) -> Iterator[str]:
    """Rows 1..40 short values, 41..60 long ones, in a varchar(520) (as test_migrate's)."""
    values = {
        i: legacy_envelope(MASTER_HEX, f"{i:03d}-12-{i:04d}" if i <= 40 else "x" * (90 + i))
        for i in range(1, 61)
    }
    with postgres_table(postgres_url, "varchar(520)", values) as name:
        yield name


def _lengths(failures: list[dict[str, str]], verb: str) -> dict[int, int]:
    found = {}
    for failure in failures:
        match = re.search(
            rf"its new value {verb} (?:at least )?(\d+) characters", failure["message"]
        )
        assert match is not None, failure["message"]
        found[int(failure["id"])] = int(match.group(1))
    return found


def _rows(url: str, table: str) -> dict[int, str]:
    with psycopg.connect(url) as db:
        return dict(db.execute(f"SELECT id, ssn FROM {table}").fetchall())


def _event_types(audit_log: str) -> set[str]:
    lines = Path(audit_log).read_text().splitlines() if Path(audit_log).exists() else []
    return {json.loads(line).get("event_type") for line in lines} - {None}


class TestDryRunOnAShortVarchar:
    def test_the_dry_run_names_the_rows_the_run_fails_with_their_lengths(
        self,
        request: pytest.FixtureRequest,
        varchar_table: str,
        postgres_url: str,
        hybrid_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        case = request.node.callspec.params["hybrid_env"]
        known = case != "vault-no-wrap"
        args = ["--database", postgres_url, "--table", varchar_table, "--column", "ssn"]
        before = _rows(postgres_url, varchar_table)
        code, out, err = run_main(["migrate", *args, "--dry-run", "--json"], capsys)
        assert code == 3, err
        dry = json.loads(out)
        assert dry["dry_run"] is True
        # Without the key's version and type, no value is certain to fit: the short ones may
        # not (fail closed), the long ones certainly do not.
        assert (dry["completed"], dry["failed"]) == ((40, 20) if known else (0, 60))
        certain = [f for f in dry["failures"] if "may not fit" not in f["message"]]
        predicted = _lengths(certain, "will be")
        assert sorted(predicted) == list(range(41, 61))
        assert all("holds at most 520 (varchar(520))" in f["message"] for f in dry["failures"])
        # Nothing sealed, nothing written, nothing journaled.
        # What a dry run audited before it checked the width: the run, its batches, the env
        # key's decrypts; no encrypt (nothing sealed), no key event (the key is only read).
        events = {"job.run", "reencrypt.batch", "crypto.decrypt"}
        assert _event_types(hybrid_env["HMD_AUDIT_LOG"]) == events
        assert _rows(postgres_url, varchar_table) == before
        with psycopg.connect(postgres_url) as db:
            journal = db.execute("SELECT to_regclass('heimdall_kms_journal')").fetchone()[0]
            if journal:
                rows = db.execute(
                    "SELECT count(*) FROM heimdall_kms_journal WHERE table_name = %s",
                    [varchar_table],
                ).fetchone()
                assert rows is not None and rows[0] == 0
        code, out, _ = run_main(["migrate", *args, "--dry-run"], capsys)
        assert code == 3
        assert out.count("its new value will be") == (20 if known else 50)  # 50 shown
        if case == "vault-no-wrap":  # the real run needs a token that may wrap
            root: OpenBao = request.getfixturevalue("openbao")
            monkeypatch.setenv("HMD_VAULT_TOKEN", root.env()["HMD_VAULT_TOKEN"])
        code, out, err = run_main(["migrate", *args, "--json"], capsys)
        assert code == 3, err
        real = _lengths(json.loads(out)["failures"], "is")
        if known:
            assert real == predicted  # exact
        else:
            assert sorted(real) == sorted(predicted)
            assert all(predicted[i] <= real[i] for i in real)  # a lower bound
        after = _rows(postgres_url, varchar_table)
        assert all(isinstance(parse(after[i]), KmsV1Envelope) for i in range(1, 41))
        assert max(len(after[i]) for i in range(1, 41)) <= 520


class TestReencryptDryRun:
    """A rewrap to v10 adds three characters (the version's digit, three times): a column
    sized to the v1 envelopes no longer holds the longest ones (on AWS too, whose wrapped
    length the dry run measures)."""

    @pytest.mark.parametrize("kms", ["local", "aws-native", "aws-aliases"])
    def test_rewrap_and_full(
        self,
        request: pytest.FixtureRequest,
        kms: str,
        postgres_url: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        if kms == "local":
            env = hybrid_local_env(tmp_path, monkeypatch, MASTER_HEX)
        else:
            versioning = AWSKeyVersioning(kms.removeprefix("aws-"))
            env = _aws_env(request.getfixturevalue("moto"), versioning, tmp_path, monkeypatch)
        values = {
            i: legacy_envelope(MASTER_HEX, "123-45-6789" if i <= 10 else "y" * 60)
            for i in range(1, 21)
        }
        with postgres_table(postgres_url, "text", values) as name:
            args = ["--database", postgres_url, "--table", name, "--column", "ssn"]
            assert run_main(["migrate", *args], capsys)[0] == 0
            with psycopg.connect(postgres_url, autocommit=True) as db:
                row = db.execute(f"SELECT max(length(ssn)) FROM {name}").fetchone()
                assert row is not None
                db.execute(f"ALTER TABLE {name} ALTER COLUMN ssn TYPE varchar({row[0]})")
            with heimdall_kms.from_env(env, audit=MemoryAuditSink()) as crypto:
                assert crypto.kms is not None
                for _ in range(9):
                    key_admin(crypto.kms).rotate()
            before = _rows(postgres_url, name)
            for mode in ("rewrap", "full"):
                code, out, err = run_main(
                    ["reencrypt", *args, "--mode", mode, "--dry-run", "--json"], capsys
                )
                assert code == 3, err
                failures = json.loads(out)["failures"]
                assert not [f for f in failures if "may not fit" in f["message"]]
                dry = _lengths(failures, "will be")
                assert sorted(dry) == list(range(11, 21))
                assert _rows(postgres_url, name) == before
            code, out, err = run_main(["reencrypt", *args, "--json"], capsys)
            assert code == 3, err
            assert _lengths(json.loads(out)["failures"], "is") == dry
            # Back to the legacy format: shorter than every kms_v1 value, so all of it fits.
            code, out, err = run_main(
                ["reencrypt", *args, "--mode", "legacy", "--dry-run", "--json"], capsys
            )
            assert code == 0, err
            assert (json.loads(out)["completed"], json.loads(out)["failed"]) == (20, 0)
            assert _rows(postgres_url, name) != before  # (the rewrap above wrote rows 1..10)


# -- the same on AWS KMS (moto's server), whose wrapped key's length no document gives ---------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


def _aws_env(
    moto: MotoServer, versioning: AWSKeyVersioning, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Hybrid mode on a fresh moto key (``versioning``'s scheme), set in ``os.environ``."""
    admin = moto.client()
    alias = f"alias/fit-{secrets.token_hex(4)}"
    if versioning is AWSKeyVersioning.ALIASES:
        create_key_for_alias(admin, alias)
    else:
        admin.create_alias(AliasName=alias, TargetKeyId=admin.create_key()["KeyMetadata"]["KeyId"])
    env = moto.env(
        alias,
        HMD_ENCRYPTION_MODE="hybrid",
        HMD_PII_MASTER_KEY=MASTER_HEX,
        HMD_AWS_KEY_VERSIONING=versioning.value,
        HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
    )
    for name in [n for n in os.environ if n.startswith(("HMD_", "AWS_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _failed(report: dict[str, Any]) -> dict[int, str]:
    return {int(f["id"]): f["message"] for f in report["failures"]}


@pytest.mark.parametrize("versioning", list(AWSKeyVersioning))
def test_aws_dry_run_names_exactly_the_rows_the_run_fails(
    moto: MotoServer,
    versioning: AWSKeyVersioning,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A column exactly as wide as the longest short value's new envelope, then one character
    narrower: the dry run fails the same rows as the real run, each with its exact length (one
    wrap of a throwaway DEK measures AWS's wrapped key), none "may not fit"."""
    env = _aws_env(moto, versioning, tmp_path, monkeypatch)
    values = {
        i: legacy_envelope(MASTER_HEX, f"{i:03d}-12-{i:04d}" if i <= 20 else "x" * (90 + i))
        for i in range(1, 31)
    }
    with postgres_table(postgres_url, "text", values) as name:
        args = ["--database", postgres_url, "--table", name, "--column", "ssn"]
        # The real lengths, from a real run (then the legacy values put back).
        assert run_main(["migrate", *args], capsys)[0] == 0
        sealed = {i: len(text) for i, text in _rows(postgres_url, name).items()}
        widest = max(sealed[i] for i in range(1, 21))
        assert all(sealed[i] > widest for i in range(21, 31))
        for width in (widest, widest - 1):
            with psycopg.connect(postgres_url, autocommit=True) as db:
                db.execute(f"ALTER TABLE {name} ALTER COLUMN ssn TYPE text")
                for key, value in values.items():
                    db.execute(f"UPDATE {name} SET ssn = %s WHERE id = %s", [value, key])
                db.execute(f"ALTER TABLE {name} ALTER COLUMN ssn TYPE varchar({width})")
            Path(env["HMD_AUDIT_LOG"]).unlink(missing_ok=True)
            before = _rows(postgres_url, name)
            code, out, err = run_main(["migrate", *args, "--dry-run", "--json"], capsys)
            assert code == 3, err
            dry = json.loads(out)
            assert not [m for m in _failed(dry).values() if "may not fit" in m]
            expected = {i for i, length in sealed.items() if length > width}
            assert set(_failed(dry)) == expected
            assert _lengths(dry["failures"], "will be") == {i: sealed[i] for i in expected}
            assert (dry["completed"], dry["failed"]) == (30 - len(expected), len(expected))
            assert dry["kms_calls"] == 2  # the key read, the one measuring wrap
            # Nothing sealed, written or audited beyond what a dry run audits.
            assert _rows(postgres_url, name) == before
            assert _event_types(env["HMD_AUDIT_LOG"]) == {
                "job.run",
                "reencrypt.batch",
                "crypto.decrypt",
            }
            code, out, err = run_main(["migrate", *args, "--json"], capsys)
            assert code == 3, err
            real = json.loads(out)
            assert set(_failed(real)) == expected
            assert _lengths(real["failures"], "is") == {i: sealed[i] for i in expected}
        assert any(sealed[i] == widest for i in range(1, 21))  # the narrower run failed one


# -- the measured length on every cloud provider ---------------------------------------------------


@pytest.fixture(scope="module")
def gcp_server() -> Iterator[FakeKMSServer]:
    server = start_fake_kms()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def azure_server() -> Iterator[FakeKeyVaultServer]:
    server = start_azure()
    yield server
    server.stop()


@pytest.fixture(
    scope="module",
    params=["aws-native", "aws-aliases", "gcp", "azure-rsa-2048", "azure-rsa-3072", "azure-oct"],
)
def cloud_crypto(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[heimdall_kms.Crypto]:
    """The facade in kms mode on one cloud KMS's key (moto, the GCP and Azure fakes)."""
    tmp = tmp_path_factory.mktemp("cloud")
    kind: str = request.param
    if kind.startswith("aws"):
        versioning = AWSKeyVersioning(kind.removeprefix("aws-"))
        env = aws_cloud(request.getfixturevalue("moto"), versioning, tmp).env
    elif kind == "gcp":
        server: FakeKMSServer = request.getfixturevalue("gcp_server")
        env = gcp_cloud(server, rest_client(server.url), "rest", tmp).env
    else:
        azure: FakeKeyVaultServer = request.getfixturevalue("azure_server")
        key = f"fit-{secrets.token_hex(4)}"
        if kind == "azure-oct":
            azure.vault.create_key(key, kty="oct-HSM", size=256)
        else:
            azure.vault.create_key(key, size=int(kind.rsplit("-", 1)[1]))
        env = azure_env(azure, key, tmp)
    # The SDKs' credential chains read the process environment.
    with pytest.MonkeyPatch.context() as patch:
        for name in [n for n in os.environ if n.startswith(("HMD_", "AWS_", "AZURE_"))]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        made = heimdall_kms.from_env(env, audit=MemoryAuditSink())
        yield made
        made.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plaintexts=st.lists(st.text(_TEXT, max_size=300), min_size=1, max_size=3), ctx=CONTEXTS)
def test_one_wrap_measures_a_cloud_key(
    cloud_crypto: heimdall_kms.Crypto,
    plaintexts: list[str],
    ctx: dict[str, str],
) -> None:
    """The length one throwaway wrap measures is the sealed envelopes' own, exactly, under
    any context (the measuring wrap's is another)."""
    kms = cloud_crypto.kms
    assert kms is not None
    unmeasured = size_model(kms, key_admin(kms).describe())
    assert unmeasured.body.most is None and not unmeasured.exact  # no document says
    model = measure(kms, {"table": "t", "field": "ssn", "record": "1"})
    assert model is not None and model.exact
    context = check_context(ctx)
    envelopes = cloud_crypto.encrypt_many([(text, context) for text in plaintexts])
    for text, envelope in zip(plaintexts, envelopes, strict=True):
        assert isinstance(envelope, KmsV1Envelope)
        assert model.versions == (envelope.key_version, envelope.key_version)
        for slot in slots(OLD):
            need = model.sealed(slot, len(text.encode("utf-8")), context)
            assert need.least == need.most == len(slot.put(envelope.to_json()))
        [again] = cloud_crypto.rewrap_outcomes([envelope])
        assert isinstance(again, KmsV1Envelope)
        for slot in slots(envelope.to_json()):
            need = model.rewrapped(slot, envelope)
            assert need.least == need.most == len(slot.put(again.to_json()))


def test_an_identity_that_may_not_wrap_leaves_the_length_unknown(
    azure_server: FakeKeyVaultServer,
) -> None:
    """Azure's unwrap-only worker may not read the key to wrap with: nothing is measured, and
    the dry run keeps the lower bound ("may not fit")."""
    key = f"fit-{secrets.token_hex(4)}"
    azure_server.vault.create_key(key)
    azure_server.vault.add_principal(*WORKER, UNWRAP_ONLY)
    worker = AzureKeyVaultProvider(key_client(azure_server, WORKER), key)
    try:
        assert measure(worker, {"field": "ssn"}) is None
    finally:
        worker.close()


def test_a_context_the_kms_refuses_leaves_the_length_unknown(
    gcp_server: FakeKMSServer, tmp_path: Path
) -> None:
    """Cloud KMS refuses more than 8 KiB of DEK and associated data: a first value with such a
    context measures nothing (the run fails that row), and the dry run does not stop."""
    key = gcp_cloud(gcp_server, rest_client(gcp_server.url), "rest", tmp_path).key_identifier
    kms = GCPKMSProvider(rest_client(gcp_server.url), key)
    try:
        assert measure(kms, {"field": "x" * 9000}) is None
        assert measure(kms, {"field": "x"}) is not None
    finally:
        kms.close()
