"""The person page's "more operations" over real HTTP — issue a card, set limits, grant a
subsidy, sell a ticket, correct a purchase, cancel and close the account — each confirmed,
typed in yuan and local dates, applied once, and refused with a reason when it cannot be."""

from __future__ import annotations

import re

import msgspec
from test_web_people_ops import ALICE, SALE_ID, alice, cash, operator  # noqa: F401 - fixture

from central import master, queries
from edge_agent.core.model import Person

NEW_CARD = "04C0FFEE000001"


async def fields(http, op: str, person: str = "P1") -> dict[str, str]:
    page = (await http.get(f"/people/{person}")).text
    form_id = "op-" + op.replace(".", "-")
    block = re.search(rf'id="{form_id}".*?</form>', page, re.S)
    assert block, f"no form {form_id}"
    values = dict(re.findall(r'type="hidden" name="([a-z_]+)" value="([^"]*)"', block[0]))
    return {k: values[k] for k in ("csrf", "request_id", "ticket_id")}


async def post(http, op: str, person: str = "P1", **data: str):
    base = await fields(http, op, person)
    return await http.post(f"/people/{person}/op/{op}", data={**base, "confirm": "yes", **data})


async def view(dash, person: str = "P1"):
    return await dash.store.run(lambda conn: queries.person_view(conn, person))


async def test_issue_limits_subsidy_and_a_ticket_from_the_person_page(alice):  # noqa: F811
    http = await operator(alice)
    newcomer = Person(id="P2", name="Bo Li", kind="staff")
    await alice.store.run(
        lambda conn: master.upsert(conn, "", "person", "P2", msgspec.json.encode(newcomer))
    )
    assert 'id="op-card-issue"' not in (await http.get("/people/P1")).text  # holds a card
    issued = await post(
        http, "card.issue", "P2", new_card_uid=NEW_CARD.lower(), deposit_method="cash"
    )
    assert issued.status_code == 200 and "The card is issued" in issued.text
    assert [c["uid"] for c in (await view(alice, "P2"))["cards"]] == [NEW_CARD]
    limits = await post(http, "limits.set", card_uid=ALICE, txn_limit="50.00", daily_limit="")
    assert "The limits are set" in limits.text
    limits_now = (await view(alice))["limits"]
    assert (limits_now["txn_limit_fen"], limits_now["daily_limit_fen"]) == (5000, None)
    subsidy = await post(
        http, "subsidy.grant", subsidy_amount="30.00", expires="2099-12-31", mode="add"
    )
    assert "The subsidy is granted" in subsidy.text
    assert (await view(alice))["balance"]["subsidy_fen"] == 3000
    ticket = await post(
        http,
        "ticket.sell",
        card_uid=ALICE,
        ticket_kind="count",
        service="swim",
        price="20.00",
        uses="10",
    )
    assert "The ticket is sold" in ticket.text
    tickets = (await view(alice))["tickets"]
    assert [(t["service"], t["remaining"]) for t in tickets] == [("swim", 10)]
    assert await cash(alice) == 5_000 - 1_250 - 2_000


async def test_correct_a_purchase_and_close_the_account(alice):  # noqa: F811
    http = await operator(alice)
    corrected = await post(
        http, "money.correct", original_id=SALE_ID, corrected_amount="10.00", reason="wrong key"
    )
    assert "The purchase is corrected" in corrected.text
    assert await cash(alice) == 5_000 - 1_000
    closed = await post(http, "card.cancel", card_uid=ALICE, recycle="yes", payout_method="cash")
    assert "The account is closed" in closed.text
    assert {c["status"] for c in (await view(alice))["cards"]} == {"cancelled"}


async def test_bad_input_is_refused_with_a_reason_and_nothing_changes(alice):  # noqa: F811
    http = await operator(alice)
    missing = await post(http, "limits.set", card_uid="", txn_limit="1")
    assert missing.status_code == 400 and "Fill in: Card" in missing.text
    bad_amount = await post(http, "subsidy.grant", subsidy_amount="abc", mode="add")
    assert bad_amount.status_code == 400
    bad_date = await post(http, "subsidy.grant", subsidy_amount="1", expires="31/12", mode="add")
    assert bad_date.status_code == 400 and "is not a date" in bad_date.text
    bad_choice = await post(http, "subsidy.grant", subsidy_amount="1", mode="double")
    assert bad_choice.status_code == 400
    unknown = await http.post("/people/P1/op/money.steal", data=await fields(http, "limits.set"))
    assert unknown.status_code == 400
    unconfirmed = await http.post(
        "/people/P1/op/limits.set",
        data={**await fields(http, "limits.set"), "card_uid": ALICE, "txn_limit": "1"},
    )
    assert unconfirmed.status_code == 400
    period_without_dates = await post(
        http, "ticket.sell", card_uid=ALICE, ticket_kind="period", service="gym", price="1"
    )
    assert period_without_dates.status_code == 409  # the operation's own refusal, with its code
    assert (await view(alice))["balance"]["subsidy_fen"] == 0
    assert (await view(alice))["tickets"] == []
