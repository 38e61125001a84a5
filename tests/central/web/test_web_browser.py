"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) against a real
central: its MQTT service and the dashboard on one store, two real edges on a private
mosquitto (TLS, ACL), and simulated terminals tapping real cards at the sites.

An HQ operator signs in, finds a person, reports the card lost — the blacklist version
rises and, within a second, a door at a site refuses the card — recharges another person
and sees the balance at a site's till, opens a site, and watches the overview mark a site
offline, live, when its edge stops — and again when the real daemon is killed. A
screenshot of every main page is saved to ``$ONECARD_ARTIFACTS/dashboard/`` (default: the
test's tmp dir) for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from sync_system import ALICE, BOB, System, edge_db, until
from web_harness import PASSWORD, password_hash

from central import users
from central.web.app import dashboard_server
from firmware_sim.terminals import DoorReader, PosTerminal

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/lib/chromium/chromium"
A, B = "SZ-FUTIAN", "BJ-CHAOYANG"


@dataclass
class Hq:
    base: str
    shots: Path

    async def shot(self, page: Page, name: str) -> None:
        await page.screenshot(path=self.shots / f"{name}.png", full_page=True)


@pytest.fixture
async def hq(system: System, tmp_path: Path) -> AsyncIterator[Hq]:
    """The dashboard served on central's store, with one operator account."""
    await system.store.run(
        lambda conn: users.add_user(
            conn,
            "wang.fang",
            "admin",
            password_hash(),
            display_name="Wang Fang",
            operator="setup",
            source="test",
        )
    )
    secret = await system.store.run(users.web_key)
    sock = socket.create_server(("127.0.0.1", 0))
    server = dashboard_server(system.store, "127.0.0.1", 0, secret_key=secret)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    shots = Path(os.environ.get("ONECARD_ARTIFACTS") or tmp_path) / "dashboard"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Hq(f"http://127.0.0.1:{sock.getsockname()[1]}", shots)
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def signed_in(browser: Browser, hq: Hq) -> Page:
    context = await browser.new_context(
        locale="en-US", viewport={"width": 1366, "height": 800}, base_url=hq.base
    )
    page = await context.new_page()
    await page.goto("/login")
    await page.get_by_label("Username").fill("wang.fang")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("h1")).to_have_text("Sites")
    return page


def site_cash(system: System, site: str, person: str) -> int | None:
    with edge_db(system.edges[site]) as conn:
        row = conn.execute(
            "SELECT cash_fen FROM accounts WHERE person_id = ?", (person,)
        ).fetchone()
    return None if row is None else int(row[0])


async def test_an_operator_reports_a_card_lost_recharges_and_watches_the_sites(
    system: System, hq: Hq, browser: Browser
):
    page = await signed_in(browser, hq)
    sites = page.locator("#sites")
    for site in (A, B):
        await expect(sites.locator(f'tr[data-site="{site}"]')).to_have_attribute(
            "data-status", "online"
        )
    await expect(page.locator("#live-status")).to_have_text("Live")
    await hq.shot(page, "overview")
    await report_lost_and_see_a_door_refuse(system, hq, page)
    await recharge_and_see_the_balance_at_a_till(system, page)
    await page.goto(f"/sites/{B}")  # its terminals, today's totals and the taps
    await expect(page.locator('tr[data-terminal="POS-01"]')).to_contain_text("¥2.50")
    await expect(page.locator("#today-sales")).to_have_text("¥2.50")
    await hq.shot(page, "site")
    await see_the_overview_mark_a_stopped_edge_offline(system, hq, page)
    for path, name in (
        ("/anomalies", "anomalies"),
        ("/reconciliation", "reconciliation"),
        ("/alerts", "alerts"),
        ("/attendance", "attendance"),
        ("/access", "access"),
        ("/rollouts", "rollouts"),
        ("/clearing", "clearing"),
        ("/audit", "audit"),
    ):
        await page.goto(path)
        await expect(page.locator("h1")).to_be_visible()
        await hq.shot(page, name)
    audit = page.locator("main")
    await expect(audit).to_contain_text("card.report_lost")
    await expect(audit).to_contain_text("money.recharge")
    # the same dashboard in Chinese (the language sticks once chosen)
    await page.goto("/?lang=zh-CN")
    await expect(page.locator("h1").first).to_be_visible()
    await hq.shot(page, "overview-zh")
    await page.goto("/people/P1")
    await expect(page.locator("#more-ops")).to_have_text("更多业务")
    await hq.shot(page, "person-zh")


async def find(page: Page, who: str, name: str) -> None:
    await page.get_by_role("link", name="People & cards").click()
    await page.get_by_label("Name, staff/member number or card UID").fill(who)
    await page.get_by_role("button", name="Search").click()
    await page.get_by_role("link", name=name).click()
    await expect(page.locator("h1")).to_have_text(name)


async def report_lost_and_see_a_door_refuse(system: System, hq: Hq, page: Page) -> None:
    await page.get_by_role("link", name="People & cards").click()
    await page.get_by_label("Name, staff/member number or card UID").fill("Bob")
    await page.get_by_role("button", name="Search").click()
    await hq.shot(page, "people")
    await page.get_by_role("link", name="Bob").click()
    await expect(page.locator("h1")).to_have_text("Bob")
    await hq.shot(page, "person")
    door = system.terminal(DoorReader, A, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        assert (await reader.tap(BOB)).ok
        card = page.locator(f'tr[data-card="{BOB}"]')
        await card.get_by_role("checkbox").check()
        await card.get_by_role("button", name="Report lost").click()
        await expect(page.locator("#result")).to_contain_text("reported lost")
        reported = time.monotonic()

        async def refused() -> bool:
            return not (await reader.tap(BOB)).ok

        await until(refused, within=5)
        took = time.monotonic() - reported
    assert took < 1.0, f"the door refused the lost card only after {took:.2f} s"
    await page.get_by_role("link", name="Blacklist").click()
    await expect(page.locator("#blacklist-head")).to_contain_text("Version v1")
    await hq.shot(page, "blacklist")


async def recharge_and_see_the_balance_at_a_till(system: System, page: Page) -> None:
    await find(page, ALICE, "Alice")
    recharge = page.locator("#recharge")
    await recharge.get_by_label("Amount (yuan)").fill("100.00")
    await recharge.get_by_role("checkbox").check()
    await recharge.get_by_role("button", name="Recharge").click()
    await expect(page.locator("#result")).to_contain_text("recharge was applied")
    await expect(page.locator('[data-purse="cash"]')).to_have_text("¥110.00")

    async def at_site() -> bool:
        return site_cash(system, B, "P1") == 11_000

    await until(at_site, within=5)
    till = system.terminal(PosTerminal, B, "POS-01")
    async with till as pos:  # type: ignore[attr-defined]
        sale = await pos.sale(ALICE, amount=250)
    assert sale.ok and sale.balance == 10_750, sale


async def see_the_overview_mark_a_stopped_edge_offline(system: System, hq: Hq, page: Page) -> None:
    await page.goto("/")
    await expect(page.locator("#live-status")).to_have_text("Live")
    row = page.locator(f'#sites tr[data-site="{B}"]')
    await expect(row).to_have_attribute("data-status", "online")
    loaded = await page.evaluate("performance.timeOrigin")
    await system.stop_edge(B)
    await expect(row).to_have_attribute("data-status", "offline", timeout=5000)
    assert await page.evaluate("performance.timeOrigin") == loaded  # no reload
    await expect(page.locator("#overview-summary")).to_contain_text("1 of 2 sites online")
    await hq.shot(page, "overview-offline")

    # The same site run by the real daemon, then killed (SIGKILL: no goodbye, the broker
    # publishes its Will): the overview marks it offline again, by itself.
    data = system.edges[B].config.data_dir
    config = data / "edge.toml"
    config.write_text(
        f'site = "{B}"\ndata_dir = "{data}"\n'
        '[terminals]\nlisten = "127.0.0.1:0"\n[metrics]\nlisten = ""\n'
        f'[mqtt]\nurl = "{system.broker.url}"\npassword_file = "{data / "mqtt.password"}"\n'
        f'ca_file = "{system.broker.dir.ca_cert}"\n'
    )
    edge = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "onecard-edge"),
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await expect(row).to_have_attribute("data-status", "online", timeout=20_000)
        edge.kill()
        await edge.wait()
        await expect(row).to_have_attribute("data-status", "offline", timeout=5000)
    finally:
        if edge.returncode is None:
            edge.kill()
            await edge.wait()
    assert await page.evaluate("performance.timeOrigin") == loaded  # still no reload
