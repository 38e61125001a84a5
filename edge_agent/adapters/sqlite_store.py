"""The edge's SQLite store: one writer thread with group commit, WAL, ``synchronous=FULL``.

Every request that changes state (a tap, a recharge phase, an uploaded record) is an
*operation*: a function run on the writer connection inside a transaction. The writer takes
every operation queued while the previous commit was in flight, runs them one after another
in one ``BEGIN IMMEDIATE`` … ``COMMIT`` (each in its own savepoint, so one failing operation
rolls back alone), and only then resolves their futures. A caller therefore never sees the
result of an operation — and never answers a terminal — before its records are durable
(brief, invariant 1), while concurrent terminals share one fsync.

The writer runs on a dedicated thread with the stdlib ``sqlite3`` module rather than through
aiosqlite: a tap is a dozen statements (facts, decision, outbox, deltas, the terminal's
answer) that must run as one unit inside the transaction, and aiosqlite would hop threads
for each of them. Readers that don't decide anything (status, health) use aiosqlite.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from edge_agent.adapters.sqlite_migrations import migrate

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], T]

#: Most operations committed together; more wait for the next commit.
MAX_BATCH = 256


class StoreError(Exception):
    """The store cannot do what was asked (closed, disk full, corrupt)."""


class StoreUnavailableError(StoreError):
    """The database could not commit (disk full, I/O error): nothing was written."""


@dataclass(slots=True)
class StoreStats:
    """Counters of the writer."""

    commits: int = 0
    operations: int = 0
    failed_operations: int = 0
    failed_commits: int = 0
    max_batch: int = 0


@dataclass(slots=True)
class _Pending:
    op: Operation[Any]
    future: asyncio.Future[Any]


def now_ms() -> int:
    """Current UTC time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


def connect_writer(path: Path) -> sqlite3.Connection:
    """Open the writer connection with the durability settings of the brief."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # money: every commit reaches the disk
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")  # the replica applies rows in feed order
    return conn


@dataclass(kw_only=True)
class GroupCommitDB:
    """A SQLite database with one writer thread doing group commit (see the module docs).

    Subclasses say how to migrate and what to do once open. Shared by the edge's store and
    central's.
    """

    path: Path
    stats: StoreStats = field(default_factory=StoreStats)
    _conn: sqlite3.Connection | None = None
    _executor: ThreadPoolExecutor | None = None
    _queue: asyncio.Queue[_Pending] | None = None
    _writer_task: asyncio.Task[None] | None = None
    _reader: aiosqlite.Connection | None = None

    def migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the schema up to date (on the writer thread, before anything else)."""
        raise NotImplementedError

    def after_open(self, conn: sqlite3.Connection) -> None:
        """Anything to do on the writer thread once migrated (default: nothing)."""

    async def start(self) -> None:
        """Open connections, migrate, and start the group-commit writer."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._executor, connect_writer, self.path)
        await loop.run_in_executor(self._executor, self.migrate, self._conn)
        await loop.run_in_executor(self._executor, self.after_open, self._conn)
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._writer(), name="sqlite-writer")
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute("PRAGMA query_only=ON")

    def _require_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("store is not open")
        return self._conn

    async def close(self) -> None:
        """Finish queued operations, stop the writer and close connections."""
        if self._queue is not None and self._writer_task is not None:
            await self._queue.join()
            self._writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer_task
        if self._reader is not None:
            await self._reader.close()
        if self._conn is not None and self._executor is not None:
            conn = self._conn
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._conn = self._reader = self._executor = self._queue = self._writer_task = None

    # -- writing ---------------------------------------------------------------------------

    async def run(self, op: Operation[T]) -> T:
        """Run ``op`` on the writer connection inside a transaction; return its result once
        the transaction has committed. An exception from ``op`` rolls back only ``op``."""
        if self._queue is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(op, future))
        return await future

    async def _writer(self) -> None:
        queue, executor = self._queue, self._executor
        if queue is None or executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results = await loop.run_in_executor(executor, self._commit_batch, batch)
            except sqlite3.Error as exc:
                self.stats.failed_commits += 1
                error = StoreUnavailableError(f"commit failed, nothing written: {exc}")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
            else:
                self.stats.commits += 1
                self.stats.max_batch = max(self.stats.max_batch, len(batch))
                for pending, (ok, value) in zip(batch, results, strict=True):
                    if pending.future.done():
                        continue
                    if ok:
                        pending.future.set_result(value)
                    else:
                        pending.future.set_exception(value)
            finally:
                for _ in batch:
                    queue.task_done()

    def _commit_batch(self, batch: list[_Pending]) -> list[tuple[bool, Any]]:
        conn = self._require_conn()
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = pending.op(conn)
                except Exception as exc:  # noqa: BLE001 - handed to the caller's future
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    self.stats.failed_operations += 1
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    self.stats.operations += 1
                    results.append((True, value))
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return results

    # -- reading ---------------------------------------------------------------------------

    async def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on the reader connection (never blocks the writer)."""
        if self._reader is None:
            raise StoreError("store is not open")
        async with self._reader.execute(sql, params) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


@dataclass(kw_only=True)
class EdgeStore(GroupCommitDB):
    """The site's database. Use as ``async with EdgeStore.open(path, site) as store``."""

    site: str
    epoch: int = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path, site: str) -> Any:
        """Open (creating and migrating if needed) and start the writer; close on exit."""
        store = cls(path=Path(path), site=site)
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    def migrate(self, conn: sqlite3.Connection) -> None:
        """The edge's numbered migrations."""
        migrate(conn)

    def after_open(self, conn: sqlite3.Connection) -> None:
        """Check the database belongs to this site; start an epoch if it is new."""
        self.epoch = self._init_meta(conn)

    def _init_meta(self, conn: sqlite3.Connection) -> int:
        rows = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "site" in rows and rows["site"] != self.site:
            raise StoreError(
                f"{self.path} belongs to site {rows['site']}, not {self.site}: "
                "refusing to mix two sites' records"
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            if "epoch" not in rows:
                # A new database is a new epoch: its creation time in ms, so a recreated
                # database never reuses (epoch, seq) pairs central has already seen.
                epoch = now_ms()
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("site", self.site),
                        ("epoch", str(epoch)),
                        ("feed_version", "0"),
                        ("blacklist_version", "0"),
                    ],
                )
            else:
                epoch = int(rows["epoch"])
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return epoch


# -- helpers used inside operations (run on the writer thread) ----------------------------------


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A value of the ``meta`` table."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(conn: sqlite3.Connection, key: str, value: str | int) -> None:
    """Set a value of the ``meta`` table."""
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, str(value)),
    )


@contextlib.contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "nested") -> Iterator[None]:
    """A nested atomic block inside an operation."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")
