"""Live pages over Server-Sent Events, over real HTTP: the overview's stream sends the
sites table at once and again when a site changes, nothing while nothing changes, asks for
a session like every page, and ends when its time is up or the server stops."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from web_harness import sign_in

from central.web import live, overview


async def signed_in(dash, username: str = "technician-1") -> httpx.AsyncClient:
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


def fast(dash, **settings: float) -> live.Live:
    state: live.Live = dash.app.web.state.live
    state.tick_s = 0.05
    for name, value in settings.items():
        setattr(state, name, value)
    return state


class Events:
    """The events of one SSE response, as a browser's EventSource sees them."""

    def __init__(self, response: httpx.Response) -> None:
        self.lines = response.aiter_lines()

    async def next(self, within: float = 5.0) -> tuple[str, dict[str, str]]:
        name, data = "message", ""
        async with asyncio.timeout(within):
            async for line in self.lines:
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data += line.removeprefix("data: ")
                elif line == "" and data:
                    return name, json.loads(data)
        raise EOFError


async def set_online(dash, site: str, online: bool) -> None:
    now_ms = int(dash.clock.now * 1000)
    await dash.store.run(
        lambda conn: conn.execute(
            "UPDATE sites SET online = ?, last_seen_ms = ?, version = '0.4.0' WHERE id = ?",
            (int(online), now_ms, site),
        )
    )


async def test_the_overview_page_names_its_stream_and_works_without_it(dash):
    http = await signed_in(dash)
    page = (await http.get("/")).text
    assert 'data-live="/live/overview"' in page
    assert '<script src="/static/live.js" defer></script>' in page
    # Without script the table is there as served, in the element the stream replaces.
    assert '<div id="overview-sites">' in page and 'data-site="SZ-FUTIAN"' in page
    script = await http.get("/static/live.js")
    assert script.status_code == 200 and "EventSource" in script.text


async def test_the_overview_stream_sends_the_table_then_a_site_going_offline(dash):
    fast(dash)
    await set_online(dash, "SZ-FUTIAN", True)
    http = await signed_in(dash)
    async with http.stream("GET", "/live/overview") as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = Events(answer)
        name, parts = await events.next()
        assert name == "parts"
        assert set(parts) == set(overview.LIVE_PARTS)
        assert "1 of 2 sites online" in parts["overview-summary"]
        assert 'data-site="SZ-FUTIAN" data-status="online"' in parts["overview-sites"]

        await set_online(dash, "SZ-FUTIAN", False)
        name, parts = await events.next(within=2)
        assert name == "parts"
        assert 'data-site="SZ-FUTIAN" data-status="offline"' in parts["overview-sites"]
        assert "0 of 2 sites online" in parts["overview-summary"]


async def test_a_stream_sends_only_the_parts_that_changed_and_nothing_when_nothing_did(dash):
    state = fast(dash)
    http = await signed_in(dash)
    async with http.stream("GET", "/live/overview") as answer:
        events = Events(answer)
        await events.next()
        await asyncio.sleep(0.5)  # ten ticks, no change
        assert state.stats["events"] == 1
        await dash.store.run(
            lambda conn: conn.execute("UPDATE sites SET outbox_depth = 7 WHERE id = 'BJ-CHAOYANG'")
        )
        _, parts = await events.next(within=2)
        assert list(parts) == ["overview-sites"]  # the summary did not change


async def test_a_stream_needs_a_session_and_a_role_like_its_page(dash):
    http = dash.client()
    answer = await http.get("/live/overview")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert (await http.get("/live/sites/SZ-FUTIAN")).status_code == 303


async def test_a_stream_ends_after_its_lifetime_and_when_the_server_stops(dash):
    state = fast(dash, max_stream_s=0.3)
    http = await signed_in(dash)
    async with asyncio.timeout(5):
        body = (await http.get("/live/overview")).text  # returns: the stream ended
    assert body.startswith("retry: 2000") and "event: parts" in body
    state.max_stream_s = 300
    stopping = False
    state.stopping = lambda: stopping
    async with http.stream("GET", "/live/overview") as answer:
        events = Events(answer)
        await events.next()
        stopping = True
        with pytest.raises(EOFError):  # the response ends: no more events
            await events.next(within=2)
    assert state.open_streams == 0


async def test_an_alert_that_opens_appears_on_the_overview_by_itself(dash):
    fast(dash)
    http = await signed_in(dash)
    async with http.stream("GET", "/live/overview") as answer:
        events = Events(answer)
        _, parts = await events.next()
        assert "data-alert=" not in parts["overview-alerts"]
        await dash.store.run(
            lambda conn: conn.execute(
                "INSERT INTO alerts (key, kind, severity, site, since_ms, opened_ms)"
                " VALUES ('site_offline:SZ-FUTIAN', 'site_offline', 'emergency', 'SZ-FUTIAN',"
                " 0, 0)"
            )
        )
        _, parts = await events.next(within=2)
        assert 'data-severity="emergency" data-state="open"' in parts["overview-alerts"]
