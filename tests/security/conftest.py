"""Fixtures for the attack tests: the real edge, central, broker and dashboard of the other
test folders, reused rather than copied.

The helper modules those folders keep next to their conftest (``broker``, ``sync_system``,
``web_harness``, ``edge_fixtures``) are put on ``sys.path`` the way pytest puts a conftest's
own folder there, then imported. The fixtures are small compositions of them:

- ``edge``: an in-process edge on a seeded site with a TCP listener on a free port (the
  terminal attacks);
- ``broker`` / ``system``: a private, provisioned mosquitto, and central with two edges on
  it (the MQTT attacks);
- ``dash``: the dashboard and API served on a free port over a real store, a user and a
  token per role (the web attacks).
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
for folder in (TESTS / "central", TESTS / "central" / "web", TESTS / "edge_agent"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from broker import PrivateBroker, private_broker  # noqa: E402
from edge_fixtures import SITE, make_seed, new_keys  # noqa: E402
from sync_system import System, build_system  # noqa: E402
from web_harness import Clock, Dash, password_hash  # noqa: E402

from central import master, queries, users  # noqa: E402
from central.adapters.sqlite_store import CentralStore  # noqa: E402
from central.web.app import dashboard_server  # noqa: E402
from central.web.page import WebConfig  # noqa: E402
from edge_agent.adapters.sqlite_store import EdgeStore  # noqa: E402
from edge_agent.config import EdgeConfig, TerminalsConfig  # noqa: E402
from edge_agent.seed import apply_seed, load_seed  # noqa: E402
from edge_agent.service import EdgeService  # noqa: E402

# -- the edge ---------------------------------------------------------------------------------


@dataclass
class Edge:
    """A running in-process edge: its service, the terminal keys, and its database file."""

    service: EdgeService
    keys: dict[str, bytes]
    data_dir: Path

    @property
    def port(self) -> int:
        port = self.service.tcp_port
        assert port is not None
        return port

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        """Rows of the edge's SQLite (read through a connection of our own)."""
        with sqlite3.connect(self.data_dir / "edge.db") as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    """The standard seeded site (door, clock, two tills, a kiosk) served on a free port."""
    keys = new_keys()
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(make_seed(keys), ensure_ascii=False))
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        seed = load_seed(seed_file)
        await store.run(lambda conn: apply_seed(conn, seed))
    config = EdgeConfig(
        site=SITE, data_dir=tmp_path, terminals=TerminalsConfig(listen="127.0.0.1:0")
    )
    service = EdgeService(config)
    task = asyncio.create_task(service.run())
    try:
        async with asyncio.timeout(10):
            await service.ready.wait()
        yield Edge(service, keys, tmp_path)
    finally:
        service.stop()
        await task


# -- the broker and central -----------------------------------------------------------------


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    """A private mosquitto with TLS, the generated ACL and passwords, on a free port."""
    with private_broker() as running:
        yield running


@pytest.fixture
async def system(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[System]:
    """Central and two edges (SZ-FUTIAN, BJ-CHAOYANG) on the private broker."""
    async for running in build_system(broker, tmp_path):
        yield running


# -- the dashboard --------------------------------------------------------------------------


@dataclass
class Web:
    """The served dashboard and API, with an API token per role."""

    dash: Dash
    tokens: dict[str, str] = field(default_factory=dict)

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def web(tmp_path: Path) -> AsyncIterator[Web]:
    """The dashboard and API over a real store: a user (``<role>-1``) and a token per role,
    two registered sites, nothing else (each test seeds what it attacks)."""
    clock = Clock()

    def setup(conn: sqlite3.Connection) -> dict[str, str]:
        for site in ("SZ-FUTIAN", "BJ-CHAOYANG"):
            master.register_site(conn, site)
        tokens = {}
        for role in users.ROLES:
            users.add_user(conn, f"{role}-1", role, password_hash(), operator="t", source="test")
            tokens[role] = queries.add_token(conn, f"{role}-token", role)
        return tokens

    async with CentralStore.open(tmp_path / "central.db") as store:
        tokens = await store.run(setup)
        secret = await store.run(users.web_key)
        sock = socket.create_server(("127.0.0.1", 0))
        server = dashboard_server(
            store, "127.0.0.1", 0, secret_key=secret, config=WebConfig(clock=clock)
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        dash = Dash(store, f"http://127.0.0.1:{sock.getsockname()[1]}", clock, server.config.app)
        try:
            yield Web(dash, tokens)
        finally:
            for http in dash.clients:
                await http.aclose()
            server.should_exit = True
            await serving
