"""Central and two edges over a private mosquitto with TLS and the generated ACL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import PrivateBroker

from central import master
from central.adapters.sqlite_store import CentralStore
from central.service import CentralService
from edge_agent.adapters.mqtt_client import BrokerSettings
from edge_agent.config import EdgeConfig, MqttConfig, TerminalsConfig
from edge_agent.service import EdgeService
from firmware_sim.terminals import DoorReader, PosTerminal, RechargeKiosk, TerminalSettings
from protocol import auth

pytestmark = pytest.mark.integration

SITES = ("SZ-FUTIAN", "BJ-CHAOYANG")
ALICE = "04A1B2C3D4E5F6"
BOB = "04B0B0B0B0B0B0"
KINDS = {"DOOR-01": "door", "POS-01": "pos", "KIOSK-01": "recharge"}


def central_seed(keys: dict[tuple[str, str], bytes]) -> master.CentralSeed:
    import msgspec

    sites = {
        site: {
            "policy": {"site": site},
            "terminals": [
                {"id": tid, "kind": kind, "key_hex": keys[(site, tid)].hex()}
                for tid, kind in KINDS.items()
            ],
            "door_groups": [{"id": "MAIN"}],
            "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01"}],
            "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
            "access_levels": [{"id": "ALL", "door_group_id": "MAIN", "time_zone_id": "24H"}],
        }
        for site in SITES
    }
    return msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice"}, {"id": "P2", "name": "Bob"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}, {"uid": BOB, "person_id": "P2"}],
            "accounts": [
                {"person_id": "P1", "cash_fen": 1000},
                {"person_id": "P2", "cash_fen": 5000},
            ],
            "access_grants": [
                {"person_id": "P1", "access_level_id": "ALL"},
                {"person_id": "P2", "access_level_id": "ALL"},
            ],
            "sites": sites,
        },
        master.CentralSeed,
        strict=False,  # JSON-like input: weekday keys as strings
    )


@dataclass
class System:
    broker: PrivateBroker
    central: CentralService
    store: CentralStore
    edges: dict[str, EdgeService]
    keys: dict[tuple[str, str], bytes]
    start_edge: Callable[[str], Awaitable[EdgeService]]

    def terminal(self, cls: type, site: str, tid: str) -> object:
        edge = self.edges[site]
        return cls(
            TerminalSettings(
                tid, self.keys[(site, tid)], f"tcp://127.0.0.1:{edge.tcp_port}", retry_s=0.5
            )
        )


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 15) -> None:
    """Poll ``predicate`` (it reads another process's state) until true, or fail."""
    async with asyncio.timeout(within):
        while not await predicate():  # noqa: ASYNC110 - polling another party's database
            await asyncio.sleep(0.05)


@pytest.fixture
async def system(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[System]:
    keys = {(site, tid): auth.new_key() for site in SITES for tid in KINDS}
    passwords = {site: broker.add_site(site) for site in SITES}
    tasks: list[asyncio.Task[None]] = []
    async with CentralStore.open(tmp_path / "central.db") as store:
        seed = central_seed(keys)
        await store.run(lambda conn: master.apply_seed(conn, seed, batch="test"))
        central = CentralService(
            store,
            BrokerSettings.from_url(
                broker.url,
                username="central",
                password=broker.central_password(),
                ca_file=broker.dir.ca_cert,
            ),
        )
        tasks.append(asyncio.create_task(central.run()))
        await asyncio.wait_for(central.ready.wait(), 10)
        edges: dict[str, EdgeService] = {}

        async def start_edge(site: str) -> EdgeService:
            data = tmp_path / site
            data.mkdir(exist_ok=True)
            (data / "mqtt.password").write_text(passwords[site])
            config = EdgeConfig(
                site=site,
                data_dir=data,
                terminals=TerminalsConfig(listen="127.0.0.1:0"),
                mqtt=MqttConfig(
                    url=broker.url,
                    password_file=data / "mqtt.password",
                    ca_file=broker.dir.ca_cert,
                ),
            )
            edge = EdgeService(config, version="test")
            tasks.append(asyncio.create_task(edge.run()))
            await asyncio.wait_for(edge.ready.wait(), 10)
            edges[site] = edge

            async def has_terminals() -> bool:  # the snapshot from central has arrived
                return edge.site is not None and len(edge.site.terminals) == len(KINDS)

            await until(has_terminals)
            return edge

        for site in SITES:
            await start_edge(site)
        yield System(broker, central, store, edges, keys, start_edge)
        for edge in edges.values():
            edge.stop()
        central.stop()
        await asyncio.gather(*tasks, return_exceptions=True)


def edge_db(edge: EdgeService) -> sqlite3.Connection:
    return sqlite3.connect(edge.config.database)


async def test_taps_at_two_sites_reach_central_exactly_once(system: System):
    door_a = system.terminal(DoorReader, "SZ-FUTIAN", "DOOR-01")
    door_b = system.terminal(DoorReader, "BJ-CHAOYANG", "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        for _ in range(5):
            assert (await a.tap(ALICE)).ok
            assert (await b.tap(BOB)).ok

    async def all_acked() -> bool:
        for edge in system.edges.values():
            with edge_db(edge) as conn:
                if conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]:
                    return False
        return True

    await until(all_acked)
    rows = await system.store.run(
        lambda conn: conn.execute(
            "SELECT site, count(*), count(DISTINCT id) FROM records GROUP BY site ORDER BY site"
        ).fetchall()
    )
    assert rows == [("BJ-CHAOYANG", 5, 5), ("SZ-FUTIAN", 5, 5)]


async def test_a_recharge_at_one_site_is_spendable_at_the_other(system: System):
    kiosk = system.terminal(RechargeKiosk, "SZ-FUTIAN", "KIOSK-01")
    till = system.terminal(PosTerminal, "BJ-CHAOYANG", "POS-01")
    async with till as pos:  # type: ignore[attr-defined]
        refused = await pos.sale(ALICE, amount=5000)  # ¥10 on the card: not enough
        assert refused.code == "insufficient_funds"
        async with kiosk as k:  # type: ignore[attr-defined]
            assert (await k.recharge(ALICE, 20000, pay_ref="BANK-77")).ok

        async def credited_at_b() -> bool:
            with edge_db(system.edges["BJ-CHAOYANG"]) as conn:
                row = conn.execute(
                    "SELECT cash_fen FROM accounts WHERE person_id = 'P1'"
                ).fetchone()
            return row is not None and row[0] == 21000

        await until(credited_at_b)
        sale = await pos.sale(ALICE, amount=5000)
    assert sale.ok and sale.balance == 16000
    ledger = await system.store.run(
        lambda conn: conn.execute(
            "SELECT sum(cash_fen) FROM ledger WHERE person_id = 'P1'"
        ).fetchone()[0]
    )

    async def settled() -> bool:
        total = await system.store.run(
            lambda conn: conn.execute(
                "SELECT cash_fen FROM accounts WHERE person_id = 'P1'"
            ).fetchone()[0]
        )
        return bool(total == 16000)

    await until(settled)
    assert ledger in (21000, 16000)


async def test_a_card_reported_lost_at_central_is_refused_at_both_sites(system: System):
    door_a = system.terminal(DoorReader, "SZ-FUTIAN", "DOOR-01")
    door_b = system.terminal(DoorReader, "BJ-CHAOYANG", "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        assert (await a.tap(BOB)).ok
        from datetime import UTC, datetime

        await system.store.run(lambda conn: master.report_lost(conn, BOB, at=datetime.now(UTC)))
        started = asyncio.get_running_loop().time()

        async def refused_everywhere() -> bool:
            ra, rb = await a.tap(BOB), await b.tap(BOB)
            return not ra.ok and not rb.ok

        await until(refused_everywhere, within=5)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2.0, f"took {elapsed:.2f}s to reach both sites"
