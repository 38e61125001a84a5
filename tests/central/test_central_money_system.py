"""Card and money operations over the real system: central (with its JSON API) and two
edges on a private mosquitto with TLS and the ACL, simulated terminals tapping real cards."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sync_system import ALICE, BOB, System, edge_db, until

from central import finance, imports, operations, queries
from central.api import api_server
from central.core.cards import Reissue
from central.core.state import Policy
from firmware_sim.terminals import DoorReader, PosTerminal, RechargeKiosk, SimulatedCrashError

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
A, B = "SZ-FUTIAN", "BJ-CHAOYANG"


@pytest.fixture
async def api(system: System) -> AsyncIterator[httpx.AsyncClient]:
    token = await system.store.run(lambda conn: queries.add_token(conn, "desk", "operator"))
    sock = socket.create_server(("127.0.0.1", 0))
    server = api_server(system.store, "127.0.0.1", 0)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        yield client
    server.should_exit = True
    await serving


async def all_acked(system: System) -> bool:
    for edge in system.edges.values():
        with edge_db(edge) as conn:
            if conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0]:
                return False
    return True


async def central_cash(system: System, person: str) -> int:
    row = await system.store.run(
        lambda conn: conn.execute(
            "SELECT cash_fen FROM accounts WHERE person_id = ?", (person,)
        ).fetchone()
    )
    return int(row[0])


def site_cash(system: System, site: str, person: str) -> int | None:
    with edge_db(system.edges[site]) as conn:
        row = conn.execute(
            "SELECT cash_fen FROM accounts WHERE person_id = ?", (person,)
        ).fetchone()
    return None if row is None else int(row[0])


async def test_a_card_reported_lost_through_the_api_is_refused_everywhere_within_2_s(
    system: System, api: httpx.AsyncClient
):
    door_a = system.terminal(DoorReader, A, "DOOR-01")
    door_b = system.terminal(DoorReader, B, "DOOR-01")
    async with door_a as a, door_b as b:  # type: ignore[attr-defined]
        assert (await a.tap(BOB)).ok and (await b.tap(BOB)).ok
        started = asyncio.get_running_loop().time()
        answer = await api.post(
            "/api/v1/operations",
            json={"op": "card.report_lost", "request_id": "lost-bob", "card_uid": BOB},
        )
        assert answer.status_code == 200, answer.text

        async def refused_everywhere() -> bool:
            ra, rb = await a.tap(BOB), await b.tap(BOB)
            return not ra.ok and not rb.ok

        await until(refused_everywhere, within=5)
        elapsed = asyncio.get_running_loop().time() - started
    assert elapsed < 2.0, f"took {elapsed:.2f}s to reach both sites"


async def test_a_reissued_card_spends_the_old_balance_and_the_old_card_is_refused(
    system: System,
):
    new_card = "04A1B2C3D4E5AA"
    reissue = Reissue(
        request_id="reissue-alice",
        operator="desk",
        source="hq:web",
        card_uid=ALICE,
        new_card_uid=new_card,
    )
    outcome = await system.store.run(lambda conn: operations.execute(conn, reissue))
    assert outcome.blacklist_version is not None
    till = system.terminal(PosTerminal, B, "POS-01")
    door = system.terminal(DoorReader, A, "DOOR-01")
    async with till as pos, door as d:  # type: ignore[attr-defined]

        async def new_card_works() -> bool:
            return bool((await d.tap(new_card)).ok)

        await until(new_card_works, within=5)
        sale = await pos.sale(new_card, amount=600)  # Alice had ¥10.00 on the old card
        assert sale.ok and sale.balance == 400
        assert not (await d.tap(ALICE)).ok  # the old card is replaced: refused
    await until(lambda: all_acked(system))
    assert await central_cash(system, "P1") == 400


async def test_an_offline_double_spend_raises_one_anomaly_and_freezes_the_card(system: System):
    await system.store.run(
        lambda conn: operations.save_policy(conn, Policy(freeze_on_negative=True))
    )
    till_a = system.terminal(PosTerminal, A, "POS-01")
    till_b = system.terminal(PosTerminal, B, "POS-01")
    system.broker.stop()  # both sites lose HQ; each still holds Alice's ¥10.00
    try:
        async with till_a as pa, till_b as pb:  # type: ignore[attr-defined]

            async def both_offline() -> bool:
                return all(
                    e.site is not None and e.site.offline_since is not None
                    for e in system.edges.values()
                )

            await until(both_offline)
            assert (await pa.sale(ALICE, amount=800)).ok
            assert (await pa.sale(ALICE, amount=100)).ok
            assert (await pb.sale(ALICE, amount=700)).ok
    finally:
        system.broker.start()
    await until(lambda: all_acked(system), within=30)
    assert await central_cash(system, "P1") == 1000 - 1600
    rows = await system.store.run(
        lambda conn: conn.execute(
            "SELECT json_extract(detail, '$.person_id'), json_extract(detail, '$.frozen')"
            " FROM anomalies WHERE kind = 'negative_balance'"
        ).fetchall()
    )
    assert rows == [("P1", f'["{ALICE}"]')]  # one anomaly for three offline sales

    async def refused_at_both() -> bool:
        async with till_a as pa, till_b as pb:  # type: ignore[attr-defined]
            ra, rb = await pa.sale(ALICE, amount=1), await pb.sale(ALICE, amount=1)
        return not ra.ok and not rb.ok

    await until(refused_at_both, within=10)


async def test_a_statement_import_credits_a_unilateral_recharge_once(system: System):
    kiosk = system.terminal(RechargeKiosk, A, "KIOSK-01")
    async with kiosk as k:  # type: ignore[attr-defined]
        with pytest.raises(SimulatedCrashError):
            await k.recharge(ALICE, 5000, pay_ref="WX-4242", crash_after_payment=True)
    await until(lambda: all_acked(system))
    assert await central_cash(system, "P1") == 1000  # prepared, never committed
    later = datetime.now(UTC) + timedelta(hours=1)
    flagged = await system.store.run(lambda conn: finance.flag_uncommitted(conn, now=later))
    assert flagged == 1
    # The channel's statement, in Beijing time, stamps the payment a second after it.
    paid = (datetime.now(UTC) + timedelta(hours=8, seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    statement = f"pay_ref,amount,time\nWX-4242,50.00,{paid}\n".encode()
    for _ in range(2):  # twice: credited once
        result = await system.store.run(
            lambda conn: finance.reconcile_statement(
                conn, statement, "wx.csv", operator="fin", source="hq:cli", apply=True, now=later
            )
        )
    assert result.credited == ()  # the second run found it already credited
    assert await central_cash(system, "P1") == 6000

    async def credited_at_site() -> bool:
        return site_cash(system, B, "P1") == 6000

    await until(credited_at_site)


async def test_a_gbk_member_file_imports_once_and_its_cards_work_at_the_sites(system: System):
    data = (SAMPLES / "members-gbk.csv").read_bytes()
    for _ in range(2):
        plan = await system.store.run(
            lambda conn: imports.import_members(conn, data, "members-gbk.csv", operator="hr")
        )
        assert plan.ok
    assert await central_cash(system, "M2001") == 120_000  # ¥1200.00 once
    till = system.terminal(PosTerminal, B, "POS-01")
    async with till as pos:  # type: ignore[attr-defined]

        async def member_known() -> bool:
            return site_cash(system, B, "M2001") == 120_000

        await until(member_known)
        sale = await pos.sale("04C3D4E5", amount=1250)
    assert sale.ok and sale.balance == 120_000 - 1250
