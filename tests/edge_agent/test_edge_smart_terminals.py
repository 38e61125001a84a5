"""Terminals that decide locally (智能终端) against the real edge, in-process: lists pushed on
connect and on change, a full reload after a version gap, missing record numbers asked for
again, void ones given up, and a terminal's lag tracked while it is switched off."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from edge_fixtures import LOST, MEMBER, SITE, card_uid, make_seed, new_keys

from edge_agent.adapters.mqtt_sync import _apply_blacklist
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import EdgeConfig, TerminalsConfig
from edge_agent.lists import (
    Applied,
    SiteList,
    full_reload,
    missing_between,
    plan_updates,
    rec_ranges,
)
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import EdgeService
from firmware_sim.terminals import AttendanceClock, DoorReader, TerminalSettings
from protocol.messages import BlacklistChange, BlacklistDelta, decode_record
from protocol.terminal import MAX_LIST_UIDS

StartEdge = Callable[[], Awaitable[EdgeService]]
STRANGER = "0A0B0C0D"  # a card the site does not know


@pytest.fixture
def keys() -> dict[str, bytes]:
    return new_keys()


@pytest.fixture
def members() -> int:
    """Generated cardholders in the seed (a test overrides it for long lists)."""
    return 0


@pytest.fixture
async def start_edge(tmp_path: Path, keys, members) -> AsyncIterator[StartEdge]:
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(make_seed(keys, members=members), ensure_ascii=False))
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        seed = load_seed(seed_file)
        await store.run(lambda conn: apply_seed(conn, seed))
    running: list[tuple[EdgeService, asyncio.Task[None]]] = []

    async def start() -> EdgeService:
        config = EdgeConfig(
            site=SITE, data_dir=tmp_path, terminals=TerminalsConfig(listen="127.0.0.1:0")
        )
        service = EdgeService(config)
        task = asyncio.create_task(service.run())
        running.append((service, task))
        async with asyncio.timeout(15):
            await service.ready.wait()
        return service

    yield start
    for service, task in running:
        service.stop()
        await task


def smart(keys, tid: str, edge: EdgeService, tmp_path: Path) -> TerminalSettings:
    return TerminalSettings(
        tid,
        keys[tid],
        f"tcp://127.0.0.1:{edge.tcp_port}",
        state_file=tmp_path / f"{tid}.state",
        smart=True,
        upload_every_s=0.2,
    )


async def eventually(check: Callable[[], Awaitable[bool] | bool], within: float = 20) -> None:
    """Wait until ``check()`` holds (generous: the machine may be loaded)."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def blacklist(edge: EdgeService, uid: str, *, op: str = "add") -> None:
    """What the sync does with a blacklist delta from HQ: apply it, then tell the lists."""
    assert edge.site is not None
    store = edge.site.store
    rows = await store.read("SELECT value FROM meta WHERE key = 'blacklist_version'")
    current = int(rows[0][0]) if rows else 0
    now = datetime.now(UTC)
    delta = BlacklistDelta(
        version=current + 1,
        prev_version=current,
        at=now,
        changes=[BlacklistChange(op=op, card_uid=uid, reason="lost", effective_at=now)],  # type: ignore[arg-type]
    )
    assert not await store.run(lambda c: _apply_blacklist(c, [delta]))
    assert edge.site.on_lists is not None
    edge.site.on_lists()


async def terminal_status(edge: EdgeService, tid: str) -> dict[str, Any]:
    assert edge.site is not None
    status = await edge.site.status(edge.registry, version="test")
    (entry,) = [t for t in status["terminals"] if t["id"] == tid]
    return entry


def uploaded(tmp_path: Path, tid: str) -> list[int]:
    """term_rec of every record of ``tid`` in the edge's outbox (a repeat would show twice)."""
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY rowid").fetchall()
    records = [decode_record(r[0]) for r in rows]
    return sorted(r.term_rec for r in records if r.terminal == tid and r.term_rec is not None)


# -- the pure planning ----------------------------------------------------------------------------


def test_a_list_never_given_is_a_full_reload_chained_in_frame_sized_pieces():
    uids = frozenset(f"05{i:012X}" for i in range(MAX_LIST_UIDS * 2 + 5))
    target = SiteList("blacklist", "blacklist", None, 7, uids)

    updates = plan_updates(target, None, now_ms=1_000)

    assert [len(u.add) for u in updates] == [MAX_LIST_UIDS, MAX_LIST_UIDS, 5]
    assert updates[0].full and not any(u.full for u in updates[1:])
    assert [u.prev_version for u in updates[1:]] == [u.version for u in updates[:-1]]
    assert set().union(*(u.add for u in updates)) == uids


def test_a_delta_carries_only_the_difference_and_nothing_when_in_step():
    target = SiteList("whitelist:D1", "whitelist", "D1", 3, frozenset({"0A0A0A0A", "0B0B0B0B"}))
    applied = Applied(version=5_000, covers=2, uids=frozenset({"0B0B0B0B", "0C0C0C0C"}))

    (update,) = plan_updates(target, applied, now_ms=10)

    assert (update.add, update.remove, update.door) == (["0A0A0A0A"], ["0C0C0C0C"], "D1")
    assert (update.prev_version, update.version, update.full) == (5_000, 5_001, False)
    assert plan_updates(target, Applied(9, 3, target.uids), now_ms=10) == []
    assert full_reload(target, 9, now_ms=100)[0].version == 100  # versions from the clock


def test_missing_numbers_are_asked_for_in_upload_sized_ranges():
    assert missing_between([1, 2, 5, 9], 1, 10) == [3, 4, 6, 7, 8, 10]
    assert rec_ranges([3, 4, 6, 7, 8, 10]) == [(3, 4), (6, 8), (10, 10)]
    assert rec_ranges(range(100, 150), most=24) == [(100, 123), (124, 147), (148, 149)]


# -- against the edge -----------------------------------------------------------------------------


async def test_a_card_blacklisted_while_a_smart_clock_was_cut_off_is_refused_on_reconnect(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    clock = AttendanceClock(smart(keys, "CLOCK-01", edge, tmp_path))
    await clock.connect()
    try:
        # On connect: the site's blacklist and (a clock) every active card as its whitelist.
        assert clock.store.state.blacklist == [LOST]
        assert MEMBER in clock.lists.whitelists[""]
        assert LOST not in clock.lists.whitelists[""]
        first = await clock.punch(MEMBER)
        assert first.ok and first.local
        assert not (await clock.punch(STRANGER)).ok  # not on the whitelist
        await eventually(lambda: not clock.store.state.buffered)

        await clock.close()  # cut off from the edge; it goes on deciding
        while_cut = [await clock.punch(MEMBER) for _ in range(5)]
        assert all(o.ok for o in while_cut)
        await blacklist(edge, MEMBER)  # HQ bars the card meanwhile
        await eventually(lambda: _behind(edge, "CLOCK-01"))  # switched off: lag tracked
        lag = await terminal_status(edge, "CLOCK-01")

        await clock.connect()
        # connect() returns after the first HEARTBEAT was answered: the list is in force
        assert MEMBER in clock.store.state.blacklist
        refused = await clock.punch(MEMBER)
        assert (refused.ok, refused.local) == (False, True)
        await eventually(lambda: not clock.store.state.buffered)
        after = await terminal_status(edge, "CLOCK-01")
    finally:
        await clock.close()

    recs = [first.rec, *(o.rec for o in while_cut), refused.rec]
    held = uploaded(tmp_path, "CLOCK-01")
    assert all(held.count(r) == 1 for r in recs), held  # every record, exactly once
    assert lag["lists_behind"] == 1 and set(lag["lists"]) == {"blacklist", "whitelist"}
    assert after["lists_behind"] == 0 and after["records_missing"] == 0
    assert edge.lists is not None and edge.lists.stats.get("list_updates", 0) >= 3


async def _behind(edge: EdgeService, tid: str) -> bool:
    entry = await terminal_status(edge, tid)
    return entry.get("lists_behind", 0) >= 1 and entry.get("lists_behind_s") is not None


async def test_a_terminal_whose_list_went_astray_gets_a_full_reload(start_edge, keys, tmp_path):
    edge = await start_edge()
    clock = AttendanceClock(smart(keys, "CLOCK-01", edge, tmp_path))
    await clock.connect()
    try:
        # The clock's blacklist is reset behind the edge's back (a firmware update, say).
        clock.store.state.blacklist, clock.store.state.blacklist_version = [], 0
        await blacklist(edge, MEMBER)
        await eventually(lambda: MEMBER in clock.store.state.blacklist)
    finally:
        await clock.close()
    assert sorted(clock.store.state.blacklist) == sorted([LOST, MEMBER])  # all of it again
    assert clock.counters.version_gaps == 1
    assert edge.lists is not None and edge.lists.stats["full_reloads"] == 1


async def test_missing_records_are_asked_for_again_and_unused_numbers_given_up(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    door = DoorReader(smart(keys, "DOOR-01", edge, tmp_path))
    await door.connect()
    try:
        assert MEMBER in door.lists.whitelists["D1"]  # per door: holders of a right to it
        assert not (await door.tap(STRANGER)).ok
        await eventually(lambda: not door.store.state.buffered)
        await door.close()
        taps = [await door.tap(MEMBER) for _ in range(6)]
        lost = {taps[1].rec, taps[2].rec}
        door.drop_buffered(lost)  # lost from the upload queue; still in the journal
        unused = door.store.take_rec()  # taken just before a power cut, never used
        last = await door.tap(MEMBER)
        await door.connect()
        await eventually(lambda: all(r in uploaded(tmp_path, "DOOR-01") for r in lost), within=30)
        await eventually(lambda: _gaps_settled(edge, "DOOR-01"), within=30)
        status = await terminal_status(edge, "DOOR-01")
    finally:
        await door.close()

    held = uploaded(tmp_path, "DOOR-01")
    assert all(held.count(t.rec) == 1 for t in [*taps, last])
    assert unused not in held
    assert (status["records_missing"], status["records_void"]) == (0, 1)
    assert door.counters.record_requests >= 1
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        gaps = conn.execute("SELECT rec, state FROM terminal_gaps").fetchall()
    assert gaps == [(unused, "void")]


async def _gaps_settled(edge: EdgeService, tid: str) -> bool:
    entry = await terminal_status(edge, tid)
    return entry.get("records_missing") == 0 and entry.get("records_void") == 1


@pytest.mark.parametrize("members", [900])
async def test_a_whitelist_longer_than_a_frame_arrives_whole_before_the_first_decision(
    start_edge, keys, tmp_path
):
    edge = await start_edge()
    clock = AttendanceClock(smart(keys, "CLOCK-01", edge, tmp_path))
    started = time.perf_counter()
    await clock.connect()
    took = time.perf_counter() - started
    try:
        whitelist = set(clock.lists.whitelists[""])
        assert len(whitelist) == 901  # the named member and 900 generated ones
        assert (await clock.punch(card_uid(899))).ok
    finally:
        await clock.close()
    assert took < 3.0, f"connect with a 901-card whitelist took {took:.2f}s"
