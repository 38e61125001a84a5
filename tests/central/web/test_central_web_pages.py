"""The dashboard's pages over real HTTP: who may see what, the navigation, the overview of
sites, the audit log with filters and pages, the two languages, the API beside them."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from web_harness import sign_in

from central import finance, master, queries
from central.core.clearing import SiteDay


async def signed_in(dash, username: str, **headers: str):
    http = dash.client(**headers)
    assert (await sign_in(http, username)).status_code == 303
    return http


async def test_no_page_answers_without_a_session(dash):
    http = dash.client()
    for path in ("/", "/audit"):
        answer = await http.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"].startswith("/login")
    assert (await http.get("/login")).status_code == 200
    assert (await http.get("/static/app.css")).status_code == 200


async def test_a_technician_cannot_see_the_audit_log_and_is_told_why(dash):
    http = await signed_in(dash, "technician-1", **{"Accept-Language": "en"})
    overview = await http.get("/")
    assert 'href="/audit"' not in overview.text
    denied = await http.get("/audit")
    assert denied.status_code == 403
    assert "Your role (Technician) may not open this page." in denied.text
    assert dash.stats["page_forbidden"] == 1


async def test_an_auditor_and_an_admin_see_the_audit_log_in_their_navigation(dash):
    for username in ("auditor-1", "admin-1"):
        http = await signed_in(dash, username)
        overview = await http.get("/")
        assert 'href="/audit"' in overview.text
        assert (await http.get("/audit")).status_code == 200
    for username in ("operator-1", "finance-1"):
        http = await signed_in(dash, username)
        assert (await http.get("/audit")).status_code == 403


async def test_the_overview_shows_each_site_state_and_lag(dash):
    birth = {
        "terminals": [
            {"id": "POS-1", "kind": "pos", "online": True},
            {"id": "POS-2", "kind": "pos", "online": False},
        ]
    }

    def setup(conn):
        master.change_blacklist(conn, [], at=datetime.now(UTC))
        master.change_blacklist(conn, [], at=datetime.now(UTC))
        conn.execute(
            "UPDATE sites SET online = 1, last_seen_ms = ?, version = '0.3.1', outbox_depth = 42,"
            " outbox_oldest_age_s = 300, feed_version = 0, blacklist_version = 1, state = ?"
            " WHERE id = 'SZ-FUTIAN'",
            (int(dash.clock.now * 1000) - 90_000, msgspec.json.encode(birth)),
        )
        conn.execute(
            "INSERT INTO anomalies (at_ms, kind, site, detail) VALUES (0, 'clock_skew',"
            " 'SZ-FUTIAN', '{}')"
        )

    await dash.store.run(setup)
    http = await signed_in(dash, "technician-1", **{"Accept-Language": "en"})
    page = (await http.get("/")).text
    assert "1 of 2 sites online · blacklist v2" in page
    row = page[page.index('data-site="SZ-FUTIAN"') :].split("</tr>")[0]
    assert "Online" in row and "1 min ago" in row and "0.3.1" in row
    assert "42" in row and "oldest 5 min" in row
    assert "1 behind" in row  # blacklist v1 of 2
    assert "1/2" in row  # terminals
    never = page[page.index('data-site="BJ-CHAOYANG"') :].split("</tr>")[0]
    assert "Never connected" in never and "2 behind" in never


async def test_the_audit_log_filters_and_pages(dash):
    def fill(conn):
        for n in range(120):
            queries.add_token(conn, f"t{n}", "auditor", operator=f"op{n % 2}")

    await dash.store.run(fill)
    http = await signed_in(dash, "auditor-1", **{"Accept-Language": "en"})
    first = await http.get("/audit", params={"action": "token.add", "operator": "op1"})
    assert first.status_code == 200
    assert first.text.count("<tr data-id=") == 50
    assert "op0" not in first.text
    assert "token:t119" in first.text
    older = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    older = older.replace("&amp;", "&")
    assert "before=" in older and "operator=op1" in older
    second = await http.get(older)
    assert second.text.count("<tr data-id=") == 10
    assert 'rel="next"' not in second.text
    assert "← Newest" in second.text
    none = await http.get("/audit", params={"target": "card:nope"})
    assert "No entries match." in none.text


async def test_the_audit_log_shows_times_in_hq_zone_and_amounts_in_yuan(dash):
    def setup(conn):
        finance.set_clearing_config(conn, SiteDay(timezone="Asia/Tokyo"), operator="admin-1")
        conn.execute(
            "INSERT INTO audit (at_ms, operator, source, action, target, outcome, before,"
            " after) VALUES (?, 'op', 'hq:api', 'money.recharge', 'card:04A1', 'accepted',"
            " ?, ?)",
            (
                1_700_000_000_000,  # 2023-11-14 22:13:20 UTC
                '{"cash_fen": 1000}',
                '{"cash_fen": 21050, "status": "active"}',
            ),
        )

    await dash.store.run(setup)
    http = await signed_in(dash, "admin-1", **{"Accept-Language": "en"})
    page = (await http.get("/audit", params={"action": "money.recharge"})).text
    assert "2023-11-15 07:13:20" in page  # Tokyo
    assert "¥10.00" in page and "¥210.50" in page
    assert "Times in Asia/Tokyo" in page


async def test_the_language_follows_the_browser_and_can_be_switched(dash):
    http = dash.client(**{"Accept-Language": "en-GB,en;q=0.9,zh;q=0.5"})
    assert "Sign in" in (await http.get("/login")).text
    zh = dash.client(**{"Accept-Language": "zh-TW,zh;q=0.9,en;q=0.5"})
    page = await zh.get("/login")
    assert '<html lang="zh-CN">' in page.text and "登录" in page.text
    assert "一卡通总部" in (await dash.client().get("/login")).text  # no header: Chinese
    switched = await zh.get("/login", params={"lang": "en"})
    assert '<html lang="en">' in switched.text
    assert (await zh.get("/login")).text.count('<html lang="en">') == 1  # the cookie keeps it
    await sign_in(zh, "technician-1")
    denied = await zh.get("/audit", params={"lang": "zh-CN"})
    assert "您的角色（技术员）无权打开此页面。" in denied.text


async def test_pages_carry_security_headers_and_unknown_paths_a_page(dash):
    http = await signed_in(dash, "admin-1", **{"Accept-Language": "en"})
    page = await http.get("/")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    missing = await http.get("/no/such/page")
    assert missing.status_code == 404
    assert "There is no page at this address." in missing.text
    assert (await http.get("/logout")).status_code == 405


async def test_the_api_is_served_beside_the_pages(dash):
    token = await dash.store.run(lambda conn: queries.add_token(conn, "script", "auditor"))
    http = dash.client()
    answer = await http.get("/api/v1/audit", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    assert answer.json()["audit"][0]["action"] == "token.add"
    assert (await http.get("/api/v1/audit")).status_code == 401


async def test_every_page_renders_in_both_languages_for_every_role(dash):
    for username in ("admin-1", "operator-1", "finance-1", "technician-1", "auditor-1"):
        for lang in ("en", "zh-CN"):
            http = await signed_in(dash, username)
            for path in ("/", "/audit"):
                answer = await http.get(path, params={"lang": lang})
                assert answer.status_code in {200, 403}, (username, path)
                assert f'<html lang="{lang}">' in answer.text
