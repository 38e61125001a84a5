"""Central's PostgreSQL store: the same port as SQLite's ``CentralStore``.

The port is ``await store.run(op)``: ``op(conn)`` runs inside a transaction and its result
is returned once that transaction has committed. Central's operations are synchronous
functions of a DB-API-shaped connection (``conn.execute(sql, params)`` → a cursor with
``fetchone``/``fetchall``/``rowcount``/``lastrowid``), so one code path serves both stores.

Here that connection is :class:`PgConn`, a synchronous facade over one **asyncpg**
connection. It lives on the store's writer thread, which owns a private event loop: each
``execute`` runs the prepared statement on that loop (``run_until_complete``) and returns
its rows. The service's own event loop never waits on PostgreSQL; it awaits the writer as
it does SQLite's. Statements are translated once (:mod:`central.adapters.postgres_dialect`)
and kept prepared; parameters are coerced to the types PostgreSQL inferred (SQLite binds
any value to any column; asyncpg does not), and ``numeric`` results (``sum`` of a BIGINT)
come back as ``int`` — money is integer fen.

Group commit as on SQLite: the writer takes every operation queued while the previous commit
was in flight and runs them in one transaction, each in a savepoint so one failing operation
rolls back alone. Transactions are ``SERIALIZABLE``: SQLite's single writer makes every
operation see the others as if one ran after another, and central's operations rely on it —
a refund checks what was already refunded before it writes, a cancel reads the balance it
pays out. With several workers only SERIALIZABLE keeps that (REPEATABLE READ would let two
refunds of one sale on two workers each see "nothing refunded yet": write skew). When
PostgreSQL cannot order two transactions it refuses one with a serialization failure, and
the writer runs that whole batch again (:data:`SERIALIZATION_RETRIES`). Idempotency is
carried by the same unique constraints as on SQLite (``INSERT … ON CONFLICT DO NOTHING``),
never by Python locks.

Constraint violations are raised as :class:`sqlite3.IntegrityError`, the exception central's
operations already catch; the statement that failed is rolled back to the savepoint the
operation or :func:`~edge_agent.adapters.sqlite_store.savepoint` opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg

from central.adapters.postgres_dialect import FUNCTIONS, translate
from central.adapters.postgres_schema import MIGRATION_LOCK_KEY, migrate
from central.ingest import HolderCache
from edge_agent.adapters.sqlite_store import (
    PendingOp,
    StoreError,
    StoreStats,
    StoreUnavailableError,
    apply_ops,
    next_batch,
    settle,
)

__all__ = ["PgConn", "PostgresCentralStore"]

T = TypeVar("T")

#: How often a batch refused with a serialization failure or deadlock is run again.
SERIALIZATION_RETRIES = 20
#: Prepared statements kept per connection (central has a few hundred distinct statements).
STATEMENT_CACHE = 2048
_RETRY_CODES = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_INT_TYPES = {"int2", "int4", "int8"}


class _RetryBatch(BaseException):
    """The transaction lost a race with another worker: run the batch again."""


class _ArgumentTypeError(Exception):
    """asyncpg refused a parameter's Python type before sending anything (SQLite binds any
    value to any column): the statement is sent again with parameters coerced."""


_ARGUMENT_REFUSED = "invalid input for query argument"


class PgCursor:
    """What ``execute`` returns: the rows, ``rowcount`` and ``lastrowid`` (sqlite3-shaped)."""

    __slots__ = ("_next", "_rows", "lastrowid", "rowcount")

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, lastrowid: int | None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows, self._next = self._rows[self._next :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row


def _coercer(type_name: str) -> Callable[[Any], Any] | None:
    if type_name in _INT_TYPES:
        return lambda v: int(v) if isinstance(v, (str, float)) and not isinstance(v, bool) else v
    if type_name == "bool":
        return lambda v: bool(v) if isinstance(v, int) else v
    if type_name in ("text", "varchar", "json", "jsonb"):
        return lambda v: str(v) if isinstance(v, (int, float)) else v
    if type_name == "float8":
        return lambda v: float(v) if isinstance(v, int) else v
    if type_name == "bytea":
        return lambda v: v.encode() if isinstance(v, str) else v
    return None


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


@dataclass(slots=True)
class _Statement:
    prepared: asyncpg.prepared_stmt.PreparedStatement
    key: str | None
    coerce: list[tuple[int, Callable[[Any], Any]]]
    numeric: list[int]


class PgConn:
    """The synchronous, sqlite3-shaped connection central's operations get (writer thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pg: asyncpg.Connection) -> None:
        self._loop = loop
        self._pg = pg
        self._statements: dict[str, _Statement] = {}
        self.dialect = "postgresql"

    def _wait(self, awaitable: Any, sql: str = "") -> Any:
        try:
            return self._loop.run_until_complete(awaitable)
        except asyncpg.PostgresError as exc:
            code = getattr(exc, "sqlstate", None)
            if code in _RETRY_CODES:
                raise _RetryBatch(str(exc)) from exc
            if type(exc) is asyncpg.DataError and str(exc).startswith(_ARGUMENT_REFUSED):
                raise _ArgumentTypeError(str(exc)) from exc
            if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
                raise sqlite3.IntegrityError(str(exc)) from exc
            where = f" in: {sql[:300]}" if sql else ""
            raise sqlite3.OperationalError(f"{type(exc).__name__}: {exc}{where}") from exc

    def _statement(self, sql: str) -> _Statement:
        statement = self._statements.get(sql)
        if statement is None:
            text, key = translate(sql)
            prepared = self._wait(self._pg.prepare(text), text)
            coerce = [
                (i, fn)
                for i, t in enumerate(prepared.get_parameters())
                if (fn := _coercer(t.name)) is not None
            ]
            numeric = [
                i for i, a in enumerate(prepared.get_attributes()) if a.type.name == "numeric"
            ]
            if len(self._statements) >= STATEMENT_CACHE:
                self._statements.clear()
            statement = self._statements[sql] = _Statement(prepared, key, coerce, numeric)
        return statement

    @staticmethod
    def _args(statement: _Statement, params: Sequence[Any]) -> list[Any]:
        args = list(params)
        for i, fn in statement.coerce:
            if i < len(args) and args[i] is not None:
                args[i] = fn(args[i])
        return args

    def execute(self, sql: str, params: Sequence[Any] = ()) -> PgCursor:
        """Run one statement; its rows are all fetched (central's queries are bounded)."""
        if not params and _is_control(sql):
            self._wait(self._pg.execute(sql))
            return PgCursor([], -1, None)
        statement = self._statement(sql)
        try:  # as given first: coercing every parameter of a 2,560-parameter insert costs
            records = self._wait(statement.prepared.fetch(*params), sql)
        except _ArgumentTypeError:  # refused before anything was sent: coerce, send again
            records = self._wait(statement.prepared.fetch(*self._args(statement, params)), sql)
        if statement.numeric:
            rows = [
                tuple(_number(v) if i in statement.numeric else v for i, v in enumerate(r))
                for r in records
            ]
        else:
            rows = [tuple(r) for r in records]
        rowcount = _rowcount(statement.prepared.get_statusmsg())
        lastrowid = int(rows[-1][0]) if statement.key is not None and rows else None
        if statement.key is not None:
            rows = []  # the RETURNING this layer added is not the caller's result
        return PgCursor(rows, rowcount, lastrowid)

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]]) -> PgCursor:
        statement = self._statement(sql)
        args = [self._args(statement, params) for params in seq_of_params]
        if args:
            self._wait(statement.prepared.executemany(args))
        return PgCursor([], len(args), None)


def _is_control(sql: str) -> bool:
    head = sql.lstrip()[:10].upper()
    return head.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT"))


def _rowcount(status: str | None) -> int:
    if not status:
        return -1
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


@dataclass(kw_only=True)
class PostgresCentralStore:
    """HQ's database on PostgreSQL. Use as ``async with PostgresCentralStore.open(dsn)``."""

    dsn: str
    stats: StoreStats = field(default_factory=StoreStats)
    #: Card holders as ingest last read them (see :class:`~central.ingest.HolderCache`).
    holders: HolderCache = field(default_factory=HolderCache)
    #: Batches run again after losing a race with another worker.
    retries: int = 0
    _executor: ThreadPoolExecutor | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _pg: asyncpg.Connection | None = None
    _conn: PgConn | None = None
    _queue: asyncio.Queue[PendingOp] | None = None
    _writer_task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return self.dsn

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, dsn: str) -> AsyncIterator[PostgresCentralStore]:
        """Connect, migrate (several workers may do so at once) and start the writer."""
        store = cls(dsn=dsn)
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-writer")
        await self._on_writer(self._connect)
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._writer(), name="pg-writer")

    async def _on_writer(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise StoreError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _connect(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            pg = loop.run_until_complete(
                asyncpg.connect(self.dsn, statement_cache_size=0, server_settings=_SETTINGS)
            )
        except (OSError, asyncpg.PostgresError) as exc:
            loop.close()
            self._loop = None
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {exc}") from exc
        self._pg = pg
        loop.run_until_complete(migrate(pg))
        loop.run_until_complete(_install_functions(pg))
        self._conn = PgConn(loop, pg)

    async def close(self) -> None:
        """Finish queued operations, stop the writer and close the connection."""
        if self._queue is not None and self._writer_task is not None:
            await self._queue.join()
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        if self._executor is not None:
            await self._on_writer(self._disconnect)
            self._executor.shutdown(wait=True)
        self._executor = self._queue = self._writer_task = None

    def _disconnect(self) -> None:
        loop, pg = self._loop, self._pg
        if loop is not None:
            if pg is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(asyncio.wait_for(pg.close(), 5))
            loop.close()
        self._loop = self._pg = self._conn = None

    # -- writing ---------------------------------------------------------------------------

    async def run(self, op: Callable[[Any], T], *, quick: bool = False, dry: bool = False) -> T:
        """Run ``op`` inside a transaction; return its result once committed (``quick`` is
        SQLite's concern and ignored; ``dry``: run it and roll it back)."""
        del quick
        if self._queue is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingOp(op, future, dry=dry))
        return await future

    async def _writer(self) -> None:
        queue = self._queue
        if queue is None:
            raise StoreError("store is not open")
        while True:
            batch = await next_batch(queue)
            try:
                results = await self._on_writer(functools.partial(self._commit_batch, batch))
            except Exception as exc:  # noqa: BLE001 - rolled back: every caller gets the error
                self.stats.failed_commits += 1
                self.holders.clear()
                error = StoreUnavailableError(f"commit failed, nothing written: {exc}")
                error.__cause__ = exc
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
            else:
                self.stats.commits += 1
                self.stats.max_batch = max(self.stats.max_batch, len(batch))
                settle(batch, results)
            finally:
                for _ in batch:
                    queue.task_done()

    def _commit_batch(self, batch: list[PendingOp]) -> list[tuple[bool, Any]]:
        conn = self._conn
        if conn is None:
            raise StoreUnavailableError("store is not connected")
        for attempt in range(SERIALIZATION_RETRIES + 1):
            try:
                conn.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
                results = apply_ops(conn, batch, self.stats)
                conn.execute("COMMIT")
            except _RetryBatch as exc:
                self._rollback(conn)
                self.holders.clear()
                if attempt == SERIALIZATION_RETRIES:
                    raise StoreUnavailableError(f"gave up after {attempt} retries: {exc}") from exc
                self.retries += 1
                time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
            except BaseException:
                self._rollback(conn)
                self.holders.clear()
                raise
            else:
                return results
        raise AssertionError("unreachable")

    @staticmethod
    def _rollback(conn: PgConn) -> None:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")


#: Session settings: UTC (times are UTC on the wire; central never asks the server for local
#: time) and a name in pg_stat_activity.
_SETTINGS = {"timezone": "UTC", "application_name": "onecard-central"}


async def _install_functions(pg: asyncpg.Connection) -> None:
    async with pg.transaction():
        await pg.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        await pg.execute(FUNCTIONS)
