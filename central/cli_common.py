"""What ``onecard-central``'s command modules share."""

from __future__ import annotations

import asyncio
import getpass
import os
from pathlib import Path
from typing import Any

import click

DB_OPTION = click.option(
    "--db",
    "db_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/var/lib/onecard-central/central.db"),
    show_default=True,
    envvar="ONECARD_CENTRAL_DB",
    help="central's SQLite database",
)


def who() -> str:
    """The operator a CLI command audits by default: the sudo caller, else the login user."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's bare uid)
        return "cli"


def run_op(db_path: Path, op: Any) -> Any:
    """Run ``op`` as one store operation on the database at ``db_path``."""
    from central.adapters.sqlite_store import CentralStore

    async def go() -> Any:
        async with CentralStore.open(db_path) as store:
            return await store.run(op)

    return asyncio.run(go())
