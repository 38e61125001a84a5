"""Which store central's tests run on: SQLite (default) or PostgreSQL.

``ONECARD_TEST_STORE=postgresql`` runs the central suite on PostgreSQL (``make test`` runs
it both ways): :func:`central_db` then hands each test a fresh database in a private cluster
(started once per test process on a free loopback port, never the machine's server;
stopped at exit) instead of a SQLite file under the test's ``tmp_path``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from pathlib import Path

from postgres import PrivateCluster, private_cluster

from central.store import open_store

__all__ = ["ON_POSTGRES", "central_db", "open_store", "shared_cluster"]

#: The central suite's store for this run.
ON_POSTGRES = os.environ.get("ONECARD_TEST_STORE", "sqlite") == "postgresql"

_clusters: list[PrivateCluster] = []
_stack = contextlib.ExitStack()


def shared_cluster() -> PrivateCluster:
    """This test process's private PostgreSQL cluster (started on first use)."""
    if not _clusters:
        _clusters.append(_stack.enter_context(private_cluster()))
        atexit.register(_stack.close)
    return _clusters[0]


def central_db(tmp_path: Path, name: str = "central.db") -> Path | str:
    """A new, empty central database for one test: ``tmp_path / name`` on SQLite, a fresh
    database's URL on PostgreSQL."""
    if not ON_POSTGRES:
        return tmp_path / name
    cluster = shared_cluster()
    return cluster.dsn(cluster.create_database())
