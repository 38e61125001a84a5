"""Central and two edges over a private mosquitto with TLS and the generated ACL."""

from __future__ import annotations

import asyncio

import pytest
from sync_system import ALICE, BOB, System, edge_db, until

from central import master
from firmware_sim.terminals import DoorReader, PosTerminal, RechargeKiosk

pytestmark = pytest.mark.integration


async def test_taps_at_two_sites_reach_central_exactly_once(system: System):
    door_a = system.terminal(DoorReader, "SZ-FUTIAN", "DOOR-01")
    door_b = system.terminal(DoorReader, "BJ-CHAOYANG", "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        for _ in range(5):
            assert (await a.tap(ALICE)).ok
            assert (await b.tap(BOB)).ok

    async def all_acked() -> bool:
        for edge in system.edges.values():
            with edge_db(edge) as conn:
                if conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]:
                    return False
        return True

    await until(all_acked)
    rows = await system.store.run(
        lambda conn: conn.execute(
            "SELECT site, count(*), count(DISTINCT id) FROM records GROUP BY site ORDER BY site"
        ).fetchall()
    )
    assert rows == [("BJ-CHAOYANG", 5, 5), ("SZ-FUTIAN", 5, 5)]


async def test_a_recharge_at_one_site_is_spendable_at_the_other(system: System):
    kiosk = system.terminal(RechargeKiosk, "SZ-FUTIAN", "KIOSK-01")
    till = system.terminal(PosTerminal, "BJ-CHAOYANG", "POS-01")
    async with till as pos:  # type: ignore[attr-defined]
        refused = await pos.sale(ALICE, amount=5000)  # ¥10 on the card: not enough
        assert refused.code == "insufficient_funds"
        async with kiosk as k:  # type: ignore[attr-defined]
            assert (await k.recharge(ALICE, 20000, pay_ref="BANK-77")).ok

        async def credited_at_b() -> bool:
            with edge_db(system.edges["BJ-CHAOYANG"]) as conn:
                row = conn.execute(
                    "SELECT cash_fen FROM accounts WHERE person_id = 'P1'"
                ).fetchone()
            return row is not None and row[0] == 21000

        await until(credited_at_b)
        sale = await pos.sale(ALICE, amount=5000)
    assert sale.ok and sale.balance == 16000
    ledger = await system.store.run(
        lambda conn: conn.execute(
            "SELECT sum(cash_fen) FROM ledger WHERE person_id = 'P1'"
        ).fetchone()[0]
    )

    async def settled() -> bool:
        total = await system.store.run(
            lambda conn: conn.execute(
                "SELECT cash_fen FROM accounts WHERE person_id = 'P1'"
            ).fetchone()[0]
        )
        return bool(total == 16000)

    await until(settled)
    assert ledger in (21000, 16000)


async def test_a_card_reported_lost_at_central_is_refused_at_both_sites(system: System):
    door_a = system.terminal(DoorReader, "SZ-FUTIAN", "DOOR-01")
    door_b = system.terminal(DoorReader, "BJ-CHAOYANG", "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        assert (await a.tap(BOB)).ok
        from datetime import UTC, datetime

        await system.store.run(lambda conn: master.report_lost(conn, BOB, at=datetime.now(UTC)))
        started = asyncio.get_running_loop().time()

        async def refused_everywhere() -> bool:
            ra, rb = await a.tap(BOB), await b.tap(BOB)
            return not ra.ok and not rb.ok

        await until(refused_everywhere, within=5)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2.0, f"took {elapsed:.2f}s to reach both sites"


async def test_hq_sees_what_each_site_has_applied_without_a_reconnect(system: System):
    """The birth message tells HQ a site's feed and blacklist versions only at connect —
    before the snapshot. Health reports keep them current, so the lag HQ shows (overview,
    blacklist page, alerts) falls to zero once the site has applied the change."""
    from datetime import UTC, datetime

    await system.store.run(lambda conn: master.report_lost(conn, BOB, at=datetime.now(UTC)))

    async def applied_everywhere() -> bool:
        rows = await system.store.run(
            lambda conn: conn.execute(
                "SELECT s.feed_version, s.blacklist_version,"
                " (SELECT max(version) FROM changes), (SELECT max(version) FROM blacklist_log)"
                " FROM sites s WHERE s.removed = 0"
            ).fetchall()
        )
        return len(rows) == 2 and all(
            feed > 0 and black == black_head for feed, black, _, black_head in rows
        )

    await until(applied_everywhere, within=8)
