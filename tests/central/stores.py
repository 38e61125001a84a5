"""Which store central's tests run on: SQLite (default) or PostgreSQL.

``ONECARD_TEST_STORE=postgresql`` runs the central suite on PostgreSQL (``make test`` runs
it both ways): :func:`central_db` then hands each test a fresh database in a private cluster
(started once per test process on a free loopback port, never the machine's server;
stopped at exit) instead of a SQLite file under the test's ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

from postgres import PrivateCluster, private_cluster

from central.store import open_store

__all__ = [
    "ON_POSTGRES",
    "central_db",
    "db_of",
    "open_store",
    "read_db",
    "rows",
    "shared_cluster",
]

#: The central suite's store for this run.
ON_POSTGRES = os.environ.get("ONECARD_TEST_STORE", "sqlite") == "postgresql"

_clusters: list[PrivateCluster] = []
_stack = contextlib.ExitStack()


def shared_cluster() -> PrivateCluster:
    """This test process's private PostgreSQL cluster (started on first use; stopped and
    removed by :func:`close_shared_cluster` at the end of the session — conftest.py)."""
    if not _clusters:
        _clusters.append(_stack.enter_context(private_cluster()))
        atexit.register(_stack.close)  # a fallback: an xdist worker may not get that far
    return _clusters[0]


def close_shared_cluster() -> None:
    """Stop the cluster and remove its directory (a session's databases add up to GBs)."""
    _stack.close()
    _clusters.clear()
    _templates.clear()


def databases_made() -> int:
    """How many databases :func:`central_db` has made so far (see :func:`drop_databases`)."""
    return len(_made)


def drop_databases(since: int) -> None:
    """Drop the databases :func:`central_db` made after the first ``since`` — a test's own,
    not those of a module- or session-scoped fixture set up before it (they go with the
    cluster at the end of the session)."""
    while len(_made) > since:
        shared_cluster().drop_database(_made.pop())


def central_db(tmp_path: Path, name: str = "central.db") -> Path | str:
    """A new central database for one test: ``tmp_path / name`` on SQLite, on PostgreSQL a
    fresh database's URL, copied from a template central has migrated once (a copy takes
    ~0.1 s; migrating every test's database would add as much again)."""
    if not ON_POSTGRES:
        return tmp_path / name
    cluster = shared_cluster()
    database = f"central_{os.getpid()}_{next(_names)}"
    cluster.psql(f"CREATE DATABASE {database} TEMPLATE {_template(cluster)}")
    _made.append(database)
    return cluster.dsn(database)


_names = itertools.count(1)
#: Databases made for the running test, dropped when it ends.
_made: list[str] = []
_templates: list[str] = []


def _template(cluster: PrivateCluster) -> str:
    """A database central's store has opened (schema migrated, functions installed) and
    closed, to copy (in a thread: tests call :func:`central_db` inside their event loop)."""
    if not _templates:
        name = cluster.create_database()

        async def migrate() -> None:
            async with open_store(cluster.dsn(name)):
                pass

        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, migrate()).result()
        _templates.append(name)
    return _templates[0]


async def rows(store: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """What ``sql`` reads from ``store``'s committed state (either store: through its port)."""
    return await store.run(lambda conn: [tuple(r) for r in conn.execute(sql, params).fetchall()])


def db_of(store: Any) -> str:
    """The ``--db`` that opens ``store``'s database (for a CLI run beside it)."""
    return str(store.dsn if ON_POSTGRES else store.path)


def read_db(db: Path | str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """:func:`rows` for a synchronous test: open the store at ``db`` (path or URL) and read."""

    async def go() -> list[tuple[Any, ...]]:
        async with open_store(db) as store:
            return await rows(store, sql, *params)

    return asyncio.run(go())
