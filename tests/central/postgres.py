"""A private PostgreSQL cluster for tests, and a ``psql``-backed connection to it.

Import it from tests run in ``tests/central`` as ``from postgres import ...``. The cluster is
made by ``initdb`` in a fresh ``/tmp`` directory and run by ``postgres -D`` as a child of the
test process, listening on a free port on 127.0.0.1 only, with its socket in that directory;
it is never the machine's own PostgreSQL (which may be serving 5432).

initdb and the server refuse to run as root, so both run as the ``postgres`` OS user (made
by the Debian package), through ``subprocess``'s ``user=`` so that the server is our direct
child; the directory is chowned to that user (pytest's ``tmp_path`` sits in a root-only
tree it could not enter). Authentication is
``trust`` (nothing but this test process can reach a loopback port it just picked) and
``fsync`` is off: a crashed test cluster is thrown away, never recovered.

There is no PostgreSQL driver in the lock yet (asyncpg is to come with the store), so
:class:`PsqlConnection` runs statements through ``psql``. It has the shape of asyncpg's
``Connection`` that :func:`central.adapters.postgres_schema.migrate` needs; each call is its
own session, and ``fetch`` returns every value as text (NULL as ``None``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
PSQL_TIMEOUT_S = 30.0
OS_USER = "postgres"
SUPERUSER = "postgres"

#: psql's field and record separators for ``fetch``: ASCII unit and record separators
#: (never in our identifiers or test values), so values may hold spaces, '|' and newlines.
_FIELD_SEP = "\x1f"
_RECORD_SEP = "\x1e"
_NULL = "\x1dNULL"
_db_names = itertools.count(1)


class ClusterStartError(RuntimeError):
    """The private cluster did not come up; the message holds initdb's or the server's log."""


class PsqlError(RuntimeError):
    """``psql`` failed: the message holds the statement's error."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding ``initdb``."""
    root = Path("/usr/lib/postgresql")
    found = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists() and p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
    )
    if not found:
        raise ClusterStartError(f"no PostgreSQL server under {root} (apt-get install postgresql)")
    return found[-1]


@dataclass
class PrivateCluster:
    """A running private cluster: its directory, port and server process."""

    base: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def socket_dir(self) -> Path:
        """Where the server's Unix socket lives (never /var/run/postgresql)."""
        return self.base / "sock"

    @property
    def log_path(self) -> Path:
        """The server's stderr."""
        return self.base / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` over loopback TCP, as the superuser."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def log(self) -> str:
        """What the server has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` synchronously (for fixtures); return psql's unaligned output."""
        return _run_psql(self.dsn(database), sql, ["-t"])

    def create_database(self) -> str:
        """A new empty database with a name unique in this cluster; return its name."""
        name = f"test_{os.getpid()}_{next(_db_names)}"
        self.psql(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session a failed test left connected to it."""
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Fast shutdown (SIGINT: roll back sessions, exit); SIGKILL if it will not go."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


@dataclass
class PsqlConnection:
    """An asyncpg-shaped connection that runs each call through ``psql`` (one session each)."""

    dsn: str

    async def execute(self, query: str) -> str:
        """Run a script of one or more statements in autocommit; return psql's output."""
        return await asyncio.to_thread(_run_psql, self.dsn, query)

    async def fetch(self, query: str) -> list[tuple[str | None, ...]]:
        """Run one query; return its rows, every value text or ``None`` for NULL."""
        out = await asyncio.to_thread(
            _run_psql,
            self.dsn,
            query,
            ["-t", "-F", _FIELD_SEP, "-R", _RECORD_SEP, "-P", f"null={_NULL}"],
        )
        out = out.removesuffix("\n")
        if not out:
            return []
        return [
            tuple(None if v == _NULL else v for v in line.split(_FIELD_SEP))
            for line in out.split(_RECORD_SEP)
        ]


def _run_psql(dsn: str, sql: str, extra: list[str] | None = None) -> str:
    """psql with no ~/.psqlrc, unaligned output, stopping at the first error."""
    cmd = ["psql", "-X", "-q", "-A", "-v", "ON_ERROR_STOP=1", *(extra or []), "-d", dsn]
    done = subprocess.run(
        cmd, input=sql, capture_output=True, text=True, timeout=PSQL_TIMEOUT_S, check=False
    )
    if done.returncode != 0:
        raise PsqlError(f"psql exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _os_user() -> str | None:
    """The user to run initdb and the server as: postgres when we are root (both refuse
    root), else ourselves."""
    return OS_USER if os.geteuid() == 0 else None


def _initdb(base: Path, bindir: Path) -> None:
    """A new cluster in ``base/data``: trust auth, UTF-8, no locale, no fsync at init."""
    done = subprocess.run(
        [
            bindir / "initdb",
            "-D",
            base / "data",
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ],
        user=_os_user(),
        cwd=base,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S * 2,
        check=False,
    )
    if done.returncode != 0:
        raise ClusterStartError(f"initdb failed: {done.stdout}\n{done.stderr}")


def _spawn(base: Path, bindir: Path, port: int) -> subprocess.Popen[bytes]:
    """``postgres -D`` in the foreground as our child, on loopback only."""
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(base / "sock"),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": "50",
        "shared_buffers": "32MB",
    }
    argv: list[str | Path] = [bindir / "postgres", "-D", base / "data"]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    log = (base / "server.log").open("wb")
    with log:
        # Our own child as the postgres user (not via runuser, which would not pass on the
        # SIGINT that stop() sends), so stop() signals the postmaster itself.
        return subprocess.Popen(
            argv, user=_os_user(), cwd=base, stdout=log, stderr=subprocess.STDOUT
        )


def _wait_ready(cluster: PrivateCluster) -> None:
    """Until the server accepts a query (it prints nothing reliable to wait on)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if cluster.process.poll() is not None:
            raise ClusterStartError(
                f"postgres exited {cluster.process.returncode}:\n{cluster.log()}"
            )
        try:
            cluster.psql("SELECT 1")
        except PsqlError:
            if time.monotonic() > deadline:
                raise ClusterStartError(f"postgres not ready:\n{cluster.log()}") from None
            time.sleep(0.1)
        else:
            return


def _give_to_os_user(base: Path) -> None:
    """Make ``base/sock`` and give ``base`` to the postgres user (as root), who must own
    the data directory initdb creates in it."""
    (base / "sock").mkdir(mode=0o700)
    if os.geteuid() != 0:
        return
    user = pwd.getpwnam(OS_USER)
    for path in (base, base / "sock"):
        os.chown(path, user.pw_uid, user.pw_gid)


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A fresh cluster, running until exit; stopped and its directory removed after,
    whatever happens in between."""
    bindir = pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="onecard-pg-"))
    cluster: PrivateCluster | None = None
    try:
        _give_to_os_user(base)
        _initdb(base, bindir)
        cluster = _start(base, bindir)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _start(base: Path, bindir: Path, attempts: int = 3) -> PrivateCluster:
    """Start the server on a free port; pick another if someone took it meanwhile."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        cluster = PrivateCluster(base=base, port=port, process=_spawn(base, bindir, port))
        try:
            _wait_ready(cluster)
        except ClusterStartError:
            cluster.stop()
            if attempt == attempts or "Address already in use" not in cluster.log():
                raise
        else:
            return cluster
    raise AssertionError("unreachable")
