"""The edge serving simulators of all four kinds, in-process, over TCP and a serial pty."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from edge_fixtures import LOST, MEMBER, SITE, make_seed, new_keys

from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import EdgeConfig, TerminalsConfig
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import EdgeService
from firmware_sim.link import PeerError
from firmware_sim.ptypair import pty_pair
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    PosTerminal,
    RechargeKiosk,
    SimulatedCrashError,
    TerminalSettings,
)
from protocol import auth
from protocol.framing import Frame, FrameType, encode_frame
from protocol.messages import decode_record
from protocol.terminal import RechargeCommit, Tap

StartEdge = Callable[..., Awaitable[EdgeService]]


@pytest.fixture
def keys() -> dict[str, bytes]:
    return new_keys()


@pytest.fixture
async def start_edge(tmp_path: Path, keys) -> AsyncIterator[StartEdge]:
    """Start (and restart) an in-process edge on ``tmp_path`` with the standard seed."""
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(make_seed(keys), ensure_ascii=False))
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        seed = load_seed(seed_file)
        await store.run(lambda conn: apply_seed(conn, seed))
    running: list[tuple[EdgeService, asyncio.Task[None]]] = []

    async def start(serial: list[str] | None = None) -> EdgeService:
        config = EdgeConfig(
            site=SITE,
            data_dir=tmp_path,
            terminals=TerminalsConfig(listen="127.0.0.1:0", serial=serial or []),
        )
        service = EdgeService(config)
        task = asyncio.create_task(service.run())
        running.append((service, task))
        async with asyncio.timeout(10):
            await service.ready.wait()
        return service

    yield start
    for service, task in running:
        service.stop()
        await task


def settings(keys, tid: str, service: EdgeService, **kw) -> TerminalSettings:
    return TerminalSettings(
        tid, keys[tid], f"tcp://127.0.0.1:{service.tcp_port}", retry_s=0.3, retries=2, **kw
    )


def outbox(tmp_path: Path) -> list:
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY rowid").fetchall()
    return [decode_record(row[0]) for row in rows]


async def test_every_kind_is_served_and_every_answer_is_in_the_outbox(start_edge, keys, tmp_path):
    edge = await start_edge()
    async with (
        DoorReader(settings(keys, "DOOR-01", edge)) as door,
        AttendanceClock(settings(keys, "CLOCK-01", edge)) as clock,
        PosTerminal(settings(keys, "POS-01", edge)) as pos,
        RechargeKiosk(settings(keys, "KIOSK-01", edge)) as kiosk,
    ):
        opened = await door.tap(MEMBER)
        refused = await door.tap(LOST)
        punched = await clock.punch(MEMBER)
        sale = await pos.sale(MEMBER, amount=1500)  # subsidy ¥10 first, then ¥5 cash
        broke = await pos.sale(MEMBER, amount=100_000)
        topup = await kiosk.recharge(MEMBER, 20_000, pay_ref="BANK-1")
        assert await door.report_event("door_forced")
    assert (opened.ok, opened.open_ms) == (True, 3000)
    assert (refused.ok, refused.code) == (False, "lost")
    assert punched.ok and punched.display.startswith("打卡成功")
    assert (sale.ok, sale.amount, sale.balance) == (True, 1500, 4500)
    assert (broke.ok, broke.code) == (False, "insufficient_funds")
    assert (topup.ok, topup.balance) == (True, 24500)

    records = outbox(tmp_path)
    kinds = [type(r).__name__ for r in records]
    assert kinds == [
        "DoorAccess",
        "DoorAccess",
        "AttendancePunch",
        "Purchase",
        "Purchase",
        "RechargePrepare",
        "RechargeCommit",
        "TerminalEvent",
    ]
    lanes = [(int(r.id.split(".")[2]), r.seq) for r in records]
    assert lanes == [(1, 1), (1, 2), (1, 3), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4)]
    purchase = records[3]
    assert (purchase.subsidy_fen, purchase.cash_fen, purchase.approved) == (1000, 500, True)
    assert records[1].granted is False and records[1].reason == "lost"
    epoch = edge_epoch(tmp_path)
    assert all(r.site == SITE and r.id.startswith(f"{SITE}.{epoch}.") for r in records)


def edge_epoch(tmp_path: Path) -> int:
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()[0])


async def test_attendance_clock_over_a_serial_line(start_edge, keys, tmp_path):
    async with pty_pair() as (edge_side, terminal_side):
        edge = await start_edge(serial=[f"serial://{edge_side}"])
        clock = AttendanceClock(
            TerminalSettings("CLOCK-01", keys["CLOCK-01"], f"serial://{terminal_side}")
        )
        for _ in range(50):  # the edge opens the line moments after it is ready
            try:
                await clock.connect()
                break
            except (OSError, TimeoutError, ConnectionError):
                await asyncio.sleep(0.1)
        try:
            outcome = await clock.punch(MEMBER, punch="in")
        finally:
            await clock.close()
    assert outcome.ok
    assert edge.registry.sessions == {} or "CLOCK-01" in edge.registry.last_seen_wall
    assert type(outbox(tmp_path)[-1]).__name__ == "AttendancePunch"


async def test_forged_terminal_is_refused_and_nothing_it_sends_is_decided(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    impostor = TerminalSettings(
        "POS-01", auth.new_key(), f"tcp://127.0.0.1:{edge.tcp_port}", retry_s=0.3, retries=1
    )
    with pytest.raises(PeerError, match="auth_failed"):
        await PosTerminal(impostor).connect()
    stranger = TerminalSettings(
        "POS-99", auth.new_key(), f"tcp://127.0.0.1:{edge.tcp_port}", retry_s=0.3, retries=1
    )
    with pytest.raises(PeerError, match="unknown_terminal"):
        await PosTerminal(stranger).connect()
    # A TAP without a handshake is refused too, and the link closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.tcp_port)
    tap = Tap(rec=1, uid=MEMBER, time_ms=1_795_440_000_000, amount=100)
    from protocol.terminal import message_frame

    writer.write(encode_frame(message_frame(tap, 1)))
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(4096), 3)
    assert reply[2] == FrameType.ERROR and b"unauthenticated" in reply
    assert await asyncio.wait_for(reader.read(4096), 3) == b""  # closed by the edge
    writer.close()
    assert outbox(tmp_path) == []


async def test_retransmitted_tap_gets_the_original_decision_even_after_an_edge_restart(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    async with PosTerminal(settings(keys, "POS-01", edge)) as pos:
        assert pos._link is not None
        tap = Tap(rec=500, uid=MEMBER, time_ms=pos.now_ms(), amount=2000)
        first = await pos._link.request(tap)
    edge.stop()
    await asyncio.sleep(0.1)
    edge2 = await start_edge()
    async with PosTerminal(settings(keys, "POS-01", edge2)) as pos:
        assert pos._link is not None
        again = await pos._link.request(tap)
    assert first == again
    purchases = [r for r in outbox(tmp_path) if type(r).__name__ == "Purchase"]
    assert len(purchases) == 1  # charged once


async def test_lost_recharge_commit_is_retried_and_credits_once(start_edge, keys, tmp_path):
    edge = await start_edge()
    state = tmp_path / "kiosk.json"
    kiosk = RechargeKiosk(settings(keys, "KIOSK-01", edge, state_file=state))
    await kiosk.connect()
    with pytest.raises(SimulatedCrashError):
        await kiosk.recharge(MEMBER, 20_000, pay_ref="BANK-LOST", crash_after_payment=True)
    await kiosk.close()
    restarted = RechargeKiosk(settings(keys, "KIOSK-01", edge, state_file=state))
    async with restarted:  # commits the paid recharge on connecting
        assert restarted.store.state.pending_recharges == []
        late = await restarted._phase(
            RechargeCommit(rec=9000, pay_ref="BANK-LOST", time_ms=restarted.now_ms())
        )
    assert late.ok and late.code == "already_committed"
    commits = [r for r in outbox(tmp_path) if type(r).__name__ == "RechargeCommit"]
    assert len(commits) == 1 and commits[0].amount == 20_000
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        credited = conn.execute(
            "SELECT sum(cash_fen) FROM local_deltas WHERE person_id = 'P1'"
        ).fetchone()[0]
    assert credited == 20_000


async def test_garbage_and_bad_bodies_are_answered_counted_and_dead_lettered(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    async with DoorReader(settings(keys, "DOOR-01", edge)) as door:
        session = edge.registry.sessions["DOOR-01"]
        assert door._link is not None
        door._link._writer.write(b"\x02\x01\x10\x00\x09\x00\x02\x80\x80\xde\xad" + b"\xff" * 50)
        door._link._writer.write(encode_frame(Frame(FrameType.TAP, 77, b"\x81\xa3rec\xa1x")))
        await door._link._writer.drain()
        await asyncio.sleep(0.2)
        still = await door.tap(MEMBER)
    assert still.ok  # the session survived
    assert session.stats.bad_messages == 1
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        letters = conn.execute("SELECT source, reason FROM dead_letters").fetchall()
    assert letters and letters[0][0] == "terminal:DOOR-01" and "TAP" in letters[0][1]


async def test_two_taps_of_one_card_in_one_commit_batch_cannot_overspend(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    async with (
        PosTerminal(settings(keys, "POS-01", edge)) as pos1,
        PosTerminal(settings(keys, "POS-02", edge)) as pos2,
    ):
        a, b = await asyncio.gather(
            pos1.sale(MEMBER, amount=4000), pos2.sale(MEMBER, amount=4000)
        )  # ¥60 available: only one of two ¥40 sales can be approved
    assert sorted([a.ok, b.ok]) == [False, True]


async def test_status_snapshot_shows_terminals_and_outbox(start_edge, keys, tmp_path):
    edge = await start_edge()
    async with DoorReader(settings(keys, "DOOR-01", edge)) as door:
        await door.tap(MEMBER)
        assert edge.site is not None
        status = await edge.site.status(edge.registry, version="test")
    online = {t["id"]: t["online"] for t in status["terminals"]}
    assert online["DOOR-01"] is True and online["POS-01"] is False
    assert status["outbox_depth"] == 1 and status["blacklist_version"] == 1
    assert msgspec.json.encode(status)  # serialisable for status.json
