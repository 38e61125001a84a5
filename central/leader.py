"""Which central worker leads: publishes the feed and blacklist, runs alerts, housekeeping,
gap watch and rollouts. Every worker ingests; exactly one leads at a time.

- **SQLite** (one HQ machine, one worker): :class:`SoleLeader` — that worker always leads.
- **PostgreSQL** (several workers): :class:`PostgresLease` — a session-level advisory lock
  (``pg_try_advisory_lock``) held on a connection of its own. PostgreSQL releases it the
  moment that connection ends, so a worker killed with ``kill -9`` hands over at the next
  try of another (every ``interval_s``). The holder pings its connection every
  ``interval_s`` and steps down at once if the ping fails or takes longer than ``lease_s``
  (it can no longer be sure it holds the lock); the server is told to drop a silent
  connection within ``lease_s`` (TCP keepalives), so a partitioned leader's lock is freed
  for the others at about the time that leader stops acting on it. Leadership therefore
  moves within ``lease_s`` + ``interval_s``.

A lease, not a lock in Python: what must be exactly-once (records, ledger entries, acks) is
carried by the database's constraints whichever worker does it; the lease only keeps two
workers from broadcasting the same feed and blacklist changes twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import asyncpg
import structlog

log = structlog.get_logger("central.leader")

#: The advisory-lock key of the leader lease ("onecard-leader"; the schema's migration lock
#: uses another).
LEADER_LOCK_KEY = 0x6F6E656C656164


@dataclass
class SoleLeader:
    """The only worker: always leads."""

    acquired: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    terms: int = 0

    async def run(self, stopping: asyncio.Event) -> None:
        self.terms += 1
        self.acquired.set()
        await stopping.wait()


@dataclass
class PostgresLease:
    """The leader lease over a PostgreSQL advisory lock (see the module docs)."""

    dsn: str
    worker: str
    interval_s: float = 1.0
    lease_s: float = 3.0
    #: Set while this worker leads; ``lost`` is set when it stops leading.
    acquired: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    #: Times this worker became leader.
    terms: int = 0
    _conn: asyncpg.Connection | None = None

    async def run(self, stopping: asyncio.Event) -> None:
        """Try for the lease until ``stopping``; keep it while the connection answers."""
        try:
            while not stopping.is_set():
                try:
                    await self._tick()
                except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                    await self._drop(f"lease connection failed: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self.interval_s)
        finally:
            await self._drop("stopping")

    async def _tick(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncio.wait_for(
                asyncpg.connect(self.dsn, server_settings=self._settings()), self.lease_s
            )
        conn: asyncpg.Connection = self._conn
        if self.acquired.is_set():
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self.lease_s)
            return
        got = await asyncio.wait_for(
            conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY), self.lease_s
        )
        if got:
            self.terms += 1
            self.lost.clear()
            self.acquired.set()
            log.info("central.leader_elected", worker=self.worker, term=self.terms)

    def _settings(self) -> dict[str, str]:
        idle = str(max(1, int(self.lease_s / 3)))
        return {
            "application_name": f"onecard-central-lease-{self.worker}",
            # the server drops a connection gone silent within about lease_s: the lock frees
            "tcp_keepalives_idle": idle,
            "tcp_keepalives_interval": idle,
            "tcp_keepalives_count": "2",
        }

    async def _drop(self, why: str) -> None:
        if self.acquired.is_set():
            self.acquired.clear()
            self.lost.set()
            log.warning("central.leader_stepped_down", worker=self.worker, reason=why)
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), self.lease_s)
            if not conn.is_closed():
                conn.terminate()


Leadership = SoleLeader | PostgresLease
