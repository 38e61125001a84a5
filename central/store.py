"""Central's store port, and choosing a store from ``--db``.

``--db`` takes a path or ``sqlite:///path`` (the default: SQLite, right for one HQ machine)
or ``postgresql://user@host:port/db`` (several workers, hundreds of sites; docs/scaling.md).
Both stores offer the same port — ``await store.run(op)``, ``op(conn)`` running inside a
transaction — so nothing above this line knows which one it has.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from central.adapters.postgres_store import PostgresCentralStore
from central.adapters.sqlite_store import CentralStore
from central.ingest import HolderCache
from edge_agent.adapters.sqlite_store import StoreStats

T = TypeVar("T")

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"


class Store(Protocol):
    """What central's services, dashboard and API need of a store."""

    stats: StoreStats
    holders: HolderCache
    #: Batches run again after losing a race with another worker (PostgreSQL).
    retries: int

    async def run(self, op: Callable[[Any], T], *, quick: bool = False, dry: bool = False) -> T:
        """Run ``op`` in a transaction; its result once committed."""
        ...


def is_postgres(target: str | Path) -> bool:
    """Whether ``--db`` names a PostgreSQL database."""
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def sqlite_path(target: str | Path) -> Path:
    """The SQLite file ``--db`` names (a path, or ``sqlite:///path``)."""
    text = str(target)
    return Path(text[len(SQLITE_SCHEME) - 1 :] if text.startswith(SQLITE_SCHEME) else text)


def describe(target: str | Path) -> str:
    """``--db`` for logs and errors, without a password."""
    text = str(target)
    if is_postgres(text) and "@" in text:
        scheme, rest = text.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
    return text


@contextlib.asynccontextmanager
async def open_store(target: str | Path) -> AsyncIterator[Any]:
    """Open (creating and migrating if needed) the store ``--db`` names; close on exit."""
    if is_postgres(target):
        async with PostgresCentralStore.open(str(target)) as pg:
            yield pg
    else:
        async with CentralStore.open(sqlite_path(target)) as lite:
            yield lite
