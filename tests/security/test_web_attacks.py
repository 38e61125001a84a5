"""Attacks on the dashboard and the JSON API over real HTTP: hostile text in every text
field (stored and reflected XSS, SQL metacharacters), session fixation, and hostile JSON
bodies (deeply nested, oversized).

Hostile text must be stored exactly as typed (it is data, not code: parameterised SQL) and
rendered escaped on every page that shows it; hostile bodies get a specific 4xx and change
nothing.
"""

from __future__ import annotations

import csv
import io
import re
import sqlite3
from datetime import UTC, datetime

import httpx
import msgspec
import pytest
from web_harness import csrf_of, sign_in

from central.api import MAX_BODY
from central.ingest import anomaly, ingest_batch
from central.web.sessions import CSRF_COOKIE, SESSION_COOKIE
from protocol.messages import Purchase, RawRecordBatch, TerminalEvent, encode

pytestmark = pytest.mark.integration

SITE = "SZ-FUTIAN"
ALICE = "04A1B2C3D4E5F6"
SALE_ID = f"{SITE}.1.0.1"
#: Quotes to break out of an attribute, a script tag, an event handler, SQL's quote and
#: comment. 59 characters: it fits every 64-character field.
HOSTILE = "'\"><script>alert(1)</script><img src=x onerror=alert(2)>;--"
#: The same without spaces, for fields that take printable ASCII only (payment references).
HOSTILE_NOSPACE = HOSTILE.replace(" ", "/")
#: What must never appear raw in a page: markup the browser would run.
RAW = ("<script>alert(1)", "<img src=x onerror", "<img/src=x/onerror")
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
_FIELD = r'id="{form}".*?name="{name}" value="([^"]+)"'


def members_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["person_id", "name", "number", "department", "card_uid", "cash"])
    writer.writerow(["P1", HOSTILE, HOSTILE, HOSTILE, ALICE, "100"])
    return out.getvalue().encode()


def site_records() -> RawRecordBatch:
    at = datetime.now(UTC)
    common = {"site": SITE, "at": at, "received_at": at, "offline": False}
    sale = Purchase(
        id=SALE_ID,
        seq=1,
        terminal="POS-01",
        card_uid=ALICE,
        approved=True,
        reason="ok",
        amount=1_250,
        cash_fen=1_250,
        **common,  # type: ignore[arg-type]
    )
    event = TerminalEvent(
        id=f"{SITE}.1.0.2",
        seq=2,
        terminal="DOOR-01",
        event="door_forced",
        door=HOSTILE,
        detail=HOSTILE,
        **common,  # type: ignore[arg-type]
    )
    return RawRecordBatch(
        site=SITE,
        epoch=1,
        lane=0,
        first_seq=1,
        last_seq=2,
        records=[msgspec.Raw(encode(sale)), msgspec.Raw(encode(event))],
    )


async def signed_in(web, role: str) -> httpx.AsyncClient:
    http = web.dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, f"{role}-1")).status_code == 303
    return http


async def person_form(http: httpx.AsyncClient, form_id: str) -> dict[str, str]:
    page = (await http.get("/people/P1")).text
    values = {}
    for name in ("csrf", "request_id"):
        found = re.search(_FIELD.format(form=form_id, name=name), page, re.S)
        assert found, f"no {name} in form {form_id}"
        values[name] = found[1]
    return values


def assert_escaped(answer: httpx.Response, where: str) -> None:
    for raw in RAW:
        assert raw not in answer.text, f"{where}: {raw!r} is in the page unescaped"


async def test_hostile_text_in_every_form_field_is_stored_verbatim_and_rendered_escaped(web):
    store = web.dash.store
    imported = await web.dash.client().post(
        "/api/v1/imports/members?filename=m.csv",
        content=members_csv(),
        headers=web.bearer("operator"),
    )
    assert imported.status_code == 200, imported.text

    def setup(conn: sqlite3.Connection) -> int:
        ingest_batch(conn, SITE, site_records(), topic="t", now_ms=0, holders=store.holders)
        anomaly(conn, "negative_balance", site=SITE, at_ms=1, person_id="P1")
        return int(conn.execute("SELECT max(id) FROM anomalies").fetchone()[0])

    anomaly_id = await store.run(setup)
    http = await signed_in(web, "operator")
    answers: dict[str, httpx.Response] = {}
    # The person page's forms, each with its text fields hostile.
    fields = await person_form(http, "refund")
    answers["refund"] = await http.post(
        "/people/P1/refund",
        data={
            **fields,
            "original_id": SALE_ID,
            "refund_amount": "1.00",
            "refund_reason": HOSTILE,
            "confirm": "yes",
        },
    )
    fields = await person_form(http, "recharge")
    answers["recharge"] = await http.post(
        "/people/P1/recharge",
        data={
            **fields,
            "card_uid": ALICE,
            "amount": "2",
            "method": "bank",
            "pay_ref": HOSTILE_NOSPACE,
            "confirm": "yes",
        },
    )
    fields = await person_form(http, "card-op")
    answers["card-op"] = await http.post(
        "/people/P1/card-op",
        data={
            **fields,
            "op": "card.freeze",
            "card_uid": ALICE,
            "freeze_reason": HOSTILE,
            "confirm": "yes",
        },
    )
    csrf = await csrf_of(http, "/")
    answers["anomaly"] = await http.post(
        f"/anomalies/{anomaly_id}/acknowledge", data={"csrf": csrf, "note": HOSTILE}
    )
    # Refused input is echoed back in error pages: escaped too.
    answers["access"] = await http.post(
        f"/access/grant?site={SITE}",
        data={
            "csrf": csrf,
            "person": HOSTILE,
            "level": HOSTILE,
            "valid_to": HOSTILE[:10],
            "confirm": "yes",
        },
    )
    answers["card-op-bad-uid"] = await http.post(
        "/people/P1/card-op",
        data={**(await person_form(http, "card-op")), "op": HOSTILE, "card_uid": HOSTILE},
    )
    stranger = web.dash.client()
    answers["login"] = await sign_in(stranger, HOSTILE, HOSTILE)
    for name, answer in answers.items():
        assert answer.status_code < 500, (name, answer.status_code)
        assert_escaped(answer, f"POST {name}")
    for name in ("refund", "recharge", "card-op", "anomaly"):
        assert answers[name].status_code in {200, 303}, (name, answers[name].text[:500])

    # Every page that shows the stored text shows it escaped.
    pages = [
        "/",
        "/people",
        f"/people?q={HOSTILE}",
        "/people/P1",
        "/audit",
        "/anomalies",
        "/alerts",
        "/blacklist",
        f"/sites/{SITE}",
        f"/access?site={SITE}",
        "/attendance",
        "/attendance/people/P1",
        "/clearing",
        "/reconciliation",
        "/rollouts",
        f"/people/{HOSTILE}",
        f"/sites/{HOSTILE}",
    ]
    admin = await signed_in(web, "admin")
    shown = set()
    for path in pages:
        answer = await admin.get(path)
        assert answer.status_code < 500, (path, answer.status_code)
        assert_escaped(answer, f"GET {path}")
        if ESCAPED in answer.text:
            shown.add(path)
    # (Site-sent door names and details are stored; the site page lists record kinds only.)
    expected = {"/people/P1", "/audit", "/anomalies", f"/people?q={HOSTILE}"}
    assert expected <= shown, shown

    # Stored as typed: the quotes and comment marks are data, and nothing was dropped.
    def stored(conn: sqlite3.Connection) -> dict[str, object]:
        one = conn.execute
        return {
            "name": one(
                "SELECT json_extract(data, '$.name') FROM master"
                " WHERE entity = 'person' AND key = 'P1'"
            ).fetchone()[0],
            "notes": {row[0] for row in one("SELECT note FROM anomalies")},
            "tables": one("SELECT count(*) FROM sqlite_master WHERE name = 'ledger'").fetchone()[0],
        }

    found = await store.run(stored)
    assert found["name"] == HOSTILE
    assert HOSTILE in found["notes"]  # type: ignore[operator]
    assert found["tables"] == 1


def plant(browser: httpx.AsyncClient, name: str, value: str) -> None:
    """Set a cookie for the dashboard's host, as a script or a sibling site would."""
    browser.cookies.set(name, value, domain=browser.base_url.host, path="/")


async def test_cookies_planted_before_sign_in_are_replaced_and_give_the_attacker_nothing(web):
    # 1. The attacker's CSRF nonce (and the form token they read for it) planted in the
    #    victim's browser, with a session cookie of their choosing.
    attacker = web.dash.client()
    attacker_token = await csrf_of(attacker, "/login")
    planted_nonce = attacker.cookies[CSRF_COOKIE]
    victim = web.dash.client(**{"Accept-Language": "en"})
    plant(victim, CSRF_COOKIE, planted_nonce)
    plant(victim, SESSION_COOKIE, "v1.1.0.1795440000.1795440000." + "A" * 43)
    assert (await sign_in(victim, "admin-1")).status_code == 303
    session, nonce = victim.cookies[SESSION_COOKIE], victim.cookies[CSRF_COOKIE]
    assert nonce != planted_nonce and not session.endswith("A" * 43)
    assert (await victim.get("/audit")).status_code == 200  # the victim is the admin
    # The attacker's token does not pass for the victim's session, and the attacker's own
    # browser (same nonce) is not signed in.
    assert (await victim.post("/logout", data={"csrf": attacker_token})).status_code == 403
    assert (await attacker.get("/audit")).headers["location"].startswith("/login")
    assert (await victim.get("/audit")).status_code == 200  # still signed in

    # 2. The attacker's own live session planted: the victim browses as the attacker (the
    #    page says who), signs out and in as themselves - and the attacker's copy dies.
    spy = await signed_in(web, "auditor")
    planted = spy.cookies[SESSION_COOKIE]
    victim2 = web.dash.client(**{"Accept-Language": "en"})
    plant(victim2, SESSION_COOKIE, planted)
    assert "auditor-1" in (await victim2.get("/")).text
    out = await victim2.post("/logout", data={"csrf": await csrf_of(victim2, "/")})
    assert out.status_code == 303
    assert (await sign_in(victim2, "admin-1")).status_code == 303
    assert victim2.cookies[SESSION_COOKIE] != planted
    assert (await spy.get("/people")).headers["location"].endswith("m=expired")
    assert (await victim2.get("/audit")).status_code == 200


NESTED = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
JSON_ROUTES = [
    pytest.param("POST", "/api/v1/operations", id="operations"),
    pytest.param("PUT", "/api/v1/settings", id="settings"),
    pytest.param("POST", "/api/v1/anomalies/1", id="anomaly"),
]


@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_deeply_nested_json_is_a_400_on_every_json_route(web, method: str, path: str):
    # A JSON API must not answer 500 (or worse) to a body nested beyond the decoder's
    # recursion limit.
    deep_inside = {
        "/api/v1/operations": b'{"op": "money.recharge", "x": ' + NESTED + b"}",
        "/api/v1/settings": b'{"policy": ' + NESTED + b"}",
        "/api/v1/anomalies/1": b'{"state": "resolved", "note": ' + NESTED + b"}",
    }[path]
    before = await web.dash.audit()
    http = web.dash.client()
    for body in (NESTED, deep_inside):
        answer = await http.request(
            method,
            path,
            content=body,
            headers={**web.bearer("admin"), "Content-Type": "application/json"},
        )
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:200])
        assert answer.json()["error"]["code"] in {"bad_json", "invalid_request"}
    assert await web.dash.audit() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        *JSON_ROUTES,
        pytest.param("POST", "/api/v1/imports/members?filename=m.csv", id="import"),
        pytest.param("POST", "/api/v1/reconciliations", id="reconciliation"),
    ],
)
async def test_an_oversized_body_is_a_413_on_every_body_route(web, method: str, path: str):
    http = web.dash.client()
    answer = await http.request(
        method, path, content=b" " * (MAX_BODY + 1), headers=web.bearer("admin")
    )
    assert answer.status_code == 413, (path, answer.status_code)
    assert answer.json()["error"]["code"] == "too_large"
