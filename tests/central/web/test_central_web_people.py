"""The People & cards and Blacklist pages over real HTTP: search, a person's purses in yuan,
recharge and report lost through the forms (once, however often posted), the blacklist
version rising, and who may see and do what."""

from __future__ import annotations

import re

import msgspec
import pytest
from web_harness import sign_in

from central import master

ALICE_CARD, BOB_CARD = "04A1B2C3D4E5F6", "04B0B0B0B0B0B0"
_RECHARGE_ID = re.compile(r'id="recharge".*?name="request_id" value="([^"]+)"', re.S)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def people(dash):
    seed = msgspec.convert(
        {
            "persons": [
                {"id": "P1", "name": "Alice Zhang", "number": "S0012", "kind": "staff"},
                {"id": "P2", "name": "Bob Li", "number": "M0042"},
            ],
            "cards": [
                {"uid": ALICE_CARD, "person_id": "P1"},
                {"uid": BOB_CARD, "person_id": "P2"},
            ],
            "accounts": [{"person_id": "P1", "cash_fen": 12_345, "subsidy_fen": 500}],
        },
        master.CentralSeed,
    )
    await dash.store.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
    return dash


async def signed_in(dash, username: str):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


def found_ids(page: str) -> list[str]:
    return re.findall(r'data-person="([^"]+)"', page)


async def form_of(http, person: str = "P1") -> tuple[str, str, str]:
    """(csrf, recharge request id, page) of a person's page."""
    page = (await http.get(f"/people/{person}")).text
    csrf, rid = _CSRF.search(page), _RECHARGE_ID.search(page)
    assert csrf and rid, page
    return csrf[1], rid[1], page


async def cash_of(dash, person: str) -> int:
    rows = await dash.store.run(
        lambda conn: conn.execute(
            "SELECT cash_fen FROM accounts WHERE person_id = ?", (person,)
        ).fetchall()
    )
    return rows[0][0]


async def test_search_finds_by_name_number_and_card_uid(people):
    http = await signed_in(people, "operator-1")
    assert found_ids((await http.get("/people", params={"q": "alice"})).text) == ["P1"]
    assert found_ids((await http.get("/people", params={"q": "M0042"})).text) == ["P2"]
    by_uid = (await http.get("/people", params={"q": BOB_CARD.lower()})).text
    assert found_ids(by_uid) == ["P2"]
    nobody = (await http.get("/people", params={"q": "nobody"})).text
    assert found_ids(nobody) == [] and "Nobody matches" in nobody
    assert (await http.get("/people")).status_code == 200


async def test_the_person_view_shows_purses_in_yuan_and_cards(people):
    http = await signed_in(people, "finance-1")
    page = (await http.get("/people/P1")).text
    assert 'data-purse="cash">¥123.45<' in page
    assert 'data-purse="subsidy">¥5.00<' in page
    assert 'data-purse="deposit">¥0.00<' in page
    assert f'data-card="{ALICE_CARD}"' in page and "Active" in page
    assert 'id="recharge"' not in page  # finance may look, not operate
    zh = (await http.get("/people/P1?lang=zh-CN")).text
    assert "现金" in zh and "¥123.45" in zh
    missing = await http.get("/people/NOPE")
    assert missing.status_code == 404


async def test_a_recharge_posted_twice_is_applied_once(people):
    http = await signed_in(people, "operator-1")
    csrf, rid, _ = await form_of(http)
    form = {
        "csrf": csrf,
        "request_id": rid,
        "card_uid": ALICE_CARD,
        "amount": "¥50.5",
        "method": "bank",
        "pay_ref": "BANK-778",
        "confirm": "yes",
    }
    first = await http.post("/people/P1/recharge", data=form)
    assert first.status_code == 200, first.text
    assert "The recharge was applied." in first.text
    assert 'data-purse="cash">¥173.95<' in first.text
    again = await http.post("/people/P1/recharge", data=form)
    assert again.status_code == 200
    assert "had been submitted already" in again.text
    assert await cash_of(people, "P1") == 17_395
    entries = await people.store.run(
        lambda conn: conn.execute(
            "SELECT count(*) FROM ledger WHERE person_id = 'P1' AND kind = 'recharge'"
        ).fetchone()[0]
    )
    assert entries == 1
    audit = await people.audit(action="money.recharge")
    assert [(a["operator"], a["role"], a["source"]) for a in audit] == [
        ("operator-1", "operator", "hq:web")
    ]
    # A fresh form is a fresh request id.
    _, rid2, _ = await form_of(http)
    assert rid2 != rid


async def test_a_recharge_needs_confirmation_and_a_valid_amount(people):
    http = await signed_in(people, "operator-1")
    csrf, rid, _ = await form_of(http)
    base = {"csrf": csrf, "request_id": rid, "card_uid": ALICE_CARD, "method": "cash"}
    unticked = await http.post("/people/P1/recharge", data={**base, "amount": "10"})
    assert unticked.status_code == 400 and "not_confirmed" in unticked.text
    bad = await http.post("/people/P1/recharge", data={**base, "amount": "1.234", "confirm": "yes"})
    assert bad.status_code == 400 and "amount_fraction" in bad.text
    assert await cash_of(people, "P1") == 12_345


async def test_a_refusal_shows_its_reason(people):
    http = await signed_in(people, "operator-1")
    csrf, rid, _ = await form_of(http)
    form = {
        "csrf": csrf,
        "request_id": rid,
        "card_uid": "04FFFFFFFFFFFF",
        "amount": "10",
        "method": "cash",
        "confirm": "yes",
    }
    refused = await http.post("/people/P1/recharge", data=form)
    assert refused.status_code == 409
    assert 'class="result refused"' in refused.text
    assert "Refused:" in refused.text


async def test_report_lost_raises_the_blacklist_version_shown(people):
    http = await signed_in(people, "admin-1")
    before = (await http.get("/blacklist")).text
    assert "Version v0 · 0 cards listed" in before
    page = (await http.get("/people/P2")).text
    csrf = _CSRF.search(page)[1]
    rid = re.search(r'report-lost".*?name="request_id" value="([^"]+)"', page, re.S)[1]
    form = {"csrf": csrf, "request_id": rid, "card_uid": BOB_CARD, "confirm": "yes"}
    lost = await http.post("/people/P2/report-lost", data=form)
    assert lost.status_code == 200, lost.text
    assert "reported lost" in lost.text
    row = lost.text[lost.text.index(f'data-card="{BOB_CARD}"') :].split("</tr>")[0]
    assert "Lost" in row and "since" in row
    await http.post("/people/P2/report-lost", data=form)  # a double-submit: applied once
    after = (await http.get("/blacklist")).text
    assert "Version v1 · 1 cards listed · 0 of 2 sites up to date" in after
    assert f'data-uid="{BOB_CARD}"' in after
    site = after[after.index('data-site="SZ-FUTIAN"') :].split("</tr>")[0]
    assert "v0" in site and "1 behind" in site
    await people.store.run(
        lambda conn: conn.execute("UPDATE sites SET blacklist_version = 1 WHERE id = 'SZ-FUTIAN'")
    )
    later = (await http.get("/blacklist")).text
    assert "1 of 2 sites up to date" in later


async def test_a_technician_may_not_open_people_or_the_blacklist(people):
    http = await signed_in(people, "technician-1")
    assert (await http.get("/people")).status_code == 403
    assert (await http.get("/people/P1")).status_code == 403
    assert (await http.get("/blacklist")).status_code == 403
    assert 'href="/people"' not in (await http.get("/")).text


async def test_an_auditor_may_look_but_not_post(people):
    http = await signed_in(people, "auditor-1")
    assert (await http.get("/people", params={"q": "Alice"})).status_code == 200
    page = await http.get("/people/P1")
    assert page.status_code == 200 and 'id="recharge"' not in page.text
    assert (await http.get("/blacklist")).status_code == 200
    csrf = _CSRF.search(page.text)[1]
    form = {
        "csrf": csrf,
        "request_id": "web-auditor-try",
        "card_uid": ALICE_CARD,
        "amount": "10",
        "method": "cash",
        "confirm": "yes",
    }
    assert (await http.post("/people/P1/recharge", data=form)).status_code == 403
    lost = {
        "csrf": csrf,
        "request_id": "web-auditor-lost",
        "card_uid": ALICE_CARD,
        "confirm": "yes",
    }
    assert (await http.post("/people/P1/report-lost", data=lost)).status_code == 403
    assert await cash_of(people, "P1") == 12_345


async def test_a_post_without_csrf_is_refused(people):
    http = await signed_in(people, "operator-1")
    _, rid, _ = await form_of(http)
    form = {
        "request_id": rid,
        "card_uid": ALICE_CARD,
        "amount": "10",
        "method": "cash",
        "confirm": "yes",
    }
    answer = await http.post("/people/P1/recharge", data=form)
    assert answer.status_code == 403
    assert await cash_of(people, "P1") == 12_345
    assert people.stats["csrf_refused"] == 1
