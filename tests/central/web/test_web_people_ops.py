"""The person page's other desk operations over real HTTP: freeze and unfreeze, found,
replace a card, and refund a purchase a site recorded — each confirmed, applied once however
often posted, refused with a clear reason when it cannot be done, and audited."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec
import pytest
from web_harness import sign_in

from central import master, queries
from central.ingest import ingest_batch
from protocol.messages import Purchase, RawRecordBatch, encode

ALICE = "04A1B2C3D4E5F6"
NEW_CARD = "04A1B2C3D4E5AA"
SALE_ID = "SZ-FUTIAN:1:1"
_FIELD = r'id="{form}".*?name="{name}" value="([^"]+)"'


@pytest.fixture
async def alice(dash):
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice Zhang"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 5_000}],
        },
        master.CentralSeed,
    )
    at = datetime.now(UTC)
    sale = Purchase(
        id=SALE_ID,
        seq=1,
        site="SZ-FUTIAN",
        terminal="POS-01",
        at=at,
        received_at=at,
        offline=False,
        card_uid=ALICE,
        approved=True,
        reason="ok",
        amount=1_250,
        cash_fen=1_250,
    )
    batch = RawRecordBatch(
        site="SZ-FUTIAN",
        epoch=1,
        lane=0,
        first_seq=1,
        last_seq=1,
        records=[msgspec.Raw(encode(sale))],
    )

    def setup(conn):
        master.apply_seed(conn, seed, batch="t")
        ingest_batch(conn, "SZ-FUTIAN", batch, topic="t", now_ms=0, holders=dash.store.holders)

    await dash.store.run(setup)
    return dash


async def operator(dash):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, "operator-1")).status_code == 303
    return http


async def form(http, form_id: str) -> dict[str, str]:
    page = (await http.get("/people/P1")).text
    values = {}
    for name in ("csrf", "request_id"):
        found = re.search(_FIELD.format(form=form_id, name=name), page, re.S)
        assert found, page
        values[name] = found[1]
    return values


async def card_status(dash, uid: str) -> str | None:
    view = await dash.store.run(lambda conn: queries.person_view(conn, "P1"))
    return next((c["status"] for c in view["cards"] if c["uid"] == uid), None)


async def cash(dash) -> int:
    rows = await dash.store.run(
        lambda conn: conn.execute("SELECT cash_fen FROM accounts WHERE person_id = 'P1'").fetchall()
    )
    return int(rows[0][0])


async def test_freeze_then_unfreeze_a_card_each_once_and_audited(alice):
    http = await operator(alice)
    fields = await form(http, "card-op")
    post = {**fields, "op": "card.freeze", "card_uid": ALICE, "freeze_reason": "fraud check"}
    unconfirmed = await http.post("/people/P1/card-op", data=post)
    assert unconfirmed.status_code == 400 and "Tick the confirmation box" in unconfirmed.text
    assert await card_status(alice, ALICE) == "active"
    done = await http.post("/people/P1/card-op", data={**post, "confirm": "yes"})
    assert done.status_code == 200 and "The card is frozen" in done.text
    again = await http.post("/people/P1/card-op", data={**post, "confirm": "yes"})
    assert "nothing was done again" in again.text  # the same form, posted twice
    assert await card_status(alice, ALICE) == "frozen"
    fields = await form(http, "card-op")
    thaw = {**fields, "op": "card.unfreeze", "card_uid": ALICE, "confirm": "yes"}
    assert "The card is active again." in (await http.post("/people/P1/card-op", data=thaw)).text
    assert await card_status(alice, ALICE) == "active"
    audit = await alice.audit(target=f"card:{ALICE}")
    assert [a["action"] for a in audit][:2] == ["card.unfreeze", "card.freeze"]
    assert all(a["operator"] == "operator-1" for a in audit[:2])


async def test_replace_a_lost_card_and_a_refusal_says_why(alice):
    http = await operator(alice)
    fields = await form(http, "card-op")
    missing = {**fields, "op": "card.reissue", "card_uid": ALICE, "confirm": "yes"}
    answer = await http.post("/people/P1/card-op", data=missing)
    assert answer.status_code == 400 and "Enter the new card" in answer.text
    unfreeze = {**fields, "op": "card.unfreeze", "card_uid": ALICE, "confirm": "yes"}
    refused = await http.post("/people/P1/card-op", data=unfreeze)  # it is not frozen
    assert refused.status_code == 409 and "Refused:" in refused.text
    fields = await form(http, "card-op")
    replace = {**missing, **fields, "new_card_uid": NEW_CARD.lower()}
    done = await http.post("/people/P1/card-op", data=replace)
    assert done.status_code == 200 and "The new card replaces the old one" in done.text
    assert await card_status(alice, ALICE) == "replaced"
    assert await card_status(alice, NEW_CARD) == "active"


async def test_refund_part_of_a_site_purchase_through_the_form(alice):
    http = await operator(alice)
    page = (await http.get("/people/P1")).text
    assert f'<option value="{SALE_ID}"' in page and "¥12.50" in page
    before = await cash(alice)
    fields = await form(http, "refund")
    post = {**fields, "original_id": SALE_ID, "refund_amount": "5.00", "confirm": "yes"}
    no_reason = await http.post("/people/P1/refund", data=post)
    assert no_reason.status_code == 400 and "a reason is required" in no_reason.text
    too_much = await http.post(
        "/people/P1/refund", data={**post, "refund_amount": "20.00", "refund_reason": "returned"}
    )
    assert too_much.status_code == 409 and "Refused:" in too_much.text
    fields = await form(http, "refund")
    done = await http.post(
        "/people/P1/refund", data={**post, **fields, "refund_reason": "cold soup"}
    )
    assert done.status_code == 200 and "The refund was credited" in done.text
    assert await cash(alice) == before + 500
