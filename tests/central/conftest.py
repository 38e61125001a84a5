"""Fixtures for central's tests: a private, provisioned mosquitto; a private PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from broker import PrivateBroker, private_broker
from postgres import PrivateCluster, private_cluster
from stores import close_shared_cluster, databases_made, drop_databases
from sync_system import System, build_system


@pytest.fixture(scope="session", autouse=True)
def _shared_cluster_removed() -> Iterator[None]:
    """The cluster ``central_db`` starts with ONECARD_TEST_STORE=postgresql is stopped and
    removed when the session ends, not left to an exit hook an xdist worker may never run."""
    yield
    close_shared_cluster()


@pytest.fixture(autouse=True)
def _test_databases_dropped() -> Iterator[None]:
    """Each test's PostgreSQL databases are dropped after it (~8 MB each, 900 tests); a
    wider-scoped fixture's (set up before this one) stay until the session ends."""
    before = databases_made()
    yield
    drop_databases(before)


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    """A private mosquitto with TLS, the generated ACL and passwords, on a free port.

    Function-scoped: tests remove and rotate sites, and a start costs ~0.1 s.
    """
    with private_broker() as running:
        yield running


@pytest.fixture
async def system(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[System]:
    """Central and two edges (SZ-FUTIAN, BJ-CHAOYANG) on the private broker."""
    async for running in build_system(broker, tmp_path):
        yield running


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """A private PostgreSQL cluster on a free loopback port (never the machine's 5432).

    Session-scoped: initdb and a start cost ~1 s; tests get a fresh database each
    (``pg_dsn``), so they never see each other's tables.
    """
    with private_cluster() as running:
        yield running


@pytest.fixture
def pg_dsn(pg_cluster: PrivateCluster) -> Iterator[str]:
    """A fresh, empty database in the private cluster, as a libpq URL; dropped after."""
    name = pg_cluster.create_database()
    try:
        yield pg_cluster.dsn(name)
    finally:
        pg_cluster.drop_database(name)
