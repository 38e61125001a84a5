"""Fixtures for the dashboard's tests: a real store, the dashboard and the API served by
uvicorn on a free loopback port, users of every role, and a clock the tests move."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from stores import central_db, open_store
from web_harness import Clock, Dash, migrate_with_web, password_hash

from central import master, users
from central.adapters.sqlite_store import CentralStore
from central.web.app import dashboard_server
from central.web.page import WebConfig


@pytest.fixture(autouse=True)
def web_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CentralStore in these tests (the CLI's too) has the dashboard's tables."""
    monkeypatch.setattr(CentralStore, "migrate", migrate_with_web)


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[Dash]:
    """The dashboard with a user per role (``admin-1`` … ``auditor-1``) and two sites."""
    clock = Clock()
    async with open_store(central_db(tmp_path)) as store:
        for role in users.ROLES:
            await store.run(
                lambda conn, role=role: users.add_user(
                    conn,
                    f"{role}-1",
                    role,
                    password_hash(),
                    display_name=f"{role.title()} One",
                    operator="setup",
                    source="test",
                )
            )
        for site in ("SZ-FUTIAN", "BJ-CHAOYANG"):
            await store.run(lambda conn, site=site: master.register_site(conn, site))
        secret = await store.run(users.web_key)
        sock = socket.create_server(("127.0.0.1", 0))
        server = dashboard_server(
            store, "127.0.0.1", 0, secret_key=secret, config=WebConfig(clock=clock)
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        running = Dash(store, f"http://127.0.0.1:{sock.getsockname()[1]}", clock, server.config.app)
        try:
            yield running
        finally:
            for http in running.clients:
                await http.aclose()
            server.should_exit = True
            await serving
