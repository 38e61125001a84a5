"""Doors forced or held open become alerts at HQ: a door controller's EVENT travels edge →
broker → central like any record, and the alert rules raise an important alert per door and
event (with how often), which resolves once the door has been quiet for the window."""

from __future__ import annotations

import time

import pytest
from sync_system import System, until

from central import alerts
from central.core import alerts as rules
from firmware_sim.terminals import DoorReader

SITE = "SZ-FUTIAN"


def test_a_forced_door_is_an_important_alert_even_while_the_site_is_offline():
    facts = rules.SiteFacts(
        site=SITE,
        online=False,
        ever_seen=True,
        door_events=(rules.DoorEventFact("D1", "door_forced", 2, 1_795_000_000_000),),
    )
    found = {c.key: c for c in rules.site_conditions(facts, rules.Thresholds())}
    forced = found[f"door_forced:{SITE}/D1"]
    assert (forced.severity, forced.subject, forced.detail["count"]) == ("important", "D1", 2)
    assert f"site_offline:{SITE}" in found


@pytest.mark.integration
async def test_a_door_forced_at_a_site_raises_an_alert_at_hq_that_clears_when_quiet(
    system: System,
):
    door = system.terminal(DoorReader, SITE, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        assert await reader.report_event("door_forced", door="D1")
        assert await reader.report_event("door_forced", door="D1")
        assert await reader.report_event("tamper")  # an event, but not a door alert

    async def collected() -> bool:
        rows = await system.store.run(
            lambda c: c.execute("SELECT count(*) FROM door_events").fetchone()[0]
        )
        return rows == 2

    await until(collected, within=5)
    limits = rules.Thresholds(door_event_window_s=600)
    now = int(time.time() * 1000)
    opened = await system.store.run(lambda c: alerts.evaluate(c, now_ms=now, limits=limits))
    forced = [a for a in opened.opened if a["kind"] == "door_forced"]
    assert [(a["site"], a["subject"], a["severity"]) for a in forced] == [(SITE, "D1", "important")]
    assert forced[0]["detail"]["count"] == 2
    later = now + 601_000
    quiet = await system.store.run(lambda c: alerts.evaluate(c, now_ms=later, limits=limits))
    assert [a["kind"] for a in quiet.resolved if a["kind"] == "door_forced"] == ["door_forced"]
