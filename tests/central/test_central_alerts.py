"""Alerts: the pure rules and their hold times, the alerts table (open → acknowledged →
resolved, with who and when), the /alerts page and the overview's block, and end to end — a
real edge process killed -9 raises an emergency alert within its detection time, which
resolves by itself when the edge is back, each change posted to a webhook."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker import PrivateBroker
from stores import central_db, open_store
from sync_system import KINDS, central_seed

from central import alerts, master, queries, users
from central.adapters.sqlite_store import CentralStore
from central.alerts import AlertSettings
from central.core import alerts as rules
from central.core.alerts import Condition, SiteFacts, TerminalFact, Thresholds
from central.service import CentralService
from central.web.app import create_web_app
from edge_agent.adapters.mqtt_client import BrokerSettings
from firmware_sim.terminals import DoorReader, TerminalSettings
from protocol import auth
from protocol.messages import Health, TerminalHealth

LIMITS = Thresholds()
SITE = "SZ-FUTIAN"
T0 = 1_800_000_000_000  # ms


def facts(**changes: Any) -> SiteFacts:
    base: dict[str, Any] = {"site": SITE, "online": True, "ever_seen": True}
    return SiteFacts(**{**base, **changes})


def kinds(conds: list[Condition]) -> dict[str, str]:
    return {c.key: c.severity for c in conds}


# -- the rules --------------------------------------------------------------------------------


def test_a_site_offline_is_an_emergency_but_one_never_seen_is_not_alerted():
    offline = rules.site_conditions(facts(online=False), LIMITS)
    assert kinds(offline) == {f"site_offline:{SITE}": "emergency"}
    assert offline[0].hold_s == LIMITS.site_offline_s
    assert rules.site_conditions(facts(online=False, ever_seen=False), LIMITS) == []


def test_all_terminals_down_is_one_emergency_and_a_single_one_is_important():
    down = (TerminalFact("DOOR-01", "door", False), TerminalFact("POS-01", "pos", False))
    assert kinds(rules.site_conditions(facts(terminals=down), LIMITS)) == {
        f"terminals_down:{SITE}": "emergency"
    }
    one = (TerminalFact("DOOR-01", "door", True), TerminalFact("POS-01", "pos", False))
    conds = rules.site_conditions(facts(terminals=one), LIMITS)
    assert kinds(conds) == {f"terminal_offline:{SITE}:POS-01": "important"}
    assert conds[0].subject == "POS-01"


def test_an_offline_site_raises_nothing_about_what_it_last_reported():
    stale = facts(
        online=False,
        terminals=(TerminalFact("DOOR-01", "door", False),),
        unsynced_age_s=99_999,
        clock_skew_s=600,
        disk_free_bytes=0,
    )
    assert list(kinds(rules.site_conditions(stale, LIMITS))) == [f"site_offline:{SITE}"]


def test_unsynced_hour_lag_skew_and_disk_are_important_and_dead_letters_normal():
    conds = rules.site_conditions(
        facts(
            unsynced_age_s=3601,
            feed_behind=3,
            blacklist_behind=1,
            clock_skew_s=-90,
            disk_free_bytes=100 << 20,
            dead_letters=2,
        ),
        LIMITS,
    )
    assert kinds(conds) == {
        f"unsynced_records:{SITE}": "important",
        f"feed_lag:{SITE}": "important",
        f"blacklist_lag:{SITE}": "important",
        f"clock_skew:{SITE}": "important",
        f"disk_low:{SITE}": "important",
        f"dead_letters:{SITE}": "normal",
    }
    fine = facts(unsynced_age_s=3599, clock_skew_s=59, disk_free_bytes=2 << 30)
    assert rules.site_conditions(fine, LIMITS) == []
    assert kinds(rules.conditions([], hq_dead_letters=1, limits=LIMITS)) == {
        "dead_letters:HQ": "normal"
    }


def test_a_condition_opens_only_after_holding_for_its_detection_time():
    cond = Condition(key="site_offline:X", kind="site_offline", site="X", hold_s=60)
    first = rules.plan([cond], active=[], pending={}, now_ms=T0)
    assert first.open == [] and first.pending == {"site_offline:X": T0}
    early = rules.plan([cond], active=[], pending=first.pending, now_ms=T0 + 59_999)
    assert early.open == [] and early.pending == {"site_offline:X": T0}
    due = rules.plan([cond], active=[], pending=early.pending, now_ms=T0 + 60_000)
    assert due.open == [(cond, T0)] and due.pending == {}
    # Cleared before its time: forgotten, nothing opened or resolved.
    gone = rules.plan([], active=[], pending=first.pending, now_ms=T0 + 1000)
    assert (gone.open, gone.resolve, gone.pending) == ([], [], {})


def test_an_active_alert_stays_while_its_condition_holds_and_resolves_when_it_clears():
    cond = Condition(key="disk_low:X", kind="disk_low", site="X")
    held = rules.plan([cond, cond], active=["disk_low:X"], pending={}, now_ms=T0)
    assert (held.open, held.resolve) == ([], [])
    assert rules.plan([], active=["disk_low:X"], pending={}, now_ms=T0).resolve == ["disk_low:X"]


# -- the alerts table -------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    async with open_store(central_db(tmp_path)) as opened:
        for site in ("SZ-FUTIAN", "BJ-CHAOYANG"):
            await opened.run(lambda conn, site=site: master.register_site(conn, site))
        yield opened


def _went_offline(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE sites SET online = 0, last_seen_ms = ? WHERE id = ?", (T0, SITE))


def _came_back(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE sites SET online = 1, last_seen_ms = ? WHERE id = ?", (T0, SITE))


async def evaluate(store: CentralStore, at_ms: int, limits: Thresholds = LIMITS) -> alerts.Changes:
    return await store.run(lambda conn: alerts.evaluate(conn, now_ms=at_ms, limits=limits))


async def test_an_alert_opens_is_acknowledged_by_someone_and_resolves_by_itself(store):
    await store.run(_went_offline)
    assert (await evaluate(store, T0)).opened == []  # seen, within its detection time
    changes = await evaluate(store, T0 + 60_000)
    [opened] = changes.opened
    assert (opened["kind"], opened["severity"], opened["site"]) == (
        "site_offline",
        "emergency",
        SITE,
    )
    assert (opened["state"], opened["since_ms"], opened["opened_ms"]) == ("open", T0, T0 + 60_000)
    assert (await evaluate(store, T0 + 70_000)).opened == []  # one alert per condition

    acked = await store.run(
        lambda conn: alerts.acknowledge(
            conn, opened["id"], operator="li.tech", source="test", at_ms=T0 + 80_000, note="on it"
        )
    )
    assert (acked["state"], acked["acked_by"], acked["acked_ms"]) == (
        "acknowledged",
        "li.tech",
        T0 + 80_000,
    )
    with pytest.raises(queries.ConflictError, match="only an open alert"):
        await store.run(
            lambda conn: alerts.acknowledge(
                conn, opened["id"], operator="x", source="test", at_ms=T0 + 81_000
            )
        )
    with pytest.raises(queries.NotFoundError):
        await store.run(
            lambda conn: alerts.acknowledge(conn, 999, operator="x", source="test", at_ms=T0)
        )
    audit = await store.run(lambda conn: queries.audit_log(conn, action="alert.acknowledge"))
    assert [(a["operator"], a["target"]) for a in audit] == [("li.tech", f"alert:{opened['id']}")]

    await store.run(_came_back)
    [resolved] = (await evaluate(store, T0 + 90_000)).resolved
    assert (
        resolved["id"],
        resolved["state"],
        resolved["resolved_by"],
        resolved["resolved_ms"],
    ) == (
        opened["id"],
        "resolved",
        "auto",
        T0 + 90_000,
    )
    assert resolved["acked_by"] == "li.tech"  # who acknowledged it stays on record
    counts = await store.run(alerts.active_counts)
    assert counts == {"emergency": 0, "important": 0, "normal": 0}


async def test_health_reports_drive_the_terminal_clock_and_disk_alerts(store):
    await store.run(_came_back)
    health = Health(
        site=SITE,
        at=datetime.fromtimestamp((T0 + 120_000) / 1000, UTC),  # the edge's clock: 2 min fast
        terminals=[TerminalHealth(id="DOOR-01", kind="door", online=False)],
        disk_free_bytes=10 << 20,
    )
    await store.run(lambda conn: alerts.record_health(conn, SITE, health, received_ms=T0))
    quick = Thresholds(terminal_offline_s=0)
    opened = {a["kind"]: a for a in (await evaluate(store, T0, quick)).opened}
    assert set(opened) == {"terminals_down", "clock_skew", "disk_low"}
    assert opened["clock_skew"]["detail"] == {"skew_s": 120.0}
    assert opened["disk_low"]["detail"] == {"free_mib": 10}


async def test_records_reported_waiting_age_until_central_has_received_them(store):
    birth = {
        "at": datetime.fromtimestamp(T0 / 1000, UTC).isoformat(),
        "acked": [10, 0],
        "outbox_depth": 5,
        "outbox_oldest_age_s": 1800.0,
        "terminals": [],
    }

    def born(conn: sqlite3.Connection) -> None:
        conn.execute(
            "UPDATE sites SET online = 1, last_seen_ms = ?, state = ?, epoch = 7 WHERE id = ?",
            (T0, json.dumps(birth).encode(), SITE),
        )
        conn.execute(
            "INSERT INTO lanes (site, epoch, lane, acked_seq) VALUES (?, 7, 0, 12)", (SITE,)
        )

    await store.run(born)
    [opened] = (await evaluate(store, T0 + 1801_000)).opened  # 30 min old at birth + 30 min
    assert opened["kind"] == "unsynced_records" and opened["severity"] == "important"
    await store.run(
        lambda conn: conn.execute("UPDATE lanes SET acked_seq = 15 WHERE site = ?", (SITE,))
    )
    assert [r["kind"] for r in (await evaluate(store, T0 + 1900_000)).resolved] == [
        "unsynced_records"
    ]


async def test_dead_letters_raise_a_normal_alert_that_clears_after_the_window(store):
    await store.run(
        lambda conn: conn.execute(
            "INSERT INTO dead_letters (at_ms, topic, site, reason, payload) VALUES (?, 't', ?,"
            " 'bad', ?)",
            (T0, SITE, b"\x00"),
        )
    )
    [opened] = (await evaluate(store, T0 + 1000)).opened
    assert (opened["kind"], opened["severity"], opened["detail"]) == (
        "dead_letters",
        "normal",
        {"count": 1},
    )
    later = T0 + int(LIMITS.dead_letter_window_s * 1000) + 1
    assert [r["id"] for r in (await evaluate(store, later)).resolved] == [opened["id"]]


# -- the pages --------------------------------------------------------------------------------

PASSWORD = "correct horse 1"  # noqa: S105 - the test users' password
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def web(store: CentralStore) -> AsyncIterator[Callable[[str], Awaitable[httpx.AsyncClient]]]:
    hashed = users.hash_password(PASSWORD)
    for role in ("technician", "auditor"):
        await store.run(
            lambda conn, role=role: users.add_user(
                conn, f"{role}-1", role, hashed, operator="setup", source="test"
            )
        )
    app = create_web_app(store, secret_key=await store.run(users.web_key))
    clients: list[httpx.AsyncClient] = []

    async def signed_in(username: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hq")
        clients.append(http)
        token = _CSRF.search((await http.get("/login")).text)
        assert token
        form = {"csrf": token[1], "username": username, "password": PASSWORD}
        assert (await http.post("/login", data=form)).status_code == 303
        return http

    yield signed_in
    for http in clients:
        await http.aclose()


async def test_the_overview_and_alerts_page_list_alerts_and_a_technician_acknowledges(store, web):
    await store.run(_went_offline)
    await evaluate(store, T0)
    [opened] = (await evaluate(store, T0 + 60_000)).opened
    auditor = await web("auditor-1")
    overview = (await auditor.get("/?lang=en")).text
    assert 'id="overview-alerts"' in overview
    assert 'data-severity="emergency" data-count="1"' in overview
    assert f'data-alert="{opened["id"]}"' in overview and "Site offline" in overview
    page = (await auditor.get("/alerts?lang=en")).text
    assert f'data-alert="{opened["id"]}" data-state="open"' in page
    assert "/acknowledge" not in page  # read-only for an auditor
    token = _CSRF.search(page)
    assert token
    refused = await auditor.post(f"/alerts/{opened['id']}/acknowledge", data={"csrf": token[1]})
    assert refused.status_code == 403

    tech = await web("technician-1")
    page = (await tech.get("/alerts")).text
    token = _CSRF.search(page)
    assert token and f"/alerts/{opened['id']}/acknowledge" in page
    done = await tech.post(
        f"/alerts/{opened['id']}/acknowledge?lang=en", data={"csrf": token[1], "note": "driving"}
    )
    assert done.status_code == 200 and f"Alert #{opened['id']} is acknowledged." in done.text
    again = await tech.post(f"/alerts/{opened['id']}/acknowledge", data={"csrf": token[1]})
    assert again.status_code == 409
    row = await store.run(lambda conn: alerts.alert(conn, opened["id"]))
    assert (row["state"], row["acked_by"], row["note"]) == (
        "acknowledged",
        "technician-1",
        "driving",
    )
    zh = (await tech.get("/alerts?lang=zh-CN")).text
    assert "门店离线" in zh and "紧急" in zh


# -- end to end: a real edge killed -9 ----------------------------------------------------------

BIN = Path(sys.executable).parent
KEEPALIVE_S = 1
OFFLINE_AFTER_S = 1.0
INTERVAL_S = 0.2
#: The broker publishes the Will 1.5 keepalives after the edge went silent; the rule then holds
#: for its detection time and runs every INTERVAL_S. Plus scheduling slack on a busy machine.
DETECTION_S = 1.5 * KEEPALIVE_S + OFFLINE_AFTER_S + INTERVAL_S + 4


@dataclass
class Hook:
    """A webhook receiver: every JSON body posted to it."""

    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])  # type: ignore[index]
        self.bodies.append(json.loads(await reader.readexactly(length)))
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


def start_edge(data: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [BIN / "onecard-edge", "run", "--config", data / "edge.toml"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def kill9(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def until(what: str, check: Callable[[], Awaitable[bool]], within: float) -> float:
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.integration
async def test_an_edge_killed_9_raises_an_emergency_that_resolves_when_it_returns(  # noqa: PLR0915
    broker: PrivateBroker, tmp_path: Path
):
    keys = {(site, tid): auth.new_key() for site in ("SZ-FUTIAN", "BJ-CHAOYANG") for tid in KINDS}
    password = broker.add_site(SITE)
    broker.add_site("BJ-CHAOYANG")
    hook = Hook()
    receiver = await asyncio.start_server(hook.handle, "127.0.0.1", 0)
    hook_url = f"http://127.0.0.1:{receiver.sockets[0].getsockname()[1]}/alerts"
    data = tmp_path / SITE
    data.mkdir()
    (data / "mqtt.password").write_text(password)
    (data / "edge.toml").write_text(
        f'site = "{SITE}"\ndata_dir = "{data}"\n\n[terminals]\nlisten = "127.0.0.1:0"\n\n'
        f'[mqtt]\nurl = "{broker.url}"\npassword_file = "{data / "mqtt.password"}"\n'
        f'ca_file = "{broker.dir.ca_cert}"\nkeepalive_s = {KEEPALIVE_S}\n\n'
        '[metrics]\nlisten = ""\n\n[log]\nformat = "json"\n'
    )
    settings = AlertSettings(
        limits=Thresholds(site_offline_s=OFFLINE_AFTER_S, terminal_offline_s=OFFLINE_AFTER_S),
        interval_s=INTERVAL_S,
        webhook_url=hook_url,
        webhook_timeout_s=2,
    )
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
            alerting=settings,
        )
        running = asyncio.create_task(central.run())
        edge = start_edge(data, data / "edge.log")
        try:
            await asyncio.wait_for(central.ready.wait(), 10)

            async def active(kind: str, subject: str = "") -> dict[str, Any] | None:
                rows = await store.run(lambda conn: alerts.alert_list(conn, active=True))
                found = [r for r in rows if r["kind"] == kind and r["subject"] == subject]
                return found[0] if found else None

            async def online() -> bool:
                rows = await store.run(
                    lambda conn: conn.execute(
                        "SELECT online FROM sites WHERE id = ?", (SITE,)
                    ).fetchall()
                )
                return bool(rows[0][0])

            await until("the site is online", online, 20)
            # Its health report says no terminal is connected: all down, an emergency.
            await until("terminals_down", lambda: _is(active("terminals_down")), 10)
            port = await _edge_tcp_port(data)
            door = DoorReader(
                TerminalSettings("DOOR-01", keys[(SITE, "DOOR-01")], f"tcp://127.0.0.1:{port}")
            )
            async with door:
                # The next health report (on the change) resolves it; the two others remain.
                await until("terminals_down resolved", lambda: _not(active("terminals_down")), 10)
                await until("POS-01 offline", lambda: _is(active("terminal_offline", "POS-01")), 10)
                assert await active("terminal_offline", "DOOR-01") is None

            kill9(edge)
            took = await until("site_offline", lambda: _is(active("site_offline")), DETECTION_S)
            alert = await active("site_offline")
            assert alert is not None and alert["severity"] == "emergency"
            assert took <= DETECTION_S
            # A site offline raises nothing about its terminals.
            assert await active("terminal_offline", "POS-01") is None

            edge = start_edge(data, data / "edge.log")
            await until("site_offline resolved", lambda: _not(active("site_offline")), 20)
            row = await store.run(lambda conn: alerts.alert(conn, alert["id"]))
            assert (row["state"], row["resolved_by"]) == ("resolved", "auto")

            async def posted() -> bool:
                events = {(b["event"], b["alert"]["id"]) for b in hook.bodies}
                return {("opened", alert["id"]), ("resolved", alert["id"])} <= events

            await until("the webhook got both", posted, 5)
            body = next(b for b in hook.bodies if b["alert"]["id"] == alert["id"])
            assert body["alert"]["site"] == SITE and body["alert"]["response"]
            assert central.stats.get("webhook_failures", 0) == 0
            assert central.stats.get("health_reports", 0) >= 2
        finally:
            terminate(edge)
            central.stop()
            await asyncio.wait_for(running, 15)
            receiver.close()


async def _is(pending: Awaitable[object]) -> bool:
    return await pending is not None


async def _not(pending: Awaitable[object]) -> bool:
    return await pending is None


async def _edge_tcp_port(data: Path) -> int:
    """The edge's terminal port, from the status snapshot it writes every 2 s."""
    path = data / "status.json"
    async with asyncio.timeout(10):
        while True:
            if path.exists():
                status = json.loads(path.read_text())
                if status.get("tcp_port"):
                    return int(status["tcp_port"])
            await asyncio.sleep(0.1)


# -- the CLI ------------------------------------------------------------------------------------


def test_the_cli_lists_and_acknowledges_alerts(tmp_path: Path):
    db = central_db(tmp_path)

    async def prepare() -> int:
        async with open_store(db) as opened:
            await opened.run(lambda conn: master.register_site(conn, SITE))
            await opened.run(_went_offline)
            [row] = (await evaluate(opened, T0 + 60_000, Thresholds(site_offline_s=0))).opened
            return int(row["id"])

    alert_id = asyncio.run(prepare())
    cli = [str(BIN / "onecard-central"), "alert"]
    listed = subprocess.run(
        [*cli, "list", "--db", str(db)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert f"#{alert_id}" in listed and "emergency" in listed and f"site_offline {SITE}" in listed
    acked = subprocess.run(
        [*cli, "ack", str(alert_id), "--note", "on my way", "--operator", "wang", "--db", str(db)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert acked.strip() == f"alert #{alert_id} acknowledged by wang"
    again = subprocess.run(
        [*cli, "ack", str(alert_id), "--db", str(db)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert again.returncode == 1 and "only an open alert" in again.stderr
    rows = subprocess.run(
        [*cli, "list", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    [row] = [json.loads(line) for line in rows]
    assert (row["state"], row["acked_by"], row["note"]) == ("acknowledged", "wang", "on my way")
