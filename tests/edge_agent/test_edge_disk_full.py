"""A full disk at a site: money refused before anything is written, doors per their group's
fail mode, HQ alerted, and service back by itself when space returns.

The edge's data directory is a real size-limited file system (a 24 MiB tmpfs; the tests run
as root, as `make test` does) filled with a ballast file — the same thing that happens when
a branch PC's disk fills with logs. Terminals are the simulators over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from edge_fixtures import LOST, MEMBER, SITE, make_seed, new_keys

from central.core import alerts as rules
from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import EdgeConfig, MetricsConfig, StoreConfig, TerminalsConfig
from edge_agent.diskguard import DiskGuard, is_disk_full
from edge_agent.metrics import health_message
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import STATUS_INTERVAL_S, EdgeService
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    Outcome,
    PosTerminal,
    RechargeKiosk,
    SimulatedCrashError,
    TerminalSettings,
)
from protocol.messages import decode_record
from protocol.terminal import Decision, Tap

MiB = 1 << 20
RESERVE_MB = 6
SAFE_DOOR = "EXIT-01"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB file system of its own (tmpfs), unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(mount)],
        check=True,
        capture_output=True,
    )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """Grow the ballast until ``leave_bytes`` are free (0: the disk is full)."""
    ballast = disk / "ballast"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    want = max(0, free - leave_bytes)
    with ballast.open("ab") as out:
        chunk = b"\0" * (256 * 1024)
        while want > 0:
            try:
                out.write(chunk[: min(len(chunk), want)])
                out.flush()
            except OSError:
                break  # ENOSPC: as full as it gets
            want -= min(len(chunk), want)
    return ballast


def outbox(db: Path) -> list:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT payload FROM outbox ORDER BY rowid").fetchall()
    return [decode_record(row[0]) for row in rows]


@pytest.fixture
async def edge(small_disk: Path) -> AsyncIterator[tuple[EdgeService, dict[str, bytes]]]:
    keys = new_keys(SAFE_DOOR)
    seed = make_seed(keys)
    for terminal in seed["terminals"]:
        if terminal["id"] == SAFE_DOOR:
            terminal["kind"] = "door"
    seed["door_groups"].append({"id": "EXITS", "name": "安全出口", "fail_mode": "safe"})
    seed["doors"].append({"id": "X1", "group_id": "EXITS", "terminal_id": SAFE_DOOR})
    seed["access_levels"].append(
        {"id": "EXIT-ALWAYS", "door_group_id": "EXITS", "time_zone_id": "24H"}
    )
    seed["access_grants"] += [
        {"person_id": p["id"], "access_level_id": "EXIT-ALWAYS"} for p in seed["persons"]
    ]
    seed_file = small_disk.parent / "seed.json"
    seed_file.write_text(json.dumps(seed, ensure_ascii=False))
    async with EdgeStore.open(small_disk / "edge.db", SITE) as store:
        await store.run(lambda conn: apply_seed(conn, load_seed(seed_file)))
    config = EdgeConfig(
        site=SITE,
        data_dir=small_disk,
        terminals=TerminalsConfig(listen="127.0.0.1:0"),
        metrics=MetricsConfig(listen=""),
        store=StoreConfig(reserve_mb=RESERVE_MB),
    )
    service = EdgeService(config)
    task = asyncio.create_task(service.run())
    async with asyncio.timeout(15):
        await service.ready.wait()
    try:
        yield service, keys
    finally:
        service.stop()
        await task


def settings(
    keys: dict[str, bytes], tid: str, service: EdgeService, state: Path
) -> TerminalSettings:
    return TerminalSettings(
        tid,
        keys[tid],
        f"tcp://127.0.0.1:{service.tcp_port}",
        state_file=state / f"{tid}.json",
        retry_s=0.5,
        retries=2,
    )


async def until(check: Callable[[], bool], within: float = 10) -> None:
    """Wait until ``check()`` is true (the guard samples the disk every second)."""
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling a plain attribute
            await asyncio.sleep(0.05)


def disk_state(service: EdgeService) -> str:
    assert service.site.disk is not None
    return service.site.disk.state


def truncate_wal(db: Path) -> None:
    """Checkpoint and shrink the WAL, so the next commit must grow it (and finds no room)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@dataclass
class Site:
    service: EdgeService
    disk: Path
    door: DoorReader
    exit_door: DoorReader
    clock: AttendanceClock
    pos: PosTerminal
    kiosk: RechargeKiosk

    @property
    def db(self) -> Path:
        return self.disk / "edge.db"


async def test_money_refused_below_reserve_then_doors_by_fail_mode_then_recovery(
    edge: tuple[EdgeService, dict[str, bytes]], small_disk: Path, tmp_path: Path
) -> None:
    service, keys = edge
    state = tmp_path / "terminals"
    state.mkdir()
    async with (
        DoorReader(settings(keys, "DOOR-01", service, state)) as door,
        DoorReader(settings(keys, SAFE_DOOR, service, state)) as exit_door,
        AttendanceClock(settings(keys, "CLOCK-01", service, state)) as clock,
        PosTerminal(settings(keys, "POS-01", service, state)) as pos,
        RechargeKiosk(settings(keys, "KIOSK-01", service, state)) as kiosk,
    ):
        site = Site(service, small_disk, door, exit_door, clock, pos, kiosk)
        # plenty of space: everything served
        sale = await pos.sale(MEMBER, amount=100)
        assert sale.ok, sale
        with pytest.raises(SimulatedCrashError):  # prepared and paid, commit still to come
            await kiosk.recharge(MEMBER, 500, crash_after_payment=True)
        balance = await below_reserve(site, sale)
        ballast, opened, records = await completely_full(site)
        await space_returns(site, ballast, opened, records, balance)


async def below_reserve(site: Site, sale: Outcome) -> int:
    """New money refused before the store is touched; a paid recharge still commits; doors
    and clocks go on in the reserve; HQ is told. Returns the member's balance."""
    records_before = len(outbox(site.db))
    fill(site.disk, leave_bytes=3 * MiB)
    await until(lambda: disk_state(site.service) == "low")
    refused = await site.pos.sale(MEMBER, amount=200)
    assert (refused.ok, refused.code) == (False, "disk_full")
    again = await site.pos._transact(  # the earlier sale sent again: its original answer
        Tap(rec=sale.rec, uid=MEMBER, time_ms=site.pos.now_ms(), amount=100)
    )
    assert isinstance(again, Decision)
    assert (again.ok, again.code, again.balance) == (True, "ok", sale.balance)
    new_recharge = await site.kiosk.recharge(MEMBER, 1000)
    assert (new_recharge.ok, new_recharge.code) == (False, "disk_full")
    # the recharge whose money was already taken still commits: the reserve is for it
    [committed] = await site.kiosk.resume_pending()
    assert committed.ok, committed
    assert sale.balance is not None
    assert committed.balance == sale.balance + 500
    assert (await site.door.tap(MEMBER)).ok
    assert (await site.clock.punch(MEMBER)).ok
    kinds = [type(r).__name__ for r in outbox(site.db)[records_before:]]
    assert kinds == ["RechargeCommit", "DoorAccess", "AttendancePunch"]
    assert site.service.site.disk is not None
    assert site.service.site.disk.refused == 2
    status = await site.service.site.status(site.service.registry, version="test")
    assert status["disk"]["state"] == "low"
    health = health_message(SITE, status, status["disk"]["free_bytes"])
    assert health.disk_state == "low"
    facts = rules.SiteFacts(site=SITE, online=True, ever_seen=True, disk_state=health.disk_state)
    conditions = rules.site_conditions(facts, rules.Thresholds())
    assert [c.severity for c in conditions if c.kind == "disk_full"] == ["emergency"]
    return committed.balance


async def completely_full(site: Site) -> tuple[Path, list[Outcome], int]:
    """Nothing can be recorded: a secure door stays shut, a safe one opens for a card it
    knows (not for a lost one), clocks and tills refuse; nothing is half-written."""
    records = len(outbox(site.db))
    truncate_wal(site.db)
    ballast = fill(site.disk, leave_bytes=0)
    shut = await site.door.tap(MEMBER)
    assert (shut.ok, shut.code) == (False, "disk_full")
    await until(lambda: disk_state(site.service) == "full", within=2)
    opened = await site.exit_door.tap(MEMBER)
    assert opened.ok, opened
    lost = await site.exit_door.tap(LOST)
    assert (lost.ok, lost.code) == (False, "lost")
    punch = await site.clock.punch(MEMBER)
    assert (punch.ok, punch.code) == (False, "disk_full")
    assert (await site.pos.sale(MEMBER, amount=100)).code == "disk_full"
    assert len(site.service.site.deferred) == 1
    # the daemon lives on with a full disk (its status file cannot be written meanwhile)
    await asyncio.sleep(STATUS_INTERVAL_S * 1.5)
    assert not site.service.stopping.is_set()
    again = await site.exit_door.tap(MEMBER)
    assert again.ok
    assert len(site.service.site.deferred) == 2
    with contextlib.closing(sqlite3.connect(site.db)) as conn:
        assert conn.execute("PRAGMA quick_check").fetchone() == ("ok",)
    assert len(outbox(site.db)) == records
    return ballast, [opened, again], records


async def space_returns(
    site: Site, ballast: Path, opened: list[Outcome], records: int, balance: int
) -> None:
    """Service resumes by itself; the fail-safe opening is recorded with what it answered."""
    await asyncio.to_thread(ballast.unlink)
    await until(lambda: disk_state(site.service) == "ok")
    await until(lambda: not site.service.site.deferred, within=5)
    resumed = await site.pos.sale(MEMBER, amount=100)
    assert resumed.ok, resumed
    assert resumed.balance == balance - 100
    after = outbox(site.db)[records:]
    fail_safe = [r for r in after if type(r).__name__ == "DoorAccess"]
    assert [(r.terminal, r.term_rec, r.granted, r.reason) for r in fail_safe] == [
        (SAFE_DOOR, o.rec, True, "fail_safe") for o in opened
    ]
    replay = await site.exit_door._transact(
        Tap(rec=opened[0].rec, uid=MEMBER, time_ms=site.exit_door.now_ms())
    )
    assert isinstance(replay, Decision)
    assert replay.ok


def test_disk_guard_states_and_sqlite_full_is_recognised(tmp_path: Path) -> None:
    seen: list[str] = []
    guard = DiskGuard(tmp_path, reserve_bytes=1 << 62)  # more than any disk: low at once
    guard.on_change.append(seen.append)
    assert guard.sample() == "low"
    guard.mark_full()
    assert guard.sample() == "full"  # stays full until space is back above the reserve
    guard.reserve_bytes = 0
    assert guard.sample() == "ok"
    assert seen == ["low", "full", "ok"]
    full = sqlite3.OperationalError("database or disk is full")
    wrapped = RuntimeError("commit failed")
    wrapped.__cause__ = full
    assert is_disk_full(wrapped)
    assert is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
