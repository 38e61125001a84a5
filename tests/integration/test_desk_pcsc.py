"""The service desk end to end: ``onecard-edge desk …`` (a child process, pyscard through a
real private pcscd + vpcd reading the virtual card) talking to a real edge (in-process,
real SQLite, its desk socket) that has no broker configured — central is unreachable, so
every operation must sit in the outbox's lane 0 as an intent or a money record."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pcscd import FRIENDLY_NAME, PcscClient, PrivatePcscd, free_port_pair

from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import DeskConfig, EdgeConfig, MetricsConfig, TerminalsConfig
from edge_agent.seed import Seed, apply_seed
from edge_agent.service import EdgeService
from firmware_sim.vcard import CardApplet, VirtualCard, keep_inserted
from protocol.messages import decode_record

pytestmark = pytest.mark.integration

SITE = "SZ-FUTIAN"
MEMBER = "04A1B2C3D4E5F6"
NEW = "04AA000000BEEF"
OTHER = "04BB000000CAFE"
BIN = Path(sys.executable).parent
#: Generous: two cores shared by several test runs.
CLI_TIMEOUT = 60.0
SEED = {
    "site": SITE,
    "persons": [
        {"id": "P1", "name": "张三", "number": "S001", "kind": "staff"},
        {"id": "P3", "name": "王五", "number": "M003", "kind": "member"},
    ],
    "cards": [{"uid": MEMBER, "person_id": "P1"}],
    "accounts": [{"person_id": "P1", "cash_fen": 5000, "subsidy_fen": 1000}],
}


@dataclass
class Edge:
    """A running edge with its desk socket, and the config file the CLI reads."""

    service: EdgeService
    config_path: Path
    database: Path

    def records(self) -> list[tuple[int, Any]]:
        with sqlite3.connect(self.database) as conn:
            rows = conn.execute("SELECT lane, payload FROM outbox ORDER BY rowid").fetchall()
        return [(lane, decode_record(payload)) for lane, payload in rows]

    def acked(self) -> dict[str, str]:
        with sqlite3.connect(self.database) as conn:
            return dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'acked_%'"))


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    socket_path = tmp_path / "desk.sock"
    config_path = tmp_path / "edge.toml"
    # No [mqtt]: the site runs standalone, central unreachable.
    config_path.write_text(
        f'site = "{SITE}"\ndata_dir = "{tmp_path}"\n\n[metrics]\nlisten = ""\n\n'
        f'[desk]\nenabled = true\nsocket = "{socket_path}"\noperator = "desk-li"\n'
    )
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        seed = msgspec.json.decode(json.dumps(SEED), type=Seed)
        await store.run(lambda conn: apply_seed(conn, seed))
    config = EdgeConfig(
        site=SITE,
        data_dir=tmp_path,
        terminals=TerminalsConfig(listen="127.0.0.1:0"),
        metrics=MetricsConfig(listen=""),
        desk=DeskConfig(enabled=True, socket=socket_path, operator="desk-li"),
    )
    service = EdgeService(config)
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(30):
        await service.ready.wait()
    try:
        yield Edge(service, config_path, tmp_path / "edge.db")
    finally:
        service.stop()
        await task


class DeskCli:
    """``onecard-edge desk ARGS`` as a child process bound to a pcscd."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.out = b""

    @classmethod
    async def start(cls, pcscd: PrivatePcscd, edge: Edge, *args: str) -> DeskCli:
        process = await asyncio.create_subprocess_exec(
            BIN / "onecard-edge", "desk", *args, "--config", str(edge.config_path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=pcscd.client_env(),
        )  # fmt: skip
        return cls(process)

    async def expect(self, text: str, within: float = CLI_TIMEOUT) -> None:
        """Read stdout until ``text`` appears (a prompt ends without a newline)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            while text.encode() not in self.out:
                chunk = await self.process.stdout.read(4096)
                assert chunk, f"exited before {text!r}: {self.out.decode()}"
                self.out += chunk

    async def finish(self, answer: str | None = None) -> tuple[int, str, str]:
        """Send ``answer`` (a line) if given, then wait for the exit."""
        async with asyncio.timeout(CLI_TIMEOUT):
            out, err = await self.process.communicate(
                None if answer is None else answer.encode() + b"\n"
            )
        assert self.process.returncode is not None
        return self.process.returncode, (self.out + out).decode(), err.decode()


async def desk(pcscd: PrivatePcscd, edge: Edge, *args: str) -> tuple[int, str, str]:
    """Run one desk command to its end."""
    return await (await DeskCli.start(pcscd, edge, *args)).finish()


def reply_of(out: str) -> dict[str, Any]:
    """The JSON reply a ``--json`` command printed last."""
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture
async def inserted(pcscd: PrivatePcscd, pcsc: PcscClient) -> AsyncIterator[Any]:
    """Insert cards by UID; every card is out again (as pcscd sees it) afterwards."""
    await pcsc.wait_for_card(present=False)
    cards: list[VirtualCard] = []

    async def insert(uid: str) -> VirtualCard:
        card = VirtualCard(CardApplet(bytes.fromhex(uid)))
        async with asyncio.timeout(10):
            await card.insert("127.0.0.1", pcscd.vpcd_port)
        await pcsc.wait_for_card(present=True)
        cards.append(card)
        return card

    yield insert
    for card in cards:
        await card.remove()
    await pcsc.wait_for_card(present=False)


async def test_readers_lists_the_vpcd_slots(pcscd: PrivatePcscd, edge: Edge) -> None:
    code, out, err = await desk(pcscd, edge, "readers")
    assert code == 0, err
    assert f"* {FRIENDLY_NAME} 00 00  (empty)" in out
    assert f"  {FRIENDLY_NAME} 00 01  (empty)" in out


async def test_issue_recharge_and_read_through_pcscd_with_central_unreachable(
    pcscd: PrivatePcscd, edge: Edge, inserted: Any
) -> None:
    await inserted(NEW)
    code, out, err = await desk(pcscd, edge, "issue", "--person", "P3", "--yes", "--json")
    assert code == 0, err
    issued = reply_of(out)
    assert issued["ok"] and issued["card"]["person_id"] == "P3"

    code, out, err = await desk(pcscd, edge, "recharge", "--yuan", "12.50", "--yes", "--json")
    assert code == 0, err
    assert reply_of(out)["card"]["balance_fen"] == 1250

    code, out, err = await desk(pcscd, edge, "read", "--json")
    assert code == 0, err
    read = reply_of(out)
    assert (read["card"]["person_name"], read["card"]["balance_fen"]) == ("王五", 1250)
    assert read["card"]["pending_fen"] == 1250 and read["card"]["unconfirmed"]
    kinds = [entry["kind"] for entry in read["history"]]
    assert kinds == ["recharge.commit", "recharge.prepare", "card.intent"]

    # Central is unreachable: all three wait in lane 0, none acknowledged.
    records = edge.records()
    assert [(lane, record.card_uid) for lane, record in records] == [(0, NEW)] * 3
    intent = records[0][1]
    assert (intent.action, intent.person_id, intent.operator) == ("issue", "P3", "desk-li")
    assert edge.acked() == {}

    code, out, err = await desk(pcscd, edge, "read")  # the human form
    assert code == 0, err
    assert "balance ¥12.50" in out and "not yet at HQ" in out


async def test_lost_card_is_refused_here_at_once(
    pcscd: PrivatePcscd, edge: Edge, inserted: Any
) -> None:
    await inserted(MEMBER)
    code, out, err = await desk(pcscd, edge, "lost", "--reason", "bus", "--yes")
    assert code == 0, err
    assert "reported lost" in out
    code, out, err = await desk(pcscd, edge, "recharge", "--fen", "100", "--yes")
    assert code == 1
    assert "refused (lost)" in err
    assert [type(r).__name__ for _, r in edge.records()] == ["CardIntent"]


async def test_card_pulled_before_the_operation_is_sent_leaves_nothing(
    pcscd: PrivatePcscd, pcsc: PcscClient, edge: Edge, inserted: Any
) -> None:
    card = await inserted(MEMBER)
    cli = await DeskCli.start(pcscd, edge, "recharge", "--fen", "500")
    await cli.expect("go ahead?")
    await card.remove()
    await pcsc.wait_for_card(present=False)
    code, _out, err = await cli.finish("y")
    assert code == 1
    assert "card_removed" in err and "nothing was sent, nothing recorded" in err
    assert edge.records() == []


async def test_card_swapped_before_the_operation_is_sent_leaves_nothing(
    pcscd: PrivatePcscd, pcsc: PcscClient, edge: Edge, inserted: Any
) -> None:
    card = await inserted(MEMBER)
    cli = await DeskCli.start(pcscd, edge, "lost", "--wait", "30")
    await cli.expect("go ahead?")
    await card.remove()
    await pcsc.wait_for_card(present=False)
    await inserted(OTHER)
    code, _out, err = await cli.finish("y")
    assert code == 1
    assert "card_swapped" in err and OTHER in err
    assert edge.records() == []


async def test_no_card_in_time_is_a_clear_error(
    pcscd: PrivatePcscd, pcsc: PcscClient, edge: Edge
) -> None:
    await pcsc.wait_for_card(present=False)
    code, _out, err = await desk(pcscd, edge, "read", "--wait", "1.5")
    assert code == 1
    assert "no_card: no card was presented within 1.5 s" in err


@pytest.fixture
def own_pcscd() -> AsyncIterator[PrivatePcscd]:
    """A second private pcscd, stopped and started by the test (the reader unplugged and
    plugged back in); its client socket keeps its path across restarts."""
    base = Path(tempfile.mkdtemp(prefix="desk-pcscd-", dir="/tmp"))
    daemon = PrivatePcscd(vpcd_port=free_port_pair(), workdir=base / "d")
    try:
        yield daemon  # type: ignore[misc]
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


async def test_reader_unplugged_mid_operation_leaves_nothing_then_plugged_back_is_used(
    own_pcscd: PrivatePcscd, edge: Edge
) -> None:
    card = VirtualCard(CardApplet(bytes.fromhex(MEMBER)))
    keeper = asyncio.create_task(keep_inserted(card, "127.0.0.1", own_pcscd.vpcd_port))
    try:
        await asyncio.to_thread(own_pcscd.start)
        cli = await DeskCli.start(own_pcscd, edge, "recharge", "--fen", "300")
        await cli.expect("go ahead?")
        await asyncio.to_thread(own_pcscd.stop)  # the reader (and pcscd) gone
        code, _out, err = await cli.finish("y")
        assert code == 1
        assert "nothing was sent, nothing recorded" in err
        assert edge.records() == []

        # Waiting for a card with no reader at all: the reader appears, the card is read.
        cli = await DeskCli.start(own_pcscd, edge, "read", "--json", "--wait", "60")
        assert cli.process.stderr is not None
        async with asyncio.timeout(CLI_TIMEOUT):
            line = await cli.process.stderr.readline()
        assert b"waiting:" in line and b"pcscd" in line
        await asyncio.to_thread(own_pcscd.start)
        code, out, err = await cli.finish()
        assert code == 0, err
        assert reply_of(out)["card"]["person_id"] == "P1"
    finally:
        keeper.cancel()
        await asyncio.wait({keeper})


async def test_daemon_not_running_is_a_clear_error(
    pcscd: PrivatePcscd, edge: Edge, inserted: Any, tmp_path: Path
) -> None:
    await inserted(MEMBER)
    lone = tmp_path / "no-daemon.toml"
    lone.write_text(f'site = "{SITE}"\n[desk]\nsocket = "{tmp_path / "gone.sock"}"\n')
    cli = Edge(edge.service, lone, edge.database)
    code, _out, err = await desk(pcscd, cli, "recharge", "--fen", "100", "--yes")
    assert code == 1
    assert "no desk socket" in err and "[desk] enabled = true" in err
    assert edge.records() == []
