"""``onecard-sim demo``: a site's terminals at work, against the test endpoint.

Starts the stand-in edge on a free loopback port, a door reader and two POS tills over TCP,
an attendance clock over a serial line (a socat pty pair), and a recharge kiosk; then plays
a short day: a member comes in, clocks in, buys lunch, is refused for low balance, recharges,
and a lost card is refused; the door reader is cut off and keeps working from its list; a
spare POS with the wrong key is refused; and a lunch-rush burst measures tap latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from edge_agent.adapters.transport import parse_endpoint
from firmware_sim.endpoint import SimCard, TestEndpoint
from firmware_sim.load import run_load
from firmware_sim.ptypair import pty_pair
from firmware_sim.terminals import (
    AttendanceClock,
    DoorReader,
    PosTerminal,
    RechargeKiosk,
    TerminalSettings,
    yuan,
)
from protocol import auth
from protocol.terminal import ListUpdate

MEMBER = "04A1B2C3D4E5F6"
LOST = "04C0FFEE000001"
MENU = {
    "A1": {"name": "红烧肉套餐", "price_fen": 1800},
    "B2": {"name": "米饭", "price_fen": 150},
}


def _printer(out: Callable[[str], None]) -> Callable[[str, str], None]:
    started = time.monotonic()

    def show(terminal_id: str, text: str) -> None:
        out(f"  {time.monotonic() - started:6.2f}s  [{terminal_id:<9}] {text}")

    return show


async def run_demo(  # noqa: PLR0915 - a linear script reads best as one story
    out: Callable[[str], None] = print, *, burst_s: float = 3.0
) -> bool:
    """Play the demo; returns True if every step behaved as a real site should."""
    keys = {
        tid: auth.new_key()
        for tid in ("DOOR-01", "CLOCK-01", "POS-01", "POS-02", "POS-03", "KIOSK-01")
    }
    cards = {
        MEMBER: SimCard(MEMBER, 2500, "张三"),
        LOST: SimCard(LOST, 5000, "李四", blacklisted=True),
    }
    cards.update({f"0400{i:010X}": SimCard(f"0400{i:010X}", 100_000) for i in range(600)})
    endpoint = TestEndpoint(
        keys=keys,
        cards=cards,
        site="DEMO-SITE",
        terminal_config={
            "POS-01": {"pos_mode": "keyed"},
            "POS-02": {"pos_mode": "menu", "menu": MENU},
            "POS-03": {"pos_mode": "keyed"},
        },
    )
    show = _printer(out)
    checks: list[tuple[str, bool]] = []
    port = await endpoint.serve_tcp("127.0.0.1", 0)
    url = f"tcp://127.0.0.1:{port}"
    out(f"test endpoint (stand-in edge) listening on {url}\n")

    def settings(tid: str, connect: str = url) -> TerminalSettings:
        return TerminalSettings(tid, keys[tid], connect, retry_s=0.3, retries=1)

    try:
        async with contextlib.AsyncExitStack() as stack:
            edge_side, terminal_side = await stack.enter_async_context(pty_pair())
            await endpoint.serve_serial(parse_endpoint(f"serial://{edge_side}"))
            door = DoorReader(settings("DOOR-01"), on_display=show)
            clock = AttendanceClock(
                settings("CLOCK-01", f"serial://{terminal_side}"), on_display=show
            )
            pos = PosTerminal(settings("POS-01"), on_display=show)
            canteen = PosTerminal(settings("POS-02"), on_display=show)
            kiosk = RechargeKiosk(settings("KIOSK-01"), on_display=show)
            for terminal in (door, clock, pos, canteen, kiosk):
                await terminal.connect()
                stack.push_async_callback(terminal.close)
            out("")
            out(f"member 张三 ({MEMBER}), balance {yuan(2500)}:")
            checks.append(("door opens", (await door.tap(MEMBER)).ok))
            checks.append(("punch over serial", (await clock.punch(MEMBER)).ok))
            lunch = await canteen.sale(MEMBER, items=[("A1", 1), ("B2", 1)])
            checks.append(("menu sale ¥19.50", lunch.ok and lunch.amount == 1950))
            refused = await pos.sale(MEMBER, amount=1200)
            checks.append(("low balance refused", refused.code == "insufficient_funds"))
            topup = await kiosk.recharge(MEMBER, 20000, method="bank")
            checks.append(("two-phase recharge ¥200", topup.ok and topup.balance == 20550))
            again = await pos.sale(MEMBER, amount=1200)
            checks.append(("sale after recharge", again.ok and again.balance == 19350))

            out(f"\nlost card {LOST}:")
            checks.append(("lost card refused", (await door.tap(LOST)).code == "blacklisted"))

            out("\nthe door reader gets the blacklist, then its cable is cut:")
            await endpoint.push(
                "DOOR-01",
                ListUpdate(kind="blacklist", version=1, prev_version=0, full=True, add=[LOST]),
            )
            await endpoint.sessions["DOOR-01"].link.close()
            await asyncio.sleep(0.05)
            offline_ok = await door.tap(MEMBER)
            offline_lost = await door.tap(LOST)
            checks.append(("offline: member let in", offline_ok.ok and offline_ok.local))
            checks.append(
                ("offline: lost card refused", not offline_lost.ok and offline_lost.local)
            )
            await door.connect()
            uploaded = sum(
                1 for r in endpoint.records if r[0] == "DOOR-01" and r[2] == "buffered.tap"
            )
            checks.append(("buffered records uploaded on reconnect", uploaded == 2))
            out(f"  door reader back online: {uploaded} buffered records uploaded")

            out("\na spare POS swapped in with the wrong key:")
            spare = PosTerminal(
                TerminalSettings("POS-03", auth.new_key(), url, retry_s=0.3, retries=1),
                on_display=show,
            )
            try:
                await spare.connect()
                checks.append(("wrong key refused", False))
            except Exception as exc:  # noqa: BLE001 - any refusal is the point here
                show("POS-03", f"终端未授权 ({exc})")
                checks.append(("wrong key refused", endpoint.auth_failures >= 1))

            out(f"\nlunch rush: 3 POS tills, 150 taps/s for {burst_s:.0f} s")
            tills = [pos, canteen, PosTerminal(settings("POS-03"))]
            await tills[2].connect()
            stack.push_async_callback(tills[2].close)
            canteen.config["pos_mode"] = "keyed"
            for till in tills:
                till._on_display = None  # a few hundred display lines would drown the table
            members = [uid for uid in cards if uid.startswith("0400")]
            report = await run_load(tills, members, rate=150, duration_s=burst_s, seed=7)
            out(report.table())
            checks.append(("rush: every tap answered", report.failed == 0 and report.taps > 0))
            checks.append(("rush: p99 under 200 ms", report.percentile(99) < 200))
    finally:
        await endpoint.close()
    out("\nchecks:")
    for name, ok in checks:
        out(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return all(ok for _, ok in checks)
