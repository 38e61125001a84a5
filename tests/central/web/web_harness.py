"""Helpers of the dashboard's tests: users' password, a clock the tests move, the running
dashboard, and a browser's sign-in (fixtures in conftest.py)."""

from __future__ import annotations

import functools
import re
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import timedelta

import httpx

from central import users
from central.adapters.sqlite_ops_schema import OPS_MIGRATIONS
from central.adapters.sqlite_schema import MIGRATIONS
from central.adapters.sqlite_store import CentralStore
from central.adapters.sqlite_web_schema import WEB_MIGRATIONS
from central.web.app import Dashboard
from edge_agent.adapters.sqlite_migrations import migrate

PASSWORD = "correct horse 1"  # noqa: S105 - the test users' password
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def migrate_with_web(self: CentralStore, conn: sqlite3.Connection) -> None:
    # Until the store appends WEB_MIGRATIONS itself (one line in sqlite_store.py).
    _original_migrate(self, conn)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'users'").fetchone() is None:
        migrate(conn, MIGRATIONS + OPS_MIGRATIONS + WEB_MIGRATIONS)


_original_migrate = CentralStore.migrate


@functools.cache
def password_hash(password: str = PASSWORD) -> str:
    """One scrypt per password per test run (0.1 s each)."""
    return users.hash_password(password)


@dataclass
class Clock:
    """Unix time the dashboard reads; tests move it."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta).total_seconds()


@dataclass
class Dash:
    store: CentralStore
    base: str
    clock: Clock
    app: Dashboard
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def stats(self) -> dict[str, int]:
        return self.app.web.state.web.stats

    def client(self, **headers: str) -> httpx.AsyncClient:
        """A browser: its own cookie jar."""
        http = httpx.AsyncClient(base_url=self.base, headers=headers)
        self.clients.append(http)
        return http

    async def audit(self, **filters: str) -> list[dict[str, object]]:
        from central import queries

        return await self.store.run(lambda conn: queries.audit_log(conn, **filters))


async def csrf_of(http: httpx.AsyncClient, path: str = "/login") -> str:
    """The CSRF token of the form on ``path``."""
    page = await http.get(path)
    found = _CSRF.search(page.text)
    assert found, page.text
    return found[1]


async def sign_in(
    http: httpx.AsyncClient, username: str, password: str = PASSWORD, **extra: str
) -> httpx.Response:
    """Fill in and post the sign-in form."""
    token = await csrf_of(http)
    form = {"csrf": token, "username": username, "password": password, **extra}
    return await http.post("/login", data=form)
