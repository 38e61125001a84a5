"""The store's disk: refuse money *before* anything is half-written, resume by itself.

A full disk is the one store failure a site can see coming. The guard samples the free space
of the file system holding the database every :data:`CHECK_EVERY_S` and keeps one of three
states:

``ok``
    Free space is above the reserve (``[store] reserve_mb``). Everything is served.
``low``
    Free space fell below the reserve. New money (a sale, a ticket use, a recharge
    *prepare*) is refused with ``disk_full`` before the store is touched, so no payment is
    taken that the edge might fail to record; a recharge already prepared may still commit
    or abort (its money was taken: the reserve exists for it); door and attendance go on,
    recorded in the reserve.
``full``
    A commit failed because the disk is full (SQLite's ``SQLITE_FULL``): nothing can be
    recorded. SQLite rolled the transaction back, so nothing is half-written. Doors follow
    their group's ``fail_mode`` (see :mod:`edge_agent.site`); everything else is refused
    with ``disk_full``. The state holds until free space is back above the reserve.

Leaving ``low``/``full`` needs no operator: the next sample above the reserve returns to
``ok``, and the site writes what it deferred. Every change of state is logged (error going
in, info coming out) and reported to HQ in ``up/health`` (``disk_state``), where it raises
the ``disk_full`` alert.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from edge_agent.adapters.waiting import wait_event

log = structlog.get_logger("edge.disk")

DiskState = Literal["ok", "low", "full"]

#: How often the free space is sampled (seconds). ``statvfs`` is a few microseconds.
CHECK_EVERY_S = 1.0
_SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` (or what it wraps) is SQLite's "database or disk is full" or ENOSPC."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.Error) and (
            getattr(current, "sqlite_errorcode", None) == _SQLITE_FULL
            or "database or disk is full" in str(current)
        ):
            return True
        if isinstance(current, OSError) and current.errno == 28:  # ENOSPC
            return True
        if "database or disk is full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: Path) -> int | None:
    """Free bytes for an unprivileged writer on the file system holding ``path``."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


@dataclass
class DiskGuard:
    """Tracks whether the store's disk can take new money (see the module docs)."""

    path: Path
    reserve_bytes: int
    state: DiskState = "ok"
    free: int | None = None
    #: Money requests refused because of the disk, since start.
    refused: int = 0
    #: Times the state changed, since start.
    changes: int = 0
    #: Called (on the event loop) whenever the state changes.
    on_change: list[Callable[[DiskState], None]] = field(default_factory=list)
    _since: float = field(default_factory=time.monotonic)

    @property
    def money_ok(self) -> bool:
        """New money may be taken."""
        return self.state == "ok"

    def sample(self) -> DiskState:
        """Read the free space now and update the state."""
        self.free = free_bytes(self.path)
        if self.free is None:
            return self.state
        if self.free >= self.reserve_bytes:
            self._set("ok")
        elif self.state == "ok":
            self._set("low")
        return self.state

    def mark_full(self) -> None:
        """A write failed for lack of space: nothing can be recorded until space returns."""
        self.free = free_bytes(self.path)
        self._set("full")

    def _set(self, state: DiskState) -> None:
        if state == self.state:
            return
        before, self.state = self.state, state
        self.changes += 1
        held = round(time.monotonic() - self._since, 1)
        self._since = time.monotonic()
        if state == "ok":
            log.info("disk.recovered", was=before, free_bytes=self.free, after_s=held)
        else:
            log.error(
                "disk.short",
                state=state,
                free_bytes=self.free,
                reserve_bytes=self.reserve_bytes,
                money="refused",
            )
        for callback in list(self.on_change):
            callback(state)

    async def run(self, stopping: asyncio.Event) -> None:
        """Sample every :data:`CHECK_EVERY_S` until ``stopping`` is set."""
        # wait_event, not wait_for + TimeoutError: on Python 3.11 that pattern can swallow
        # the cancellation of a failing TaskGroup and keep the daemon half-alive for ever.
        while not await wait_event(stopping, CHECK_EVERY_S):
            self.sample()
