"""Remote log tail end to end: a real ``onecard-edge run`` process and central (its MQTT
service, tail hub and dashboard over uvicorn) on a private mosquitto, viewers over SSE."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from broker import PrivateBroker
from playwright.async_api import async_playwright, expect
from stores import central_db, open_store
from sync_system import until

from central import master, queries, users
from central.adapters.sqlite_store import CentralStore
from central.logtail import TailHub
from central.service import CentralService
from central.web.app import dashboard_server
from edge_agent.adapters.mqtt_client import BrokerSettings
from protocol.errors import MessageError
from protocol.topics import Channel, site_topic

pytestmark = pytest.mark.integration

SITE = "SZ-FUTIAN"
BIN = Path(sys.executable).parent
PASSWORD = "correct horse 1"  # noqa: S105 - the test users' password


@dataclass
class Event:
    kind: str
    data: dict[str, Any]
    at: float


@dataclass
class Stream:
    """An SSE response being read in the background, its events collected."""

    response: httpx.Response
    events: list[Event] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        kind, data = "message", ""
        async for line in self.response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                self.events.append(Event(kind, json.loads(data), time.monotonic()))
                kind, data = "message", ""

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        return [
            e.data
            for e in self.events
            if e.kind == "line" and (event is None or e.data["event"] == event)
        ]

    def first(self, kind: str) -> Event | None:
        return next((e for e in self.events if e.kind == kind), None)

    async def wait_for(self, check: Any, within: float = 10) -> None:
        async def ok() -> bool:
            return bool(check())

        await until(ok, within)


@dataclass
class HQ:
    broker: PrivateBroker
    store: CentralStore
    service: CentralService
    hub: TailHub
    base: str
    tokens: dict[str, str]
    edge: subprocess.Popen[bytes]
    edge_log: Path
    http: httpx.AsyncClient
    renewing: asyncio.Task[None]
    streams: list[Stream] = field(default_factory=list)

    async def tail(self, role: str = "technician", **query: str) -> Stream:
        headers = {"Authorization": f"Bearer {self.tokens[role]}"}
        request = self.http.build_request(
            "GET", f"/api/v1/sites/{SITE}/logs", params=query, headers=headers
        )
        response = await self.http.send(request, stream=True)
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        stream.task = asyncio.create_task(stream._read())
        self.streams.append(stream)
        return stream

    async def close(self, stream: Stream) -> None:
        await stream.response.aclose()
        if stream.task is not None:
            stream.task.cancel()
            await asyncio.gather(stream.task, return_exceptions=True)

    async def garbage(self, n: int) -> float:
        """Make the edge log ``n`` warnings (``sync.bad_message``): junk on its feed."""
        topic = site_topic(SITE, Channel.DOWN_FEED)
        async with self.broker.central() as client:
            started = time.monotonic()
            for i in range(n):
                await client.publish(topic, f"junk {i}".encode(), qos=1)
        return started

    async def audit(self, action: str) -> list[dict[str, Any]]:
        return await self.store.run(lambda conn: queries.audit_log(conn, action=action))


def _start_edge(broker: PrivateBroker, password: str, data: Path) -> subprocess.Popen[bytes]:
    data.mkdir()
    (data / "mqtt.password").write_text(password)
    config = data / "edge.toml"
    config.write_text(
        f'site = "{SITE}"\ndata_dir = "{data}"\n\n[terminals]\nlisten = ""\n\n'
        f'[mqtt]\nurl = "{broker.url}"\npassword_file = "{data / "mqtt.password"}"\n'
        f'ca_file = "{broker.dir.ca_cert}"\n\n'
        '[metrics]\nlisten = ""\n\n'
        '[log]\nlevel = "info"\nformat = "json"\n'
    )
    with (data / "edge.log").open("ab") as log:
        return subprocess.Popen(
            [BIN / "onecard-edge", "run", "--config", config],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("ONECARD_")},
        )


@pytest.fixture
async def hq(broker: PrivateBroker, tmp_path: Path) -> AsyncIterator[HQ]:
    password = broker.add_site(SITE)
    hashed = users.hash_password(PASSWORD)
    async with open_store(central_db(tmp_path)) as store:
        tokens: dict[str, str] = {}

        def setup(conn: Any) -> None:
            master.register_site(conn, SITE)
            for role in ("admin", "technician", "operator"):
                users.add_user(conn, f"{role}-1", role, hashed, operator="setup", source="test")
                tokens[role] = queries.add_token(conn, f"{role}-token", role)

        await store.run(setup)
        service = CentralService(
            store,
            BrokerSettings.from_url(
                broker.url,
                username="central",
                password=broker.central_password(),
                ca_file=broker.dir.ca_cert,
            ),
        )
        hub = service.logtail = TailHub(store, service.send_command)
        sock = socket.create_server(("127.0.0.1", 0))
        server = dashboard_server(
            store, "127.0.0.1", 0, secret_key=await store.run(users.web_key), logtail=hub
        )
        tasks = [
            asyncio.create_task(service.run()),
            asyncio.create_task(server.serve(sockets=[sock])),
        ]
        renewing = asyncio.create_task(hub.run(service.stopping))
        await asyncio.wait_for(service.ready.wait(), 10)
        edge = _start_edge(broker, password, tmp_path / "edge")
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        http = httpx.AsyncClient(base_url=base, timeout=10)
        running = HQ(
            broker,
            store,
            service,
            hub,
            base,
            tokens,
            edge,
            tmp_path / "edge/edge.log",
            http,
            renewing,
        )
        try:

            async def online() -> bool:
                if edge.poll() is not None:
                    raise AssertionError(f"the edge exited:\n{running.edge_log.read_text()}")
                return SITE in service.online

            await until(online, 15)
            yield running
        finally:
            for stream in running.streams:
                await running.close(stream)
            await http.aclose()
            if edge.poll() is None:
                edge.send_signal(signal.SIGTERM)
                try:
                    edge.wait(10)
                except subprocess.TimeoutExpired:
                    edge.kill()
                    edge.wait()
            service.stop()
            server.should_exit = True
            await asyncio.gather(*tasks, renewing, return_exceptions=True)


async def test_a_technicians_tail_shows_site_lines_within_a_second_and_is_audited(hq: HQ):
    stream = await hq.tail(grep="bad_message")
    await stream.wait_for(lambda: stream.first("caught_up"))
    sent = await hq.garbage(1)
    await stream.wait_for(lambda: stream.lines("sync.bad_message"), within=5)
    arrived = next(e for e in stream.events if e.kind == "line").at
    assert arrived - sent < 1.0, f"the line took {arrived - sent:.2f} s"
    line = stream.lines("sync.bad_message")[0]
    assert line["level"] == "warning" and line["at"].endswith("Z")
    assert line["fields"]["site"] == SITE

    await hq.close(stream)  # the last viewer leaves: central says logs.stop

    async def stopped() -> bool:
        return hq.hub.stats.get("stop_commands", 0) == 1 and not hq.hub.sessions

    await until(stopped, 5)

    async def edge_ended() -> bool:  # the site ends its side too
        text = hq.edge_log.read_text()
        return '"logtail.ended"' in text and '"reason": "stopped"' in text

    await until(edge_ended, 5)
    starts = await hq.audit("logs.tail.start")
    assert [(r["operator"], r["role"], r["target"], r["outcome"]) for r in starts] == [
        ("technician-token", "technician", f"site:{SITE}", "accepted")
    ]

    async def stop_audited() -> bool:
        return len(await hq.audit("logs.tail.stop")) == 1

    await until(stop_audited, 5)
    (stop,) = await hq.audit("logs.tail.stop")
    assert stop["operator"] == "technician-token" and stop["after"]["lines"] >= 1


async def test_an_operator_may_not_tail_and_the_refusal_is_audited(hq: HQ):
    headers = {"Authorization": f"Bearer {hq.tokens['operator']}"}
    refused = await hq.http.get(f"/api/v1/sites/{SITE}/logs", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    no_token = await hq.http.get(f"/api/v1/sites/{SITE}/logs")
    assert no_token.status_code == 401
    admin = {"Authorization": f"Bearer {hq.tokens['admin']}"}
    unknown = await hq.http.get("/api/v1/sites/NO-SUCH/logs", headers=admin)
    assert unknown.status_code == 404
    bad = await hq.http.get(f"/api/v1/sites/{SITE}/logs?level=loud", headers=admin)
    assert bad.status_code == 400 and "level" in bad.json()["error"]["message"]
    rows = await hq.audit("logs.tail.start")
    assert [(r["operator"], r["outcome"], r["reason_code"]) for r in rows] == [
        ("operator-token", "rejected", "forbidden")
    ]
    assert hq.hub.sessions == {}


async def test_the_dashboard_page_tails_by_session_cookie_for_technicians_only(hq: HQ):
    async def signed_in(username: str) -> httpx.AsyncClient:
        browser = httpx.AsyncClient(base_url=hq.base, timeout=10)
        page = await browser.get("/login")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        form = {"csrf": csrf, "username": username, "password": PASSWORD}
        assert (await browser.post("/login", data=form)).status_code == 303
        return browser

    tech = await signed_in("technician-1")
    operator = await signed_in("operator-1")
    try:
        page = await tech.get(f"/sites/{SITE}/logs")
        assert page.status_code == 200
        assert "/static/logs.js" in page.text and f"/sites/{SITE}/logs/stream" in page.text
        assert (await tech.get("/static/logs.js")).status_code == 200
        assert (await operator.get(f"/sites/{SITE}/logs")).status_code == 403
        assert (await operator.get(f"/sites/{SITE}/logs/stream")).status_code == 403
        async with tech.stream("GET", f"/sites/{SITE}/logs/stream?level=info") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async with asyncio.timeout(10):
                async for line in response.aiter_lines():
                    if line == "event: caught_up":
                        break
    finally:
        await tech.aclose()
        await operator.aclose()
    rows = await hq.audit("logs.tail.start")
    assert {(r["operator"], r["outcome"], r["source"]) for r in rows} == {
        ("technician-1", "accepted", "hq:logtail"),
        ("operator-1", "rejected", "hq:logtail"),
    }


async def test_the_rate_limit_holds_and_every_line_over_it_is_counted_as_suppressed(hq: HQ):
    hq.hub.max_lines_per_s = 20
    stream = await hq.tail(grep="bad_message")
    await stream.wait_for(lambda: stream.first("caught_up"))
    started = await hq.garbage(300)
    # Every junk message is one line: sent, or counted in a "N lines suppressed" marker.
    await stream.wait_for(
        lambda: len(stream.lines("sync.bad_message")) + _suppressed(stream) == 300, within=20
    )
    elapsed = time.monotonic() - started
    delivered = len(stream.lines("sync.bad_message"))
    assert _suppressed(stream) > 0
    assert delivered <= 20 + 20 * elapsed + 1, (delivered, elapsed)
    markers = [line for line in stream.lines() if line.get("logger") == "logtail"]
    assert markers and all(m["event"].endswith("lines suppressed") for m in markers)
    await asyncio.sleep(0.5)  # nothing more comes: not one line counted twice
    assert len(stream.lines("sync.bad_message")) + _suppressed(stream) == 300


def _suppressed(stream: Stream) -> int:
    return sum(
        line["fields"]["suppressed"] for line in stream.lines() if line.get("logger") == "logtail"
    )


async def test_the_edge_ends_the_tail_at_its_ttl_when_hq_stops_renewing(hq: HQ):
    hq.hub.ttl_s = 2
    stream = await hq.tail()
    await stream.wait_for(lambda: stream.first("caught_up"))
    hq.renewing.cancel()  # HQ's renewals stop (as if it had lost the site or died)
    started = time.monotonic()
    await stream.wait_for(lambda: stream.first("end"), within=10)
    end = stream.first("end")
    assert end is not None and end.data == {"reason": "ttl"}
    assert 1.5 < end.at - started < 4
    assert '"ttl"' in hq.edge_log.read_text()


async def test_viewers_keep_the_tail_renewed_past_its_ttl(hq: HQ):
    hq.hub.ttl_s, hq.hub.renew_before_s = 2, 1
    stream = await hq.tail(grep="bad_message")
    await stream.wait_for(lambda: stream.first("caught_up"))
    await asyncio.sleep(4.5)
    await hq.garbage(1)
    await stream.wait_for(lambda: stream.lines("sync.bad_message"), within=5)
    assert stream.first("end") is None
    assert hq.hub.stats["tail_commands"] >= 3


async def test_the_cli_prints_recent_lines_and_exits_without_follow(hq: HQ):
    await hq.garbage(3)

    async def logged() -> bool:  # the lines are in the edge's past when the CLI asks
        return hq.edge_log.read_text().count('"sync.bad_message"') == 3

    await until(logged, 10)
    env = {**os.environ, "ONECARD_URL": hq.base, "ONECARD_TOKEN": hq.tokens["technician"]}
    proc = await asyncio.create_subprocess_exec(
        BIN / "onecard-central",
        "logs",
        SITE,
        "--since",
        "10m",
        "--grep",
        "bad_message",
        "--level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert text.count("sync.bad_message") == 3, (text, err.decode())
    refused = await asyncio.create_subprocess_exec(
        BIN / "onecard-central",
        "logs",
        SITE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**env, "ONECARD_TOKEN": hq.tokens["operator"]},
    )
    _, err = await asyncio.wait_for(refused.communicate(), 20)
    assert refused.returncode == 1
    assert "403" in err.decode() and "technician" in err.decode()


async def test_a_bad_log_batch_from_a_site_is_dead_lettered_and_the_tail_goes_on(hq: HQ):
    stream = await hq.tail(grep="bad_message")
    await stream.wait_for(lambda: stream.first("caught_up"))
    password = hq.broker.add_site("BJ-CHAOYANG")
    async with hq.broker.client("SZ-FUTIAN", _site_password(hq)) as site:
        topic = site_topic(SITE, Channel.UP_LOGS)
        await site.publish(topic, b'{"v": 1, "site": "SZ-FUTIAN"}', qos=1)  # fields missing
        await site.publish(topic, b"\xff not json", qos=1)
    async with hq.broker.client("BJ-CHAOYANG", password) as other:
        # Another site's batch, on its own topic, naming this site's stream: refused.
        forged = {
            "v": 1,
            "site": SITE,
            "stream": hq.hub.sessions[SITE].stream,
            "batch": 9,
            "lines": [],
        }
        await other.publish(
            site_topic("BJ-CHAOYANG", Channel.UP_LOGS), json.dumps(forged).encode(), qos=1
        )

    async def dead() -> bool:
        rows = await hq.store.run(
            lambda conn: conn.execute(
                "SELECT topic, reason FROM dead_letters WHERE topic LIKE '%/up/logs'"
            ).fetchall()
        )
        return len(rows) == 3

    await until(dead, 5)
    await hq.garbage(1)
    await stream.wait_for(lambda: stream.lines("sync.bad_message"), within=5)
    assert not [e for e in stream.events if e.kind in {"end", "notice"}]


def _site_password(hq: HQ) -> str:
    return (hq.edge_log.parent / "mqtt.password").read_text().strip()


async def test_the_log_page_shows_lines_live_in_a_browser(hq: HQ, tmp_path: Path):
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path="/usr/lib/chromium/chromium",
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = await chromium.new_page()
            await page.goto(f"{hq.base}/login?next=/sites/{SITE}/logs")
            await page.fill("input[name=username]", "technician-1")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"**/sites/{SITE}/logs")
            await page.fill("input[name=grep]", "bad_message")
            await page.click("#logtail-start")
            await expect(page.locator("#logtail-lines")).to_contain_text("live", timeout=10_000)
            await hq.garbage(2)
            await expect(page.locator("#logtail-lines")).to_contain_text(
                "sync.bad_message", timeout=2_000
            )
            shots = Path(os.environ.get("ONECARD_ARTIFACTS") or tmp_path) / "dashboard"
            shots.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=shots / "site-logs.png", full_page=True)
            await page.click("#logtail-stop")
            await expect(page.locator("#logtail-status")).to_contain_text("stopped")
        finally:
            await chromium.close()

    async def audited() -> bool:
        return len(await hq.audit("logs.tail.stop")) == 1

    await until(audited, 5)


@pytest.fixture
async def lone_hub(tmp_path: Path) -> AsyncIterator[tuple[TailHub, list[Any]]]:
    """A hub over a real store whose commands are only collected (no broker)."""
    sent: list[Any] = []

    async def send(site: str, command: Any) -> bool:
        sent.append(command)
        return True

    async with open_store(central_db(tmp_path)) as store:
        await store.run(lambda conn: master.register_site(conn, SITE))
        yield TailHub(store, send), sent


def _batch(hub: TailHub, n: int, *lines: tuple[str, str], **extra: Any) -> bytes:
    body = {
        "v": 1,
        "site": SITE,
        "stream": hub.sessions[SITE].stream,
        "batch": n,
        "lines": [{"at": "2026-11-27T04:00:00Z", "level": lv, "event": ev} for lv, ev in lines],
        **extra,
    }
    return json.dumps(body).encode()


async def test_viewers_share_one_site_tail_each_with_its_own_filter(lone_hub):
    hub, sent = lone_hub
    who = {"role": "technician", "ip": None}
    grepping = await hub.join(SITE, user="a", level="warning", grep="POS-02", **who)
    assert [(c.level, c.match) for c in sent] == [("warning", "pos-02")]
    everything = await hub.join(SITE, user="b", level="debug", **who)
    # One stream, widened for the second viewer: the lowest level, no match.
    assert [(c.stream, c.level, c.match) for c in sent][1:] == [(sent[0].stream, "debug", None)]
    hub.receive(
        SITE,
        _batch(
            hub,
            0,
            ("debug", "d POS-02"),
            ("warning", "w POS-02"),
            ("warning", "w POS-01"),
            caught_up=True,
        ),
    )
    assert [e.data["event"] for e in _drain(grepping) if e.kind == "line"] == ["w POS-02"]
    assert [e.data["event"] for e in _drain(everything) if e.kind == "line"] == [
        "d POS-02",
        "w POS-02",
        "w POS-01",
    ]
    hub.receive(SITE, _batch(hub, 3, ("info", "x")))  # batches 1 and 2 were lost
    assert {"text": "2 batches lost"} in [e.data for e in _drain(everything)]
    hub.leave(grepping)
    hub.leave(everything)
    await hub.flush()
    assert type(sent[-1]).__name__ == "LogsStop" and hub.sessions == {}
    with pytest.raises(MessageError):
        hub.receive(
            SITE, b'{"v": 1, "site": "BJ-CHAOYANG", "stream": "s", "batch": 0, "lines": []}'
        )


async def test_a_viewer_too_slow_to_read_loses_lines_and_is_told_how_many(lone_hub, monkeypatch):
    hub, _ = lone_hub
    monkeypatch.setattr("central.logtail.VIEWER_QUEUE", 10)
    viewer = await hub.join(SITE, user="a", role="admin", ip=None)
    viewer.queue = asyncio.Queue(maxsize=10)
    hub.receive(SITE, _batch(hub, 0, *[("info", f"l{i}") for i in range(25)]))
    assert viewer.lost == 15 and viewer.queue.qsize() == 10
    _drain(viewer)
    hub.receive(SITE, _batch(hub, 1, ("info", "after")))
    assert [e.data for e in _drain(viewer)] == [
        {"text": "15 lines lost (viewer too slow)"},
        {
            "at": "2026-11-27T04:00:00Z",
            "level": "info",
            "event": "after",
            "logger": None,
            "fields": {},
        },
    ]


def _drain(viewer: Any) -> list[Any]:
    out = []
    while not viewer.queue.empty():
        out.append(viewer.queue.get_nowait())
    return out


async def test_a_temporary_log_level_reaches_the_site_and_reverts_by_itself(hq: HQ):
    stream = await hq.tail(grep="log.level")
    await stream.wait_for(lambda: stream.first("caught_up"))
    env = {**os.environ, "ONECARD_URL": hq.base, "ONECARD_TOKEN": hq.tokens["technician"]}
    proc = await asyncio.create_subprocess_exec(
        BIN / "onecard-central",
        "logs",
        SITE,
        "--set-level",
        "debug",
        "--for",
        "2s",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "log level debug for 2 s" in err.decode()
    await stream.wait_for(lambda: stream.lines("log.level_reverted"), within=10)
    (changed,) = stream.lines("log.level_changed")
    assert changed["fields"]["to"] == "debug" and changed["fields"]["duration_s"] == 2
    assert stream.lines("log.level_reverted")[0]["fields"]["to"] == "info"
    (row,) = await hq.audit("logs.level")
    assert (row["operator"], row["outcome"], row["after"]) == (
        "technician-token",
        "accepted",
        {"level": "debug", "duration_s": 2},
    )
    operator = {"Authorization": f"Bearer {hq.tokens['operator']}"}
    refused = await hq.http.post(
        f"/api/v1/sites/{SITE}/log-level", json={"level": "debug"}, headers=operator
    )
    assert refused.status_code == 403
    admin = {"Authorization": f"Bearer {hq.tokens['admin']}"}
    bad = await hq.http.post(
        f"/api/v1/sites/{SITE}/log-level", json={"level": "loud"}, headers=admin
    )
    assert bad.status_code == 400


async def test_the_cli_says_so_when_the_site_does_not_answer(hq: HQ, monkeypatch):
    monkeypatch.setattr("central.web.logs.NO_ANSWER_S", 1.0)
    hq.edge.send_signal(signal.SIGTERM)
    await asyncio.to_thread(hq.edge.wait, 15)
    env = {**os.environ, "ONECARD_URL": hq.base, "ONECARD_TOKEN": hq.tokens["technician"]}
    proc = await asyncio.create_subprocess_exec(
        BIN / "onecard-central",
        "logs",
        SITE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 1 and out == b""
    assert f"{SITE} did not answer" in err.decode()

    async def audited() -> bool:
        return len(await hq.audit("logs.tail.stop")) == 1

    await until(audited, 5)
    (stop,) = await hq.audit("logs.tail.stop")
    assert stop["note"] == "no_answer"
