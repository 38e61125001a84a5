"""Terminals that decide locally (智能终端), end to end: central, a site's edge and a smart
door reader over the private mosquitto. Cut off from the edge, the reader goes on deciding;
a card reported lost at HQ meanwhile is refused once it reconnects (its list is pushed before
it decides again), every record it buffered reaches central exactly once, and HQ raises
*terminal list lag* while it is behind — plus the pure rule that raises it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sync_system import ALICE, BOB, System, edge_db, until

from central import alerts, master
from central.core import alerts as rules
from central.core.alerts import SiteFacts, TerminalFact, Thresholds
from firmware_sim.terminals import DoorReader, TerminalSettings
from protocol.messages import decode_record

SITE = "SZ-FUTIAN"


# -- the rule -------------------------------------------------------------------------------------


def test_a_terminal_behind_on_its_lists_raises_an_important_alert_after_its_hold():
    behind = TerminalFact("DOOR-01", "door", True, lists_behind=1, lists_behind_s=120.0)
    facts = SiteFacts(site=SITE, online=True, ever_seen=True, terminals=(behind,))
    limits = Thresholds(terminal_list_lag_s=600)

    (cond,) = rules.site_conditions(facts, limits)

    assert (cond.key, cond.severity, cond.subject) == (
        f"terminal_list_lag:{SITE}:DOOR-01",
        "important",
        "DOOR-01",
    )
    assert cond.hold_s == 480  # the edge says it has been behind for 2 of the 10 minutes
    in_step = TerminalFact("DOOR-01", "door", True)
    assert (
        rules.site_conditions(
            SiteFacts(site=SITE, online=True, ever_seen=True, terminals=(in_step,)), limits
        )
        == []
    )


def test_records_the_edge_cannot_collect_are_a_normal_alert():
    missing = TerminalFact("CLOCK-01", "attendance", True, records_missing=3)
    facts = SiteFacts(site=SITE, online=True, ever_seen=True, terminals=(missing,))
    (cond,) = rules.site_conditions(facts, Thresholds())
    assert (cond.kind, cond.severity, cond.detail) == (
        "terminal_records_missing",
        "normal",
        {"records_missing": 3},
    )


# -- end to end -------------------------------------------------------------------------------


def _door_records(conn: Any) -> list[int]:
    """term_rec of every DOOR-01 record central holds for the site (repeats would show)."""
    rows = conn.execute("SELECT payload FROM records WHERE site = ?", (SITE,)).fetchall()
    records = [decode_record(bytes(r[0])) for r in rows]
    return sorted(r.term_rec for r in records if r.terminal == "DOOR-01")


async def _lag_alerts(system: System) -> list[str]:
    """Run the alert rules at central now, lag counted at once; the open lag alerts' keys."""
    now = int(datetime.now(UTC).timestamp() * 1000)
    limits = Thresholds(terminal_list_lag_s=0)
    await system.store.run(lambda conn: alerts.evaluate(conn, now_ms=now, limits=limits))
    rows = await system.store.run(
        lambda conn: conn.execute(
            "SELECT key FROM alerts WHERE kind = 'terminal_list_lag' AND state != 'resolved'"
        ).fetchall()
    )
    return [r[0] for r in rows]


@pytest.mark.integration
async def test_a_smart_reader_cut_off_keeps_deciding_and_converges_exactly_once(
    system: System, tmp_path: Path
):
    edge = system.edges[SITE]
    reader = DoorReader(
        TerminalSettings(
            "DOOR-01",
            system.keys[(SITE, "DOOR-01")],
            f"tcp://127.0.0.1:{edge.tcp_port}",
            state_file=tmp_path / "door.state",
            smart=True,
            upload_every_s=0.2,
        )
    )
    await reader.connect()
    try:
        assert {ALICE, BOB} <= set(reader.lists.whitelists["D1"])
        before = [await reader.tap(ALICE), await reader.tap(BOB)]
        assert all(o.ok and o.local for o in before)

        await reader.close()  # cut from the edge: it goes on deciding from its lists
        cut = [await reader.tap(uid) for uid in (BOB, ALICE, BOB, ALICE, BOB)]
        assert all(o.ok for o in cut)  # BOB too: the reader cannot know yet
        await system.store.run(lambda conn: master.report_lost(conn, BOB, at=datetime.now(UTC)))

        async def edge_has_it() -> bool:
            with edge_db(edge) as conn:
                return (
                    conn.execute("SELECT 1 FROM blacklist WHERE uid = ?", (BOB,)).fetchone()
                    is not None
                )

        await until(edge_has_it)

        async def lag_alert_open() -> bool:  # the edge's health says DOOR-01 is behind
            return f"terminal_list_lag:{SITE}:DOOR-01" in await _lag_alerts(system)

        await until(lag_alert_open, within=30)

        await reader.connect()
        assert BOB in reader.store.state.blacklist  # pushed before it decides again
        refused = await reader.tap(BOB)
        granted = await reader.tap(ALICE)
        assert (refused.ok, refused.local, granted.ok) == (False, True, True)

        expected = sorted(o.rec for o in [*before, *cut, refused, granted])

        async def all_at_central() -> bool:
            held = await system.store.run(_door_records)
            return held == expected

        await until(all_at_central, within=30)

        async def lag_resolved() -> bool:
            return await _lag_alerts(system) == []

        await until(lag_resolved, within=30)
    finally:
        await reader.close()

    held = await system.store.run(_door_records)
    assert held == expected  # every buffered record exactly once, none twice
    distinct = await system.store.run(
        lambda conn: conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM records WHERE site = ?", (SITE,)
        ).fetchone()
    )
    assert distinct[0] == distinct[1]
