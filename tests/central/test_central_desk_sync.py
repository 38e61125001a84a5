"""A branch desk's operations (edge_agent.desk) reaching central over the real broker: an
issue is accepted and confirmed back by the feed, a desk recharge is spendable at the other
site, a loss report at one desk is refused at the other, and an issue central refuses is
undone at the branch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sync_system import System, edge_db, until

from central import master
from edge_agent.config import DeskConfig
from edge_agent.desk import UNCONFIRMED, DeskService
from edge_agent.desk_wire import CardInfo, DeskRecharge, IssueCard, ReportLost
from firmware_sim.terminals import PosTerminal

pytestmark = pytest.mark.integration

NEW = "04D0D0D0D0D0D0"
GHOST = "04E0E0E0E0E0E0"


@pytest.fixture
def desks(system: System, tmp_path: Path) -> dict[str, DeskService]:
    """A desk service on each site's running edge (called directly: no reader here)."""
    services = {}
    for site, edge in system.edges.items():
        assert edge.site is not None
        config = DeskConfig(enabled=True, socket=tmp_path / f"{site}.sock", confirm_grace_s=1)
        services[site] = DeskService(edge.site, config)
    return services


def card_at(system: System, site: str, uid: str) -> tuple[str, str, str] | None:
    with edge_db(system.edges[site]) as conn:
        row = conn.execute(
            "SELECT person_id, status, card_type FROM cards WHERE uid = ?", (uid,)
        ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


async def test_desk_issue_recharge_and_loss_converge_through_central(
    system: System, desks: dict[str, DeskService]
) -> None:
    person = json.dumps({"id": "P3", "name": "Carol"}).encode()
    await system.store.run(lambda conn: master.upsert(conn, "", "person", "P3", person))

    async def p3_known_at_sz() -> bool:
        with edge_db(system.edges["SZ-FUTIAN"]) as conn:
            return conn.execute("SELECT 1 FROM persons WHERE id = 'P3'").fetchone() is not None

    await until(p3_known_at_sz)
    sz, bj = desks["SZ-FUTIAN"], desks["BJ-CHAOYANG"]
    issued = await sz.handle(IssueCard(uid=NEW, request_id="i-1", person_id="P3", operator="li"))
    assert issued.ok, issued
    assert card_at(system, "SZ-FUTIAN", NEW) == ("P3", "active", UNCONFIRMED)

    async def confirmed_everywhere() -> bool:
        there = [card_at(system, site, NEW) for site in system.edges]
        return all(
            c is not None and c[:2] == ("P3", "active") and c[2] != UNCONFIRMED for c in there
        )

    await until(confirmed_everywhere)
    central_card = await system.store.run(lambda conn: master.get(conn, "", "card", NEW))
    assert central_card is not None and central_card["person_id"] == "P3"

    charged = await sz.handle(
        DeskRecharge(uid=NEW, request_id="c-1", amount_fen=800, operator="li")
    )
    assert charged.ok

    async def spendable_at_bj() -> bool:
        info = await bj.handle(CardInfo(uid=NEW))
        return info.card is not None and info.card.balance_fen == 800

    await until(spendable_at_bj)
    till = system.terminal(PosTerminal, "BJ-CHAOYANG", "POS-01")
    async with till as pos:  # type: ignore[attr-defined]
        sale = await pos.sale(NEW, amount=300)
        assert sale.ok and sale.balance == 500
        assert (await bj.handle(ReportLost(uid=NEW, request_id="l-1", operator="wang"))).ok
        assert not (await pos.sale(NEW, amount=100)).ok  # refused at BJ at once

    async def lost_at_sz() -> bool:
        card = card_at(system, "SZ-FUTIAN", NEW)
        return card is not None and card[1] == "lost"

    await until(lost_at_sz)


async def test_an_issue_central_refuses_is_undone_at_the_branch(
    system: System, desks: dict[str, DeskService]
) -> None:
    # The branch's replica still holds a person HQ no longer has: central refuses the issue.
    def stale_person(conn: object) -> None:
        conn.execute(  # type: ignore[attr-defined]
            "INSERT INTO persons (id, name, kind) VALUES ('P9', 'Gone', 'member')"
        )

    edge = system.edges["SZ-FUTIAN"]
    assert edge.site is not None
    await edge.site.store.run(stale_person)
    sz = desks["SZ-FUTIAN"]
    issued = await sz.handle(IssueCard(uid=GHOST, request_id="i-9", person_id="P9", operator="li"))
    assert issued.ok and card_at(system, "SZ-FUTIAN", GHOST) is not None
    record_id = issued.records[0]

    async def refused_at_central() -> bool:
        row = await system.store.run(
            lambda conn: conn.execute(
                "SELECT result FROM op_results WHERE request_id = ?", (record_id,)
            ).fetchone()
        )
        return row is not None and "person_unknown" in row[0]

    await until(refused_at_central)

    async def undone() -> bool:
        await sz.reconcile()
        return card_at(system, "SZ-FUTIAN", GHOST) is None

    await until(undone, within=20)
