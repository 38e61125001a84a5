"""Signing in and out of the dashboard over real HTTP: passwords, throttling, CSRF, signed
session cookies (tampering, expiry, sliding), and the cookies' flags."""

from __future__ import annotations

import asyncio

from web_harness import PASSWORD, csrf_of, password_hash, sign_in

from central import users
from central.web.sessions import CSRF_COOKIE, SESSION_COOKIE


async def test_the_right_password_signs_in_and_opens_the_overview(dash):
    http = dash.client()
    answer = await sign_in(http, "operator-1")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie
    assert "Max-Age=28800" in cookie  # 8 h
    page = await http.get("/")
    assert page.status_code == 200
    assert "SZ-FUTIAN" in page.text and "Operator One" in page.text
    [line] = await dash.audit(action="user.login")
    assert (line["operator"], line["role"], line["source"], line["ip"], line["outcome"]) == (
        "operator-1",
        "operator",
        "hq:web",
        "127.0.0.1",
        "accepted",
    )
    assert dash.stats["login_ok"] == 1


async def test_a_username_is_matched_whatever_its_case(dash):
    http = dash.client()
    assert (await sign_in(http, "  Operator-1 ")).status_code == 303


async def test_a_wrong_password_or_unknown_user_is_refused_alike_and_audited(dash):
    http = dash.client(**{"Accept-Language": "en"})
    wrong = await sign_in(http, "operator-1", "not the password")
    unknown = await sign_in(http, "nobody", PASSWORD)
    for answer in (wrong, unknown):
        assert answer.status_code == 401
        assert "Wrong username or password." in answer.text
        assert SESSION_COOKIE not in answer.cookies
    assert (await http.get("/")).status_code == 303  # still signed out
    lines = await dash.audit(action="user.login")
    assert [(a["operator"], a["outcome"], a["reason_code"]) for a in lines] == [
        ("nobody", "rejected", "unknown_user"),
        ("operator-1", "rejected", "bad_password"),
    ]
    user = await dash.store.run(lambda conn: users.get_user(conn, "operator-1"))
    assert user.failed_logins == 1
    assert dash.stats["login_failed"] == 2


async def test_five_bad_passwords_lock_that_username_from_that_address(dash):
    http = dash.client(**{"Accept-Language": "en"})
    for _ in range(5):
        assert (await sign_in(http, "finance-1", "guess guess")).status_code == 401
    # Locked: even the right password is not looked at.
    locked = await sign_in(http, "finance-1", PASSWORD)
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) == 60
    assert "Too many failed sign-ins. Try again in 1 min." in locked.text
    # Other users from the same address are not locked.
    assert (await sign_in(dash.client(), "auditor-1")).status_code == 303
    # The lock doubles with each further failure once it has passed.
    dash.clock.advance(seconds=61)
    assert (await sign_in(http, "finance-1", "guess again")).status_code == 401
    assert int((await sign_in(http, "finance-1")).headers["retry-after"]) == 120
    dash.clock.advance(seconds=121)
    assert (await sign_in(http, "finance-1")).status_code == 303
    reasons = [a["reason_code"] for a in await dash.audit(target="user:finance-1")]
    assert reasons[:3] == [None, "throttled", "bad_password"]
    assert reasons.count("throttled") == 2
    assert dash.stats["login_throttled"] == 2


async def test_a_burst_of_parallel_guesses_cannot_outrun_the_count(dash):
    http = dash.client()
    token = await csrf_of(http)
    form = {"csrf": token, "username": "admin-1", "password": "guess guess"}
    answers = await asyncio.gather(*(http.post("/login", data=form) for _ in range(12)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(401) == 5  # only five passwords were ever checked
    assert codes.count(429) == 7


async def test_a_post_without_the_csrf_token_is_refused(dash):
    http = dash.client(**{"Accept-Language": "en"})
    await http.get("/login")  # has the CSRF cookie, not the token
    bare = await http.post("/login", data={"username": "admin-1", "password": PASSWORD})
    assert bare.status_code == 403
    assert "This form has expired or did not come from this dashboard." in bare.text
    forged = await http.post(
        "/login", data={"csrf": "x" * 43, "username": "admin-1", "password": PASSWORD}
    )
    assert forged.status_code == 403
    # A signed-in user's sign-out needs its token too.
    assert (await sign_in(http, "admin-1")).status_code == 303
    assert (await http.post("/logout")).status_code == 403
    assert (await http.post("/logout", data={"csrf": "nope"})).status_code == 403
    # The token of the anonymous form is not the session's.
    stale = await http.post("/logout", data={"csrf": await csrf_of(dash.client())})
    assert stale.status_code == 403
    assert (await http.get("/")).status_code == 200  # still signed in
    # A page that came from another browser (no CSRF cookie) is refused as well.
    other = dash.client()
    token = await csrf_of(http, "/")
    other.cookies.set(SESSION_COOKIE, http.cookies[SESSION_COOKIE])
    assert (await other.post("/logout", data={"csrf": token})).status_code == 403
    assert dash.stats["csrf_refused"] == 6
    assert not await dash.audit(action="user.logout")


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(dash):
    http = dash.client()
    await sign_in(http, "technician-1")
    copied = http.cookies[SESSION_COOKIE]
    token = await csrf_of(http, "/")
    out = await http.post("/logout", data={"csrf": token})
    assert out.status_code == 303
    assert out.headers["location"] == "/login?m=signed_out"
    assert (await http.get("/")).status_code == 303
    replay = dash.client()
    replay.cookies.set(SESSION_COOKIE, copied)
    assert (await replay.get("/")).headers["location"] == "/login?m=expired"
    [line] = await dash.audit(action="user.logout")
    assert (line["operator"], line["role"]) == ("technician-1", "technician")


async def test_a_tampered_session_cookie_is_refused(dash):
    http = dash.client()
    await sign_in(http, "auditor-1")
    good = http.cookies[SESSION_COOKIE]
    version, uid, gen, issued, seen, mac = good.split(".")
    admin = await dash.store.run(lambda conn: users.get_user(conn, "admin-1"))
    forged_cookies = [
        f"{version}.{admin.id}.{gen}.{issued}.{seen}.{mac}",  # someone else
        f"{version}.{uid}.{gen}.{issued}.{int(seen) + 3600}.{mac}",  # later expiry
        f"{version}.{uid}.{gen}.{issued}.{seen}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}",
        "garbage",
    ]
    for forged in forged_cookies:
        browser = dash.client()
        browser.cookies.set(SESSION_COOKIE, forged)
        answer = await browser.get("/audit")
        assert answer.status_code == 303, forged
        assert answer.headers["location"].startswith("/login")
        # The bad cookie is cleared.
        assert any(
            c.startswith(f"{SESSION_COOKIE}=") and "Max-Age=0" in c
            for c in answer.headers.get_list("set-cookie")
        )
    assert dash.stats["session_signature"] == 3
    assert dash.stats["session_malformed"] == 1


async def test_a_session_slides_with_use_and_ends_when_idle_or_too_old(dash):
    http = dash.client()
    await sign_in(http, "operator-1")
    first = http.cookies[SESSION_COOKIE]
    for _ in range(3):  # 21 h of use, a request every 7 h
        dash.clock.advance(hours=7)
        assert (await http.get("/")).status_code == 200
    assert http.cookies[SESSION_COOKIE] != first  # re-issued as it slid
    dash.clock.advance(hours=3)  # 24 h after sign-in: sign in again, however busy
    gone = await http.get("/")
    assert gone.headers["location"] == "/login?m=expired"
    assert dash.stats["session_expired"] == 1

    await sign_in(http, "operator-1")
    dash.clock.advance(hours=8, seconds=1)  # idle too long
    idle = await http.get("/", headers={"Accept-Language": "en"})
    assert idle.headers["location"] == "/login?m=expired"
    note = await http.get(idle.headers["location"], headers={"Accept-Language": "en"})
    assert "Your session has ended. Please sign in again." in note.text


async def test_a_changed_password_signs_the_user_out_everywhere(dash):
    http = dash.client()
    await sign_in(http, "finance-1")
    new = "a brand new secret"
    new_hash = await asyncio.to_thread(users.hash_password, new)
    await dash.store.run(
        lambda conn: users.set_password(
            conn, "finance-1", new_hash, operator="admin-1", source="hq:cli"
        )
    )
    assert (await http.get("/")).headers["location"] == "/login?m=expired"
    assert dash.stats["session_ended"] == 1
    assert (await sign_in(http, "finance-1", PASSWORD)).status_code == 401
    assert (await sign_in(http, "finance-1", new)).status_code == 303


async def test_a_disabled_user_is_signed_out_and_cannot_sign_in(dash):
    http = dash.client()
    await sign_in(http, "operator-1")
    await dash.store.run(
        lambda conn: users.disable_user(conn, "operator-1", operator="admin-1", source="hq:cli")
    )
    assert (await http.get("/")).status_code == 303
    refused = await sign_in(http, "operator-1")
    assert refused.status_code == 401
    assert SESSION_COOKIE not in refused.cookies
    [line] = await dash.audit(action="user.login", outcome="rejected")
    assert line["reason_code"] == "disabled"
    await dash.store.run(
        lambda conn: users.enable_user(conn, "operator-1", operator="admin-1", source="hq:cli")
    )
    assert (await sign_in(http, "operator-1")).status_code == 303


async def test_after_sign_in_the_user_goes_where_they_were_going_but_never_off_site(dash):
    http = dash.client()
    answer = await http.get("/audit?operator=x")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Faudit%3Foperator%3Dx"
    signed = await sign_in(http, "auditor-1", next="/audit?operator=x")
    assert signed.headers["location"] == "/audit?operator=x"
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        other = dash.client()
        assert (await sign_in(other, "auditor-1", next=evil)).headers["location"] == "/"


async def test_sign_in_starts_a_new_csrf_nonce(dash):
    http = dash.client()
    await http.get("/login")
    before = http.cookies[CSRF_COOKIE]
    await sign_in(http, "admin-1")
    assert http.cookies[CSRF_COOKIE] != before


async def test_the_password_hash_is_upgraded_when_its_parameters_were_lower(dash):
    cheap = users.hash_password("an old cheap one", n=2**12)
    await dash.store.run(
        lambda conn: users.set_password(conn, "admin-1", cheap, operator="t", source="test")
    )
    assert (await sign_in(dash.client(), "admin-1", "an old cheap one")).status_code == 303
    stored = await dash.store.run(
        lambda conn: conn.execute(
            "SELECT password_hash FROM users WHERE username = 'admin-1'"
        ).fetchone()[0]
    )
    assert not users.needs_rehash(stored)
    assert stored != password_hash()
