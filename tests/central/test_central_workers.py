"""Two central workers on one PostgreSQL database (issue 10): they share the uplink through
MQTT shared subscriptions, exactly one leads, and a worker killed with ``kill -9`` mid-ingest
loses and doubles nothing while the other takes the lead within the lease.

Real parts throughout: two ``onecard-central serve`` processes, a private mosquitto (TLS,
ACL), a private PostgreSQL cluster, two in-process edges with simulated terminals selling and
opening doors the whole time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from broker import PrivateBroker, free_port
from sync_system import ALICE, BOB, KINDS, SITES, central_seed, edge_db, launch_edge, until

from central import master
from central.leader import LEADER_LOCK_KEY
from central.store import open_store
from edge_agent.service import EdgeService
from firmware_sim.terminals import DoorReader, PosTerminal, TerminalSettings
from protocol import auth

pytestmark = [pytest.mark.store_fixed, pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
#: The workers' lease (central.leader.PostgresLease defaults): leadership moves within
#: lease_s + interval_s of the leader's death.
LEASE_S, INTERVAL_S = 3.0, 1.0


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    http: int
    log: Path

    def metrics(self) -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{self.http}/metrics", timeout=5).text
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and " " in line:
                name, value = line.rsplit(" ", 1)
                found[name] = float(value)
        return found


@contextlib.contextmanager
def worker(name: str, dsn: str, broker: PrivateBroker, tmp_path: Path) -> Iterator[Worker]:
    port = free_port()
    log = tmp_path / f"central-{name}.log"
    command = [str(BIN / "onecard-central"), "serve", "--db", dsn, "--worker", name]
    command += ["--broker-url", broker.url, "--password-file", str(broker.dir.central_password)]
    command += ["--ca-file", str(broker.dir.ca_cert), "--http", f"127.0.0.1:{port}"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Worker(name, process, port, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def leader(dsn: str) -> str | None:
    """The worker holding the leader lease, from PostgreSQL's own lock table."""
    conn = await asyncpg.connect(dsn)
    try:
        name = await conn.fetchval(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.classid = $1 AND l.objid = $2",
            LEADER_LOCK_KEY >> 32,
            LEADER_LOCK_KEY & 0xFFFFFFFF,
        )
    finally:
        await conn.close()
    return None if name is None else str(name).removeprefix("onecard-central-lease-")


async def rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


@dataclass
class Chain:
    dsn: str
    workers: dict[str, Worker]
    edges: dict[str, EdgeService]
    keys: dict[tuple[str, str], bytes]

    def terminal(self, cls: type, site: str, tid: str) -> object:
        address = f"tcp://127.0.0.1:{self.edges[site].tcp_port}"
        return cls(TerminalSettings(tid, self.keys[(site, tid)], address, retry_s=0.2))


@pytest.fixture
async def chain(broker: PrivateBroker, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Chain]:
    keys = {(site, tid): auth.new_key() for site in SITES for tid in KINDS}
    passwords = {site: broker.add_site(site) for site in SITES}
    async with open_store(pg_dsn) as store:
        seed = central_seed(keys)
        await store.run(lambda conn: master.apply_seed(conn, seed, batch="test"))
    with (
        worker("w1", pg_dsn, broker, tmp_path) as w1,
        worker("w2", pg_dsn, broker, tmp_path) as w2,
    ):

        async def one_leads() -> bool:
            return await leader(pg_dsn) in {"w1", "w2"}

        await until(one_leads, 20)
        edges: dict[str, EdgeService] = {}
        tasks: list[asyncio.Task[None]] = []
        try:
            for site in SITES:
                edges[site], task = await launch_edge(broker, tmp_path, site, passwords[site])
                tasks.append(task)
            yield Chain(pg_dsn, {"w1": w1, "w2": w2}, edges, keys)
        finally:
            for edge in edges.values():
                edge.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


async def sell_and_open(till: PosTerminal, reader: DoorReader, until_done: asyncio.Event) -> int:
    """Sales of 1 fen by Alice and Bob and door taps until told; the fen sold."""
    sold = 0
    while not until_done.is_set():
        for uid in (ALICE, BOB):
            if (await till.sale(uid, amount=1)).ok:
                sold += 1
            await reader.tap(uid)
    return sold


def unacked(edge: EdgeService) -> int:
    with contextlib.closing(edge_db(edge)) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0])


def outbox(edge: EdgeService) -> int:
    with contextlib.closing(edge_db(edge)) as conn:
        return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


async def test_two_workers_share_ingest_and_a_killed_leader_hands_over_losing_nothing(
    chain: Chain,
) -> None:
    # One till and one door reader per site for the whole test: a terminal numbers its
    # requests, and a new one starting again at 1 would be answered from the edge's replay
    # of the old request with that number.
    async with contextlib.AsyncExitStack() as stack:
        terminals = {
            site: (
                await stack.enter_async_context(chain.terminal(PosTerminal, site, "POS-01")),  # type: ignore[arg-type]
                await stack.enter_async_context(chain.terminal(DoorReader, site, "DOOR-01")),  # type: ignore[arg-type]
            )
            for site in SITES
        }
        await failover(chain, terminals)


async def failover(chain: Chain, terminals: dict[str, tuple[PosTerminal, DoorReader]]) -> None:
    done = asyncio.Event()
    load = [asyncio.create_task(sell_and_open(*terminals[site], done)) for site in SITES]
    await asyncio.sleep(3)  # both workers ingesting

    # Both take records from the shared subscription.
    before = {name: w.metrics() for name, w in chain.workers.items()}
    batches = {n: m.get("onecard_central_batches_ingested_total", 0) for n, m in before.items()}
    assert all(count > 0 for count in batches.values()), batches
    leads = {n: m.get("onecard_central_leader", 0) for n, m in before.items()}
    assert sorted(leads.values()) == [0, 1], leads  # exactly one leads
    old = await leader(chain.dsn)
    assert old is not None and leads[old] == 1

    # kill -9 the leader mid-ingest; the other must lead within the lease.
    survivor = "w2" if old == "w1" else "w1"
    killed_at = time.monotonic()
    os.kill(chain.workers[old].process.pid, signal.SIGKILL)
    chain.workers[old].process.wait(10)

    async def survivor_leads() -> bool:
        return await leader(chain.dsn) == survivor

    await until(survivor_leads, 15)
    handover = time.monotonic() - killed_at
    assert handover < LEASE_S + INTERVAL_S + 1.0, handover

    await asyncio.sleep(3)  # sales go on against the survivor alone
    done.set()
    sold = await asyncio.gather(*load)

    # Every record reaches central exactly once: the edges' outboxes drain (acked), and
    # central holds exactly what the edges wrote, its ledger one entry per approved sale.
    async def drained() -> bool:
        return all(unacked(edge) == 0 for edge in chain.edges.values())

    await until(drained, 30)
    written = {site: outbox(edge) for site, edge in chain.edges.items()}
    stored = dict(await rows(chain.dsn, "SELECT site, count(*) FROM records GROUP BY site"))
    assert stored == written
    sales = await rows(
        chain.dsn,
        "SELECT count(*), coalesce(sum(cash_fen), 0) FROM ledger WHERE kind = 'purchase'",
    )
    assert sales == [(sum(sold), -sum(sold))]
    balances = dict(await rows(chain.dsn, "SELECT person_id, cash_fen FROM accounts"))
    ledger = dict(
        await rows(chain.dsn, "SELECT person_id, sum(cash_fen) FROM ledger GROUP BY person_id")
    )
    assert {p: int(v) for p, v in balances.items()} == {p: int(v) for p, v in ledger.items()}
    after = chain.workers[survivor].metrics()
    assert after["onecard_central_leader"] == 1
    assert after["onecard_central_batches_ingested_total"] > batches[survivor]

    # The new leader publishes: a card reported lost now is refused at both sites' doors.
    async with open_store(chain.dsn) as store:
        await store.run(lambda conn: master.report_lost(conn, BOB, at=datetime.now(UTC)))
    for _, reader in terminals.values():

        async def refused(reader: DoorReader = reader) -> bool:
            return not (await reader.tap(BOB)).ok

        await until(refused, 10)
