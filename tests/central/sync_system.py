"""Central + two edges over a private broker, for integration tests (the ``system`` fixture
in conftest.py builds one)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from broker import PrivateBroker
from stores import central_db, open_store

from central import master
from central.adapters.sqlite_store import CentralStore
from central.service import CentralService
from edge_agent.adapters.mqtt_client import BrokerSettings
from edge_agent.config import EdgeConfig, MqttConfig, TerminalsConfig
from edge_agent.service import EdgeService
from firmware_sim.terminals import TerminalSettings
from protocol import auth

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
    passwords: dict[str, str]
    edge_tasks: dict[str, asyncio.Task[None]]

    async def stop_edge(self, site: str) -> None:
        """Stop a site's edge cleanly (its database stays)."""
        self.edges[site].stop()
        await self.edge_tasks.pop(site)

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


async def launch_edge(
    broker: PrivateBroker, tmp_path: Path, site: str, password: str
) -> tuple[EdgeService, asyncio.Task[None]]:
    """A site's edge running (data under ``tmp_path / site``) with central's snapshot."""
    data = tmp_path / site
    data.mkdir(exist_ok=True)
    (data / "mqtt.password").write_text(password)
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
    task = asyncio.create_task(edge.run())
    await asyncio.wait_for(edge.ready.wait(), 10)

    async def has_terminals() -> bool:  # the snapshot from central has arrived
        return edge.site is not None and len(edge.site.terminals) == len(KINDS)

    await until(has_terminals)
    return edge, task


async def build_system(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[System]:
    """Central and both sites running, seeded, each site holding its snapshot."""
    keys = {(site, tid): auth.new_key() for site in SITES for tid in KINDS}
    passwords = {site: broker.add_site(site) for site in SITES}
    tasks: list[asyncio.Task[None]] = []
    async with open_store(central_db(tmp_path)) as store:
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
        edge_tasks: dict[str, asyncio.Task[None]] = {}

        async def start_edge(site: str) -> EdgeService:
            edges[site], edge_tasks[site] = await launch_edge(
                broker, tmp_path, site, passwords[site]
            )
            return edges[site]

        for site in SITES:
            await start_edge(site)
        yield System(broker, central, store, edges, keys, start_edge, passwords, edge_tasks)
        for site in list(edge_tasks):
            edges[site].stop()
        central.stop()
        await asyncio.gather(*tasks, *edge_tasks.values(), return_exceptions=True)


def edge_db(edge: EdgeService) -> sqlite3.Connection:
    return sqlite3.connect(edge.config.database)
