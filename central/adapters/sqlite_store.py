"""Central's SQLite store: the same group-commit writer as the edge's, central's schema."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from central.adapters.sqlite_ops_schema import OPS_MIGRATIONS
from central.adapters.sqlite_schema import MIGRATIONS
from edge_agent.adapters.sqlite_migrations import migrate
from edge_agent.adapters.sqlite_store import GroupCommitDB, StoreError, StoreUnavailableError

__all__ = ["CentralStore", "StoreError", "StoreUnavailableError"]


@dataclass(kw_only=True)
class CentralStore(GroupCommitDB):
    """HQ's database. Use as ``async with CentralStore.open(path) as store``."""

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
        migrate(conn, MIGRATIONS + OPS_MIGRATIONS)
