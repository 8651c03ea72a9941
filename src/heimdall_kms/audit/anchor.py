"""The off-host anchor: every signed checkpoint, INSERTed into a PostgreSQL table.

The writers' role may only INSERT (``ANCHOR_SQL``, in ``docs/audit.md`` too): nobody on the
application host can change or remove what the anchor recorded, so a log that is later
shorter than, behind or different from it shows. Inserting runs on a background thread with
a bounded queue, so a slow or unreachable anchor never holds an operation up; while it lags,
``heimdall_audit_anchor_lag_seconds`` grows and failures are counted (the checkpoints stay
queued and in ``<log>.checkpoints``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from heimdall_kms.audit.checkpoint import Checkpoint
from heimdall_kms.audit_settings import DEFAULT_ANCHOR_TABLE, check_table
from heimdall_kms.errors import ConfigurationError, StoreError

__all__ = ["ANCHOR_SQL", "AnchorWriter", "anchor_sql", "read_anchor"]


ANCHOR_SQL = """\
CREATE TABLE {table} (
    log_id      text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    signed_at   timestamptz NOT NULL,
    checkpoint  text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON {table} (log_id, seq);
REVOKE ALL ON {table} FROM PUBLIC;
CREATE ROLE {writer} LOGIN;
GRANT INSERT ON {table} TO {writer};
CREATE ROLE {reader} LOGIN;
GRANT SELECT ON {table} TO {reader};
"""


def anchor_sql(
    table: str = DEFAULT_ANCHOR_TABLE,
    writer: str = "heimdall_anchor_writer",
    reader: str = "heimdall_anchor_reader",
) -> str:
    """The documented SQL for these names (give the roles passwords or certificates after)."""
    for name in (table, writer, reader):
        check_table(name)
    return ANCHOR_SQL.format(table=table, writer=writer, reader=reader)


_INSERT = (
    "INSERT INTO {table} (log_id, seq, hash, signed_at, checkpoint) VALUES (%s, %s, %s, %s, %s)"
)
_FIRST_BACKOFF, _MAX_BACKOFF = 0.2, 10.0  # seconds between retries, doubling


class AnchorWriter:
    """Inserts checkpoints on a daemon thread; :meth:`put` never blocks."""

    def __init__(
        self,
        url: str,
        table: str = DEFAULT_ANCHOR_TABLE,
        *,
        timeout_seconds: float = 5.0,
        on_failure: Callable[[], None] = lambda: None,
        on_lag: Callable[[float], None] = lambda _: None,
        capacity: int = 10_000,
    ) -> None:
        self._url = url
        self._insert = _INSERT.format(table=check_table(table))
        self._timeout = timeout_seconds
        self._on_failure = on_failure
        self._on_lag = on_lag
        self._queue: queue.Queue[Checkpoint | None] = queue.Queue(capacity)
        self._pending: list[Checkpoint] = []  # taken from the queue, not yet inserted
        self._thread = threading.Thread(target=self._run, name="heimdall-anchor", daemon=True)
        self._thread.start()

    def put(self, checkpoint: Checkpoint) -> None:
        """Queue a checkpoint for the anchor; when the queue is full it is counted as a
        failure (it is still in ``<log>.checkpoints``)."""
        try:
            self._queue.put_nowait(checkpoint)
        except queue.Full:
            self._on_failure()

    def close(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout``, default the writer's) for the queue to drain; True when
        everything queued reached the anchor."""
        wait = self._timeout if timeout is None else timeout
        try:
            self._queue.put(None, timeout=wait)
        except queue.Full:
            return False
        self._thread.join(wait)
        return not self._thread.is_alive() and not self._pending

    def _run(self) -> None:
        connection: Any = None
        backoff = _FIRST_BACKOFF
        while self._pending or self._wait_first():
            closing = self._drain()
            connection = self._insert_or_count(connection)
            if closing:
                break  # a failure while closing: what is left is in <log>.checkpoints
            if connection is None:
                time.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            else:
                backoff = _FIRST_BACKOFF
        _discard(connection)

    def _wait_first(self) -> bool:
        """Wait for a checkpoint and make it pending; False at the close marker."""
        first = self._queue.get()
        if first is None:
            return False
        self._pending.append(first)
        return True

    def _insert_or_count(self, connection: Any) -> Any:
        """Insert the pending rows; the connection for the next insert (None after a failure,
        which is counted: the rows stay pending)."""
        try:
            connection = connection or _connect(self._url, self._timeout)
            self._insert_pending(connection)
        except Exception:  # noqa: BLE001 - any failure: count it, keep the rows, retry
            self._failed(connection)
            return None
        return connection

    def _insert_pending(self, connection: Any) -> None:
        """Insert every pending row in one transaction; they leave the queue once committed."""
        with connection.cursor() as cursor:
            for checkpoint in self._pending:
                cursor.execute(self._insert, _row(checkpoint))
        connection.commit()
        self._pending.clear()
        self._on_lag(0.0)

    def _failed(self, connection: Any) -> None:
        """Count a failed write, drop its connection and report how far the anchor lags."""
        self._on_failure()
        _discard(connection)
        oldest = min(c.moment.timestamp() for c in self._pending)
        self._on_lag(max(0.0, time.time() - oldest))

    def _drain(self) -> bool:
        """Move what is queued to the pending rows; True when the close marker was among it."""
        closing = False
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return closing
            if item is None:
                closing = True
            else:
                self._pending.append(item)


def _row(checkpoint: Checkpoint) -> tuple[Any, ...]:
    return (
        checkpoint.log_id,
        checkpoint.seq,
        checkpoint.hash,
        checkpoint.moment,
        checkpoint.to_json(),
    )


def _connect(url: str, timeout: float) -> Any:
    import psycopg  # noqa: PLC0415 - the postgres extra

    return psycopg.connect(url, connect_timeout=max(1, int(timeout)))


def _discard(connection: Any) -> Any:
    if connection is not None:
        with contextlib.suppress(Exception):  # already broken
            connection.close()
    return None


def read_anchor(url: str, table: str, log_id: str) -> list[tuple[str, str]]:
    """Every row the anchor holds for ``log_id``: the checkpoint's JSON as inserted, and when
    the anchor recorded it (its own clock). Rows are parsed and checked by the caller.

    Raises:
        ConfigurationError: the postgres extra is missing, or the table name is not plain.
        StoreError: the anchor cannot be read.
    """
    try:
        import psycopg  # noqa: PLC0415 - the postgres extra
    except ImportError:
        raise ConfigurationError("the anchor needs: pip install 'heimdall-kms[postgres]'") from None
    query = (
        f"SELECT checkpoint, recorded_at FROM {check_table(table)} "  # noqa: S608 - checked name
        "WHERE log_id = %s ORDER BY seq, recorded_at"
    )
    try:
        with psycopg.connect(url, connect_timeout=10) as connection:
            rows = connection.execute(query, (log_id,)).fetchall()
    except psycopg.Error as exc:
        raise StoreError(f"cannot read the audit anchor ({type(exc).__name__})") from None
    return [(str(text), recorded.isoformat()) for text, recorded in rows]
