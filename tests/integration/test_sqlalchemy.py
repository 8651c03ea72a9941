"""``heimdall_kms.sqlalchemy`` (SPEC §11) on SQLite and PostgreSQL, against a live OpenBao.

The Vault provider talks to the server through a ``CountingSession``, so every Transit
request is counted; the audit events land in a memory sink.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.exc import SQLAlchemyError, StatementError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import heimdall_kms
from heimdall_kms.audit import MemoryAuditSink
from heimdall_kms.config import Settings
from heimdall_kms.envelope import KmsV1Envelope, parse
from heimdall_kms.errors import (
    HeimdallKMSError,
    IntegrityError,
    InvalidInputError,
    MalformedEnvelopeError,
)
from heimdall_kms.providers.vault.transit import VaultTransitProvider
from heimdall_kms.service import Crypto
from heimdall_kms.sqlalchemy import Encrypted, Stored, attach
from tests.legacy_data import legacy_envelope
from tests.servers import TRANSIT_KEY, CountingSession, OpenBao, run_cli

pytestmark = pytest.mark.vault

MASTER_HEX = "ab" * 32
ROWS = 300
BATCH = 250  # the Vault provider's default batch size
SCOPE = {"actor": "alice", "reason": "support-ticket-7", "request_id": "req-orm-1"}
SCOPE_ARGS = {"actor": "alice", "reason": "support-ticket-7"}


def ssn(i: int) -> str:
    return f"{i:03d}-55-{i:04d}"


@dataclass
class Database:
    """One model on a table of its own, in SQLite or PostgreSQL."""

    engine: Engine
    cli_url: str  # the URL heimdall-kms is given
    model: Any
    table: str

    def raw(self) -> dict[int, str | None]:
        with self.engine.connect() as connection:
            rows = connection.execute(text(f"SELECT id, ssn FROM {self.table} ORDER BY id"))
            return {int(row[0]): row[1] for row in rows}

    def set_raw(self, values: dict[int, str]) -> None:
        with self.engine.begin() as connection:
            for row_id, value in values.items():
                connection.execute(
                    text(f"UPDATE {self.table} SET ssn = :v WHERE id = :id"),
                    {"v": value, "id": row_id},
                )


def make_model(table: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(primary_key=True)  # autoincrement
        name: Mapped[str]
        ssn: Mapped[str | None] = mapped_column(Encrypted())
        email: Mapped[str | None] = mapped_column(Encrypted())

    return Person


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    table = f"people_{secrets.token_hex(4)}"
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'app.db'}"
        cli_url = url
    else:
        cli_url = request.getfixturevalue("postgres_url")
        url = cli_url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    model = make_model(table)
    model.metadata.create_all(engine)
    yield Database(engine, cli_url, model, table)
    model.metadata.drop_all(engine)
    engine.dispose()


@dataclass
class Counted:
    crypto: Crypto
    http: CountingSession
    audit: MemoryAuditSink

    def transit(self, operation: str) -> int:
        return len([s for s in self.http.sent if f"/transit/{operation}/" in s])


@pytest.fixture
def counted(openbao: OpenBao) -> Iterator[Counted]:
    http = CountingSession()
    client = hvac.Client(url=openbao.addr, token=openbao.root_token, session=http)
    provider = VaultTransitProvider(client, TRANSIT_KEY, batch_size=BATCH)
    sink = MemoryAuditSink()
    with Crypto(Settings.from_env(openbao.env()), kms=provider, audit=sink) as crypto:
        yield Counted(crypto, http, sink)


def sessions(database: Database, counted: Counted) -> sessionmaker[Session]:
    return attach(sessionmaker(database.engine), counted.crypto)


def write_rows(database: Database, counted: Counted, *, explicit_ids: bool = False) -> None:
    person = database.model
    with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
        session.add_all(
            person(id=i if explicit_ids else None, name=f"n{i}", ssn=ssn(i))
            for i in range(1, ROWS + 1)
        )
        session.commit()


class TestEncryptedColumn:
    @pytest.mark.parametrize("explicit_ids", [False, True], ids=["autoincrement", "given-ids"])
    def test_one_commit_of_300_rows_is_bound_to_each_record(
        self,
        database: Database,
        counted: Counted,
        explicit_ids: bool,
        openbao: OpenBao,
        tmp_path: Path,
    ) -> None:
        write_rows(database, counted, explicit_ids=explicit_ids)
        assert counted.transit("encrypt") == math.ceil(ROWS / BATCH)  # one encrypt_many
        stored = database.raw()
        assert len(stored) == ROWS
        for row_id, value in stored.items():
            assert value is not None
            envelope = parse(value)
            assert isinstance(envelope, KmsV1Envelope)
            assert dict(envelope.context) == {
                "table": database.table,
                "field": "ssn",
                "record": str(row_id),
            }
            assert ssn(row_id) not in value
        if database.engine.url.get_backend_name() == "sqlite":
            # Not in any page of the file either: no INSERT ever carried the plaintext.
            data = Path(str(database.engine.url.database)).read_bytes()
            assert not any(ssn(i).encode() in data for i in range(1, ROWS + 1))
        # The census sees what `migrate` would have written.
        done = run_cli(
            [
                "status",
                "--database",
                database.cli_url,
                "--table",
                database.table,
                "--column",
                "ssn",
                "--fail-if-legacy",
                "--json",
            ],
            openbao.env(HMD_AUDIT_LOG=str(tmp_path / "audit.log")),
        )
        assert done.returncode == 0, done.stderr.decode()
        assert '"kms_v1"' in done.stdout.decode()

    def test_a_value_migrated_by_the_cli_reads_through_the_orm(
        self, database: Database, counted: Counted, openbao: OpenBao, tmp_path: Path
    ) -> None:
        with database.engine.begin() as connection:
            for i in (1, 2, 3):
                connection.execute(
                    text(f"INSERT INTO {database.table} (id, name, ssn) VALUES (:i, :n, :v)"),
                    {"i": i, "n": f"n{i}", "v": legacy_envelope(MASTER_HEX, ssn(i))},
                )
        env = openbao.env(
            HMD_ENCRYPTION_MODE="hybrid",
            HMD_PII_MASTER_KEY=MASTER_HEX,
            HMD_AUDIT_LOG=str(tmp_path / "audit.log"),
        )
        done = run_cli(
            [
                "migrate",
                "--database",
                database.cli_url,
                "--table",
                database.table,
                "--column",
                "ssn",
                "--actor",
                "migrator",
            ],
            env,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert all(parse(v or "").encryption_version == "kms_v1" for v in database.raw().values())
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            people = session.scalars(select(database.model).order_by(database.model.id)).all()
            assert [p.ssn for p in people] == [ssn(1), ssn(2), ssn(3)]

    def test_loading_300_rows_takes_at_most_3_decrypt_requests(
        self, database: Database, counted: Counted
    ) -> None:
        write_rows(database, counted)
        counted.http.sent.clear()
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            people = session.scalars(select(database.model)).all()
            assert counted.transit("decrypt") == 0  # nothing opened before it is read
            assert {p.id: p.ssn for p in people} == {i: ssn(i) for i in range(1, ROWS + 1)}
        assert 1 <= counted.transit("decrypt") <= 3

    def test_swapped_ciphertexts_fail_with_the_integrity_error(
        self, database: Database, counted: Counted
    ) -> None:
        write_rows(database, counted)
        stored = database.raw()
        database.set_raw({1: stored[2] or "", 2: stored[1] or ""})
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            first, second, third = (session.get(database.model, i) for i in (1, 2, 3))
            for person in (first, second):
                with pytest.raises(IntegrityError):
                    _ = person.ssn
            assert third.ssn == ssn(3)

    def test_reads_outside_a_scope_fail_typed(self, database: Database, counted: Counted) -> None:
        write_rows(database, counted)
        with sessions(database, counted)() as session:
            person = session.get(database.model, 5)
            assert person.name == "n5"  # the row loads; its PII does not open
            with pytest.raises(InvalidInputError, match="actor"):
                _ = person.ssn
            with heimdall_kms.scope(**SCOPE):
                assert person.ssn == ssn(5)  # the same instance, once a scope says who

    def test_every_audit_event_carries_the_scope(
        self, database: Database, counted: Counted
    ) -> None:
        write_rows(database, counted)
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            assert len([p.ssn for p in session.scalars(select(database.model))]) == ROWS
        events = counted.audit.events
        assert len(events) == 2 * ROWS
        assert {(e.actor, e.reason, e.request_id) for e in events} == {tuple(SCOPE.values())}

    def test_a_session_not_attached_refuses_plaintext(
        self, database: Database, counted: Counted
    ) -> None:
        with Session(database.engine) as session:
            session.add(database.model(name="x", ssn=ssn(1)))
            with pytest.raises(StatementError, match="attached") as caught:
                session.commit()
        assert isinstance(caught.value.orig, InvalidInputError)
        assert database.raw() == {}


class TestEncryptedColumnFailures:
    @pytest.mark.parametrize("explicit_ids", [False, True], ids=["autoincrement", "given-ids"])
    def test_a_kms_failure_writes_nothing_and_keeps_the_plaintext(
        self, database: Database, openbao: OpenBao, explicit_ids: bool
    ) -> None:
        refused = hvac.Client(url=openbao.addr, token="not-a-token")
        provider = VaultTransitProvider(refused, TRANSIT_KEY)
        with Crypto(Settings.from_env(openbao.env()), kms=provider, audit=MemoryAuditSink()) as c:
            factory = attach(sessionmaker(database.engine), c)
            person = database.model(id=7 if explicit_ids else None, name="n", ssn=ssn(7))
            with heimdall_kms.scope(**SCOPE), factory() as session:
                session.add(person)
                with pytest.raises(HeimdallKMSError):
                    session.commit()
        assert database.raw() == {}  # no row, no placeholder: the transaction rolled back
        assert person.ssn == ssn(7)  # the application's value is still there to retry

    def test_an_update_is_sealed_for_its_row(self, database: Database, counted: Counted) -> None:
        write_rows(database, counted)
        factory = sessions(database, counted)
        with heimdall_kms.scope(**SCOPE):
            with factory() as session:
                person = session.get(database.model, 9)
                person.ssn = "999-99-9999"
                session.commit()
            with factory() as session:
                assert session.get(database.model, 9).ssn == "999-99-9999"
        envelope = parse(database.raw()[9] or "")
        assert isinstance(envelope, KmsV1Envelope)
        assert envelope.context["record"] == "9"


class TestEncryptedColumnReads:
    def test_each_column_fails_on_its_own(self, database: Database, counted: Counted) -> None:
        person = database.model
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            session.add_all(
                [person(id=i, name="n", ssn=ssn(i), email=f"{i}@x.test") for i in (1, 2)]
            )
            session.commit()
        stored = database.raw()
        database.set_raw({1: stored[2] or "", 2: stored[1] or ""})  # ssn only
        with heimdall_kms.scope(**SCOPE), sessions(database, counted)() as session:
            first = session.get(person, 1)
            assert first.email == "1@x.test"  # opens the batch; its ssn fails in it
            with pytest.raises(IntegrityError):
                _ = first.ssn
            assert first.email == "1@x.test"

    def test_the_default_expire_on_commit_reads_back(
        self, database: Database, counted: Counted
    ) -> None:
        factory = attach(sessionmaker(database.engine), counted.crypto)  # expire_on_commit=True
        with factory() as session:
            with heimdall_kms.scope(**SCOPE):
                person = database.model(name="n", ssn=ssn(1))
                session.add(person)
                session.commit()
            with pytest.raises(InvalidInputError):
                _ = person.ssn  # refreshed outside a scope
            with heimdall_kms.scope(**SCOPE):
                assert person.ssn == ssn(1)

    def test_legacy_values_read_in_hybrid_and_plaintext_fails_typed(
        self, database: Database, openbao: OpenBao
    ) -> None:
        with database.engine.begin() as connection:
            for i, value in ((1, legacy_envelope(MASTER_HEX, ssn(1))), (2, ssn(2))):
                connection.execute(
                    text(f"INSERT INTO {database.table} (id, name, ssn) VALUES (:i, 'n', :v)"),
                    {"i": i, "v": value},
                )
        settings = openbao.env(HMD_ENCRYPTION_MODE="hybrid", HMD_PII_MASTER_KEY=MASTER_HEX)
        with heimdall_kms.from_env(settings, audit=MemoryAuditSink()) as crypto:
            factory = attach(sessionmaker(database.engine), crypto)
            with heimdall_kms.scope(**SCOPE), factory() as session:
                legacy, plain = session.get(database.model, 1), session.get(database.model, 2)
                assert legacy.ssn == ssn(1)
                with pytest.raises(MalformedEnvelopeError) as caught:
                    _ = plain.ssn
                assert ssn(2) not in str(caught.value)

    def test_expired_rows_queried_again_open_in_one_batch(
        self, database: Database, counted: Counted
    ) -> None:
        factory = attach(sessionmaker(database.engine), counted.crypto)  # expire_on_commit=True
        with heimdall_kms.scope(**SCOPE), factory() as session:
            session.add_all(database.model(name="n", ssn=ssn(i)) for i in range(1, ROWS + 1))
            session.commit()  # every instance is expired now
            counted.http.sent.clear()
            people = session.scalars(select(database.model)).all()  # refreshes them all
            assert counted.transit("decrypt") == 0
            assert {p.id: p.ssn for p in people} == {i: ssn(i) for i in range(1, ROWS + 1)}
            assert 1 <= counted.transit("decrypt") <= 3

    def test_a_failed_insert_keeps_the_plaintext_for_a_retry(
        self, database: Database, counted: Counted
    ) -> None:
        write_rows(database, counted, explicit_ids=True)
        factory = sessions(database, counted)
        clash = database.model(id=1, name="dup", ssn="000-00-0000")  # id 1 exists
        with heimdall_kms.scope(**SCOPE), factory() as session:
            session.add(clash)
            with pytest.raises(SQLAlchemyError):
                session.commit()  # sealed in before_flush, then the INSERT fails
        assert clash.ssn == "000-00-0000"  # the envelope put in its place is gone again
        with heimdall_kms.scope(**SCOPE), factory() as session:
            assert session.get(database.model, 1).ssn == ssn(1)  # the row is untouched

    def test_a_session_not_attached_reads_unopened_values(
        self, database: Database, counted: Counted
    ) -> None:
        write_rows(database, counted, explicit_ids=True)
        with Session(database.engine) as session:
            value = session.get(database.model, 1).ssn
        assert isinstance(value, Stored)
        assert ssn(1) not in repr(value)
        assert counted.crypto.decrypt(value.text, **SCOPE_ARGS) == ssn(1)
