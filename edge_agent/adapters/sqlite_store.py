"""The edge's SQLite store: one writer thread with group commit, WAL, ``synchronous=FULL``.

Every request that changes state (a tap, a recharge phase, an uploaded record) is an
*operation*: a function run on the writer connection inside a transaction. The writer takes
every operation queued while the previous commit was in flight, runs them one after another
in one ``BEGIN IMMEDIATE`` … ``COMMIT`` (each in its own savepoint, so one failing operation
rolls back alone), and only then resolves their futures. A caller therefore never sees the
result of an operation — and never answers a terminal — before its records are durable
(brief, invariant 1), while concurrent terminals share one fsync.

The writer uses the stdlib ``sqlite3`` module rather than aiosqlite: a tap is several
statements (facts, decision, outbox, deltas, the terminal's answer) that must run as one unit
inside the transaction, and aiosqlite would hop threads for each of them. Operations run on a
dedicated writer thread — except *quick* ones (``run(op, quick=True)``: a terminal request, a
few indexed statements and no I/O beyond SQLite's page cache), which a store with
``inline_quick_ops`` runs on the event-loop thread itself when a whole batch is quick; the
``COMMIT`` (the fsync) then always goes to the writer thread, so a slow disk never blocks
the event loop. Why: every sqlite3 call
releases and re-takes the GIL, so an operation on the writer thread handed the GIL back and
forth with the event loop (framing, replies) a dozen times; under socket load those hand-offs,
not SQLite, were most of a tap's time. Readers that don't decide anything (status, health)
use aiosqlite.

Checkpoints: with ``background_checkpoints`` the writer connection never checkpoints inside a
``COMMIT`` (``wal_autocheckpoint=0``; SQLite's default makes the commit that crosses 1,000
WAL frames copy the WAL into the database and fsync it, which at one tap per commit is one
tap in ~80 — straight into the p99). A checkpointer thread on its own connection runs
``PRAGMA wal_checkpoint(PASSIVE)`` after every :data:`CHECKPOINT_AFTER_CHANGES` rows written,
concurrently with the writer and never blocking it. SQLite starts the WAL over at the first
transaction after a checkpoint that copied all of it; under a long burst that moment never
comes, so once the WAL holds :data:`WAL_WRAP_FRAMES` the writer runs one checkpoint itself
between two batches (little is left to copy by then) and the WAL restarts. Durability is
unchanged: every connection keeps ``synchronous=FULL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
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
#: How long ``BEGIN IMMEDIATE`` waits for another connection's write transaction.
BUSY_WAIT_S = 10.0
#: The background checkpointer runs once this many rows were written since it last ran
#: (a tap writes about five: ~12 WAL frames when it commits alone, fewer in a big batch) ...
CHECKPOINT_AFTER_CHANGES = 4_000
#: ... at most this often (seconds) ...
CHECKPOINT_INTERVAL_S = 0.25
#: ... and the writer checkpoints between batches once the WAL holds this many frames.
WAL_WRAP_FRAMES = 16_384
#: Page cache of the writer connection (KiB): the hot tables and indexes stay in memory.
#: SQLite fills it lazily and never gives it back, so it is the edge's RSS ceiling less
#: ~50 MB of interpreter: 64 MiB took a 100,000-card site to 122 MB once every page had
#: been touched, 16 MiB holds it at ~68 MB (issue 10's target is < 80 MB) for a few µs
#: more per tap on the pages read back from the OS (bench/edge_footprint.py).
WRITER_CACHE_KIB = 16_384
_SQLITE_BUSY = 5


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
    checkpoints: int = 0
    wal_wraps: int = 0


@dataclass(slots=True)
class PendingOp:
    """An operation waiting for the writer (either store's: central's PostgreSQL one too)."""

    op: Operation[Any]
    future: asyncio.Future[Any]
    quick: bool = False
    #: Run and roll back (see :meth:`GroupCommitDB.run`): the result stands even if the
    #: batch's commit fails.
    dry: bool = False
    result: tuple[bool, Any] | None = None


def now_ms() -> int:
    """Current UTC time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


class MetaCounters:
    """Counters stored in ``meta`` rows (the outbox's next seq per lane), held in memory by
    the writer connection and written back once per transaction, just before its COMMIT.

    A counter goes back with its operation: an operation that fails gets its savepoint
    rolled back and the counters restored to where they were before it; a transaction that
    fails to commit restores them to where they were at BEGIN. So the stored row always
    equals the committed state (a kill -9 at any moment cannot make a number be used twice),
    and an operation reading a counter inside the transaction sees every earlier one.
    """

    __slots__ = ("_at_begin", "_at_op", "_dirty", "values")

    def __init__(self, values: dict[str, int]) -> None:
        self.values = dict(values)
        self._dirty: set[str] = set()
        self._at_begin = dict(values)
        self._at_op = dict(values)

    def take(self, key: str, start: int = 1) -> int:
        """The counter's current value; it moves on by one (in memory until the commit)."""
        value = self.values.get(key, start)
        self.values[key] = value + 1
        self._dirty.add(key)
        return value

    def begin(self) -> None:
        """A transaction starts."""
        self._at_begin = dict(self.values)
        self._dirty.clear()

    def before_op(self) -> None:
        """An operation starts (in its savepoint)."""
        self._at_op = dict(self.values)

    def op_rolled_back(self) -> None:
        """The operation's savepoint was rolled back: give its numbers back."""
        self.values = dict(self._at_op)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Write the counters that moved, inside the transaction about to commit."""
        for key in sorted(self._dirty):
            if key in self.values:  # absent: taken by an operation that was rolled back
                set_meta(conn, key, self.values[key])
        self._dirty.clear()

    def rolled_back(self) -> None:
        """The transaction was rolled back (or failed to commit): nothing moved."""
        self.values = dict(self._at_begin)
        self._dirty.clear()


class StoreConnection(sqlite3.Connection):
    """The writer connection of a store: it carries the store's :class:`MetaCounters`
    (None on a plain connection, whose users read and write the ``meta`` rows directly)."""

    counters: MetaCounters | None = None


def connect_writer(path: Path) -> sqlite3.Connection:
    """Open the writer connection with the durability settings of the brief."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=10, factory=StoreConnection
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # money: every commit reaches the disk
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=OFF")  # the replica applies rows in feed order
    return conn


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == _SQLITE_BUSY or "locked" in str(exc)


class _Checkpointer:
    """A thread with its own connection that checkpoints the WAL when poked (``PASSIVE``: it
    never blocks the writer, and the writer never waits for it)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wake = threading.Event()
        self._stop = False
        #: Frames in the WAL at the last checkpoint (read by the writer thread).
        self.wal_frames = 0
        self.checkpoints = 0
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The thread is running."""
        return self._thread.is_alive()

    def poke(self) -> None:
        """Enough was committed since the last checkpoint: run one."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the checkpoint in hand and end the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            # The WAL is synced before and the database file after each checkpoint.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=0")
            while not self._stop:
                self._wake.wait()
                if self._stop:
                    break
                self._wake.clear()
                with contextlib.suppress(sqlite3.Error):  # busy or failed: the next one will do
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.wal_frames = int(row[1])
                    self.checkpoints += 1
                time.sleep(CHECKPOINT_INTERVAL_S)
        finally:
            conn.close()


async def next_batch(queue: asyncio.Queue[PendingOp]) -> list[PendingOp]:
    """The next operation and every one queued behind it (at most :data:`MAX_BATCH`)."""
    batch = [await queue.get()]
    while len(batch) < MAX_BATCH and not queue.empty():
        batch.append(queue.get_nowait())
    return batch


def apply_ops(conn: Any, batch: list[PendingOp], stats: StoreStats) -> list[tuple[bool, Any]]:
    """Run ``batch`` inside the open transaction, each operation in its own savepoint (one
    failing rolls back alone; a ``dry`` one always does): ``(ok, result or exception)`` per
    operation. ``conn`` is sqlite3's or anything shaped like it (central's PostgreSQL)."""
    results: list[tuple[bool, Any]] = []
    counters: MetaCounters | None = getattr(conn, "counters", None)
    if counters is not None:
        counters.begin()
    for pending in batch:
        conn.execute("SAVEPOINT op")
        if counters is not None:
            counters.before_op()
        try:
            value = pending.op(conn)
        except Exception as exc:  # noqa: BLE001 - handed to the caller's future
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            if counters is not None:
                counters.op_rolled_back()
            stats.failed_operations += 1
            pending.result = (False, exc)
        else:
            if pending.dry:
                conn.execute("ROLLBACK TO op")
                if counters is not None:
                    counters.op_rolled_back()
            conn.execute("RELEASE op")
            stats.operations += 1
            pending.result = (True, value)
        results.append(pending.result)
    return results


def settle(batch: list[PendingOp], results: list[tuple[bool, Any]]) -> None:
    """Hand each committed operation's result (or exception) to its caller."""
    for pending, (ok, value) in zip(batch, results, strict=True):
        if pending.future.done():
            continue
        if ok:
            pending.future.set_result(value)
        else:
            pending.future.set_exception(value)


@dataclass(kw_only=True)
class GroupCommitDB:
    """A SQLite database with one writer doing group commit (see the module docs).

    Subclasses say how to migrate and what to do once open. Shared by the edge's store and
    central's.
    """

    path: Path
    stats: StoreStats = field(default_factory=StoreStats)
    #: Run batches of quick operations on the event-loop thread (see the module docs).
    inline_quick_ops: bool = False
    #: Checkpoint on a separate thread and connection, never inside a commit.
    background_checkpoints: bool = False
    #: The writer connection's page cache in KiB (None: SQLite's default, 2 MiB).
    cache_kib: int | None = None
    _conn: sqlite3.Connection | None = None
    _checkpointer: _Checkpointer | None = None
    _changes_at_poke: int = 0
    _executor: ThreadPoolExecutor | None = None
    _queue: asyncio.Queue[PendingOp] | None = None
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
        await loop.run_in_executor(self._executor, self._tune, self._conn)
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._writer(), name="sqlite-writer")
        self._reader = await aiosqlite.connect(self.path)
        await self._reader.execute("PRAGMA query_only=ON")

    def _tune(self, conn: sqlite3.Connection) -> None:
        if self.cache_kib is not None:
            conn.execute(f"PRAGMA cache_size=-{int(self.cache_kib)}")
        if self.inline_quick_ops:
            # BEGIN on the event loop must never sleep in SQLite's busy handler: a busy
            # database sends the batch to the writer thread, which waits (see _begin).
            conn.execute("PRAGMA busy_timeout=0")
        if self.background_checkpoints:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = _Checkpointer(self.path)

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
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
            self.stats.checkpoints = self._checkpointer.checkpoints
            self._checkpointer = None
        if self._conn is not None and self._executor is not None:
            conn = self._conn
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._conn = self._reader = self._executor = self._queue = self._writer_task = None

    # -- writing ---------------------------------------------------------------------------

    async def run(self, op: Operation[T], *, quick: bool = False, dry: bool = False) -> T:
        """Run ``op`` on the writer connection inside a transaction; return its result once
        the transaction has committed. An exception from ``op`` rolls back only ``op``.

        ``quick``: ``op`` is short (a few indexed statements, no I/O of its own, no waiting)
        and may run on the event-loop thread (see the module docs).

        ``dry``: run ``op`` and roll it back at once, returning what it returned — the
        decision a request *would* get, when the store cannot record it (a full disk: the
        rolled-back changes never leave the page cache, so this works when commits fail)."""
        if self._queue is None:
            raise StoreError("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(PendingOp(op, future, quick, dry))
        return await future

    async def _writer(self) -> None:
        queue, executor = self._queue, self._executor
        if queue is None or executor is None:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        while True:
            batch = await next_batch(queue)
            try:
                results = None
                if self.inline_quick_ops and all(p.quick for p in batch):
                    results = self._apply_inline(batch)
                if results is None:
                    results = await loop.run_in_executor(executor, self._commit_batch, batch)
                else:
                    # The fsync never runs on the event loop: a stalled disk must not stall
                    # every terminal link and the MQTT session with it.
                    await loop.run_in_executor(executor, self._commit)
            except Exception as exc:  # noqa: BLE001 - rolled back: every caller gets the error
                self.stats.failed_commits += 1
                error = StoreUnavailableError(f"commit failed, nothing written: {exc}")
                error.__cause__ = exc
                for pending in batch:
                    if pending.future.done():
                        continue
                    if pending.dry and pending.result is not None:
                        ok, value = pending.result  # rolled back anyway: the commit is moot
                        if ok:
                            pending.future.set_result(value)
                        else:
                            pending.future.set_exception(value)
                    else:
                        pending.future.set_exception(error)
            else:
                self.stats.commits += 1
                self.stats.max_batch = max(self.stats.max_batch, len(batch))
                settle(batch, results)
            finally:
                for _ in batch:
                    queue.task_done()
            if self._checkpointer is not None and self._checkpointer.wal_frames >= WAL_WRAP_FRAMES:
                await loop.run_in_executor(executor, self._wrap_wal)
            elif self.inline_quick_ops:
                # Let the requests just answered write their replies (and new ones be read)
                # before the next batch holds the loop.
                await asyncio.sleep(0)

    def _apply_inline(self, batch: list[PendingOp]) -> list[tuple[bool, Any]] | None:
        """BEGIN and run ``batch`` on this (the event loop's) thread, leaving the transaction
        open for :meth:`_commit`; None (nothing done) if another connection is writing."""
        conn = self._require_conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                return None
            raise
        try:
            return self._apply(conn, batch)
        except BaseException:
            self._rollback(conn)
            raise

    def _commit_batch(self, batch: list[PendingOp]) -> list[tuple[bool, Any]]:
        conn = self._require_conn()
        self._begin(conn)
        try:
            results = self._apply(conn, batch)
        except BaseException:
            self._rollback(conn)
            raise
        self._commit()
        return results

    def _rollback(self, conn: sqlite3.Connection) -> None:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        counters = getattr(conn, "counters", None)
        if counters is not None:
            counters.rolled_back()

    def _begin(self, conn: sqlite3.Connection) -> None:
        # With busy_timeout=0 (inline_quick_ops) SQLite does not wait for another writer:
        # wait here, on the writer thread, as long as busy_timeout would have.
        deadline = time.monotonic() + BUSY_WAIT_S
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
            else:
                return

    def _apply(self, conn: sqlite3.Connection, batch: list[PendingOp]) -> list[tuple[bool, Any]]:
        return apply_ops(conn, batch, self.stats)

    def _commit(self) -> None:
        """Write the counters and COMMIT the open transaction (this is the fsync); on failure
        roll back. Pokes the checkpointer once enough was written."""
        conn = self._require_conn()
        try:
            counters = getattr(conn, "counters", None)
            if counters is not None:
                counters.flush(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        checkpointer = self._checkpointer
        if checkpointer is not None and conn.total_changes - self._changes_at_poke >= (
            CHECKPOINT_AFTER_CHANGES
        ):
            self._changes_at_poke = conn.total_changes
            if checkpointer.alive:
                checkpointer.poke()
            else:  # its thread died (could not open the database?): never let the WAL grow
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _wrap_wal(self) -> None:
        """Between two batches (on the writer thread): checkpoint what the background
        checkpointer has not copied yet; the next BEGIN then starts the WAL over."""
        conn = self._require_conn()
        checkpointer = self._checkpointer
        with contextlib.suppress(sqlite3.Error):
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if checkpointer is not None and row[0] == 0 and row[1] == row[2]:
                checkpointer.wal_frames = 0
                self.stats.wal_wraps += 1

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
    inline_quick_ops: bool = True
    background_checkpoints: bool = True
    cache_kib: int | None = WRITER_CACHE_KIB

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
        """Check the database belongs to this site; start an epoch if it is new; load the
        outbox's seq counters."""
        self.epoch = self._init_meta(conn)
        if isinstance(conn, StoreConnection):
            conn.counters = MetaCounters(next_seqs(conn))

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


def next_seqs(conn: sqlite3.Connection) -> dict[str, int]:
    """The next outbox seq of each lane (``meta`` key ``next_seq_{lane}``): the stored counter,
    or past the highest seq in the outbox if that is higher — a number that reached the disk
    is never handed out again, whatever state the counter row was left in."""
    stored = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'next_seq_%'"))
    highest = dict(conn.execute("SELECT lane, max(seq) FROM outbox_rows GROUP BY lane"))
    lanes = {int(k.removeprefix("next_seq_")) for k in stored} | {int(k) for k in highest}
    return {
        f"next_seq_{lane}": max(int(stored.get(f"next_seq_{lane}", 1)), highest.get(lane, 0) + 1)
        for lane in sorted(lanes)
    }


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
