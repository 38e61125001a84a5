"""What ``onecard-central``'s command modules share."""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path
from typing import Any

import click

#: What ``--db`` names: a SQLite file (a path or ``sqlite:///path``) or a PostgreSQL URL.
DbTarget = Path | str


class _DbParam(click.ParamType):  # type: ignore[type-arg]
    name = "DB"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from central.store import is_postgres, sqlite_path

        if isinstance(value, Path) or not is_postgres(str(value)):
            path = sqlite_path(value)
            if path.is_dir():
                self.fail(f"{path} is a directory, not a database file", param, ctx)
            return path
        return str(value)


DB_OPTION = click.option(
    "--db",
    "db_path",
    type=_DbParam(),
    default=Path("/var/lib/onecard-central/central.db"),
    show_default=True,
    envvar="ONECARD_CENTRAL_DB",
    help="central's database: a SQLite file (path or sqlite:///path) or postgresql://user@host:port/db",
)


def who() -> str:
    """The operator a CLI command audits by default: the sudo caller, else the login user."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's bare uid)
        return "cli"


def run_op(db_path: DbTarget, op: Any) -> Any:
    """Run ``op`` as one store operation on the database ``--db`` names."""
    from central.store import open_store

    async def go() -> Any:
        async with open_store(db_path) as store:
            return await store.run(op)

    return asyncio.run(go())
