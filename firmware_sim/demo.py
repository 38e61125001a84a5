"""``onecard-sim demo``: a branch's day in a minute, against a real onecard-edge.

Seeds a site (a door, an attendance clock on a serial line, a canteen till with a menu, a
keyed till, a recharge kiosk; staff with meal subsidy, members, a lost card), starts the real
edge daemon on a free loopback port with a database in a temporary directory, and plays the
day: a member comes in, clocks in, has lunch (subsidy first), is refused a second lunch, is
refused for low balance, tops up at the kiosk, a lost card is refused, the door's cable is
cut and the door keeps working and uploads what it did, a spare till with the wrong key is
refused, and a lunch rush measures tap latency with every decision durably committed. It
ends with what the edge recorded, ready to sync to HQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from edge_agent.adapters.sqlite_store import EdgeStore
from edge_agent.config import EdgeConfig, TerminalsConfig
from edge_agent.core.reasons import yuan
from edge_agent.logs import configure_logging
from edge_agent.seed import apply_seed, load_seed
from edge_agent.service import EdgeService
from firmware_sim.load import run_load
from firmware_sim.ptypair import pty_pair
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    PosTerminal,
    RechargeKiosk,
    TerminalSettings,
)
from protocol import auth

SITE = "DEMO-SITE"
STAFF = "04A1B2C3D4E5F6"
LOST = "04C0FFEE000001"
TERMINALS = {
    "DOOR-01": "door",
    "CLOCK-01": "attendance",
    "POS-01": "pos",
    "POS-02": "pos",
    "POS-03": "pos",
    "KIOSK-01": "recharge",
}
MENU = {
    "A1": {"name": "红烧肉套餐", "price_fen": 1800},
    "B2": {"name": "米饭", "price_fen": 150},
}
RUSH_CARDS = 2000


def _member(i: int) -> str:
    return f"0600{i:010X}"


def demo_seed(keys: dict[str, bytes], lunch_start_min: int) -> dict[str, Any]:
    """The demo site's master data (the same shape central's feed will deliver)."""
    persons = [
        {"id": "S001", "name": "张三", "number": "S001", "kind": "staff", "department": "厨房"},
        {"id": "M404", "name": "李四", "number": "M404", "kind": "member"},
    ]
    cards = [
        {"uid": STAFF, "person_id": "S001"},
        {"uid": LOST, "person_id": "M404", "status": "lost"},
    ]
    accounts = [
        {"person_id": "S001", "cash_fen": 600, "subsidy_fen": 1500},
        {"person_id": "M404", "cash_fen": 5000},
    ]
    for i in range(RUSH_CARDS):
        persons.append({"id": f"E{i}", "name": f"员工{i}", "kind": "staff"})
        cards.append({"uid": _member(i), "person_id": f"E{i}"})
        accounts.append({"person_id": f"E{i}", "cash_fen": 50_000, "subsidy_fen": 1200})
    config = {
        "POS-01": {"pos_mode": "menu", "menu": MENU, "canteen": True},
        "POS-02": {"pos_mode": "keyed"},
        "POS-03": {"pos_mode": "keyed"},
    }
    return {
        "site": SITE,
        "policy": {
            "site": SITE,
            "timezone": "Asia/Shanghai",
            "meal_periods": [
                {
                    "name": "午餐",
                    "window": [lunch_start_min, min(lunch_start_min + 60, 1440)],
                    "max_purchases": 1,
                }
            ],
        },
        "persons": persons,
        "cards": cards,
        "accounts": accounts,
        "door_groups": [{"id": "MAIN", "name": "正门"}],
        "doors": [{"id": "D1", "group_id": "MAIN", "terminal_id": "DOOR-01", "direction": "in"}],
        "time_zones": [{"id": "24H", "weekly": {str(d): [[0, 1440]] for d in range(7)}}],
        "access_levels": [{"id": "ALL", "door_group_id": "MAIN", "time_zone_id": "24H"}],
        "access_grants": [{"person_id": p["id"], "access_level_id": "ALL"} for p in persons],
        "terminals": [
            {"id": tid, "kind": kind, "key_hex": keys[tid].hex(), "config": config.get(tid, {})}
            for tid, kind in TERMINALS.items()
        ],
        "blacklist": [{"uid": LOST, "reason": "lost", "effective_at": "2026-01-01T00:00:00Z"}],
        "blacklist_version": 1,
    }


def _printer(out: Callable[[str], None]) -> Callable[[str, str], None]:
    started = time.monotonic()

    def show(terminal_id: str, text: str) -> None:
        line = text.replace("\n", " | ")
        out(f"  {time.monotonic() - started:6.2f}s  [{terminal_id:<9}] {line}")

    return show


async def run_demo(  # noqa: PLR0915 - a linear script reads best as one story
    out: Callable[[str], None] = print, *, burst_s: float = 3.0
) -> bool:
    """Play the demo; returns True if every step behaved as a real site should."""
    configure_logging("warning", "console")
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    keys = {tid: auth.new_key() for tid in TERMINALS}
    now_local = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai"))
    lunch = max(0, now_local.hour * 60 + now_local.minute - 10)
    checks: list[tuple[str, bool]] = []
    show = _printer(out)
    with tempfile.TemporaryDirectory(prefix="onecard-demo-") as tmp:
        data_dir = Path(tmp)
        seed_file = data_dir / "seed.json"
        seed_file.write_text(json.dumps(demo_seed(keys, lunch), ensure_ascii=False))
        async with EdgeStore.open(data_dir / "edge.db", SITE) as store:
            seed = load_seed(seed_file)
            await store.run(lambda conn: apply_seed(conn, seed))
        async with contextlib.AsyncExitStack() as stack:
            edge_side, terminal_side = await stack.enter_async_context(pty_pair())
            config = EdgeConfig(
                site=SITE,
                data_dir=data_dir,
                terminals=TerminalsConfig(listen="127.0.0.1:0", serial=[f"serial://{edge_side}"]),
            )
            edge = EdgeService(config, version="demo")
            edge_task = asyncio.create_task(edge.run())

            async def stop_edge() -> None:
                edge.stop()
                await edge_task

            stack.push_async_callback(stop_edge)
            await edge.ready.wait()
            url = f"tcp://127.0.0.1:{edge.tcp_port}"
            out(f"onecard-edge for site {SITE} listening on {url}, serial line {edge_side}")
            out(f"database {data_dir / 'edge.db'} (WAL, synchronous=FULL)\n")

            def settings(tid: str, connect: str = url) -> TerminalSettings:
                return TerminalSettings(tid, keys[tid], connect, retry_s=0.3, retries=1)

            door = DoorReader(settings("DOOR-01"), on_display=show)
            clock = AttendanceClock(
                settings("CLOCK-01", f"serial://{terminal_side}"), on_display=show
            )
            canteen = PosTerminal(settings("POS-01"), on_display=show)
            shop = PosTerminal(settings("POS-02"), on_display=show)
            kiosk = RechargeKiosk(settings("KIOSK-01"), on_display=show)
            for terminal in (door, canteen, shop, kiosk):
                await terminal.connect()
                stack.push_async_callback(terminal.close)
            for _ in range(50):  # the edge opens the serial line a moment after it is ready
                with contextlib.suppress(OSError, ConnectionError, TimeoutError):
                    await clock.connect()
                    break
                await asyncio.sleep(0.1)
            stack.push_async_callback(clock.close)

            out(f"\n张三 (staff, card {STAFF}): cash {yuan(600)}, meal subsidy {yuan(1500)}")
            checks.append(("door opens", (await door.tap(STAFF)).ok))
            checks.append(("clock-in over the serial line", (await clock.punch(STAFF)).ok))
            meal = await canteen.sale(STAFF, items=[("A1", 1), ("B2", 1)])
            checks.append(("lunch ¥19.50, subsidy spent first", meal.ok and meal.balance == 150))
            second = await canteen.sale(STAFF, items=[("B2", 1)])
            checks.append(("second lunch refused (1 per period)", second.code == "meal_limit"))
            low = await shop.sale(STAFF, amount=1200)
            checks.append(("low balance refused", low.code == "insufficient_funds"))
            topup = await kiosk.recharge(STAFF, 20000, method="bank")
            checks.append(("two-phase recharge ¥200", topup.ok and topup.balance == 20150))
            again = await shop.sale(STAFF, amount=1200)
            checks.append(("shop sale after the top-up", again.ok and again.balance == 18950))

            out(f"\n李四 reported the card {LOST} lost:")
            checks.append(("lost card refused", (await door.tap(LOST)).code == "lost"))

            out("\nthe door's cable is cut; the door decides on its own, then reconnects:")
            await edge.registry.sessions["DOOR-01"].close()
            await asyncio.sleep(0.05)
            offline = await door.tap(STAFF)
            checks.append(("door keeps working cut off", offline.ok and offline.local))
            await door.connect()
            checks.append(("buffered record uploaded", door.store.state.buffered == []))

            out("\na spare till is swapped in as POS-03 with the wrong key:")
            spare = PosTerminal(
                TerminalSettings("POS-03", auth.new_key(), url, retry_s=0.3, retries=1),
                on_display=show,
            )
            try:
                await spare.connect()
                checks.append(("wrong key refused", False))
            except Exception as exc:  # noqa: BLE001 - any refusal is the point here
                show("POS-03", f"终端未授权 ({exc})")
                checks.append(("wrong key refused", "auth_failed" in str(exc)))

            out(f"\nlunch rush: 3 tills, 150 taps/s for {burst_s:.0f} s, every tap committed")
            real = PosTerminal(settings("POS-03"))
            await real.connect()
            stack.push_async_callback(real.close)
            tills = [shop, real, PosTerminal(settings("POS-01"))]
            await tills[2].connect()
            stack.push_async_callback(tills[2].close)
            tills[2].config["pos_mode"] = "keyed"
            for till in tills:
                till._on_display = None  # a few hundred display lines would drown the table
            report = await run_load(
                tills,
                [_member(i) for i in range(RUSH_CARDS)],
                rate=150,
                duration_s=burst_s,
                amount_fen=850,
                seed=7,
            )
            out(report.table())
            out(f"decline codes: {dict(sorted(report.codes.items()))}")
            checks.append(("rush: every tap answered", report.failed == 0 and report.taps > 0))
            checks.append(("rush: p99 under 200 ms", report.percentile(99) < 200))

        with sqlite3.connect(data_dir / "edge.db") as conn:
            kinds = conn.execute(
                "SELECT kind, count(*) FROM outbox GROUP BY kind ORDER BY kind"
            ).fetchall()
            unsynced = conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]
    out(f"\nthe edge's outbox, waiting for HQ: {unsynced} records")
    for kind, count in kinds:
        out(f"  {kind:<18} {count}")
    out("\nchecks:")
    for name, ok in checks:
        out(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return all(ok for _, ok in checks)
