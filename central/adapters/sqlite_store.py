"""Central's SQLite store: the same group-commit writer as the edge's, central's schema."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from central.adapters.sqlite_alert_schema import ALERT_MIGRATIONS, HEALTH_MIGRATIONS
from central.adapters.sqlite_attendance_schema import ATTENDANCE_MIGRATIONS
from central.adapters.sqlite_door_schema import DOOR_MIGRATIONS
from central.adapters.sqlite_ops_schema import OPS_MIGRATIONS
from central.adapters.sqlite_rollout_schema import ROLLOUT_MIGRATIONS
from central.adapters.sqlite_schema import MIGRATIONS
from central.adapters.sqlite_web_schema import WEB_MIGRATIONS
from central.ingest import HolderCache
from edge_agent.adapters.sqlite_migrations import migrate
from edge_agent.adapters.sqlite_store import GroupCommitDB, StoreError, StoreUnavailableError

__all__ = ["CentralStore", "StoreError", "StoreUnavailableError"]


@dataclass(kw_only=True)
class CentralStore(GroupCommitDB):
    """HQ's database. Use as ``async with CentralStore.open(path) as store``."""

    #: Card holders as ingest last read them, for the writer connection's batches.
    holders: HolderCache = field(default_factory=HolderCache)
    #: Batches run again after losing a race with another writer: never, with one writer.
    retries: int = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[CentralStore]:
        """Open (creating and migrating if needed) and start the writer; close on exit."""
        store = cls(path=Path(path))
        await store.start()
        try:
            yield store
        finally:
            await store.close()

    def migrate(self, conn: sqlite3.Connection) -> None:
        """Central's numbered migrations."""
        migrate(
            conn,
            MIGRATIONS
            + OPS_MIGRATIONS
            + WEB_MIGRATIONS
            + ATTENDANCE_MIGRATIONS
            + ALERT_MIGRATIONS
            + ROLLOUT_MIGRATIONS
            + DOOR_MIGRATIONS
            + HEALTH_MIGRATIONS,
        )

    def _commit_batch(self, batch: list[Any]) -> list[tuple[bool, Any]]:
        try:
            return super()._commit_batch(batch)
        except BaseException:
            # Rolled back: what ingest read inside the transaction may never have been.
            self.holders.clear()
            raise
