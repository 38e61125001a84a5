"""Who may do what, route by route, over real HTTP (the dashboard, the API, /metrics and the
log tails as ``onecard-central serve --http`` composes them, on a free loopback port).

:data:`EXPECTED` is the permission table, written out role by role rather than read from the
code it checks. The routes come from the running app (every page of ``PAGES`` and the log
pages, every API route, /metrics): a route without an entry fails
:func:`test_every_route_has_an_entry_in_the_permission_table`, so a new page or endpoint
cannot ship without someone deciding who may use it.

For each route and each role, and without a session or token: a role outside the entry gets
403 (a page: 403, or the sign-in page when nobody is signed in; the API: 401 without a
token), and a role inside it gets past the guard (whatever the handler then says about the
deliberately incomplete input). The tests after the matrix check that a refused change
changes nothing, that every form needs its CSRF token, that revoked tokens and sessions open
no API route, and that guessing is throttled.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import pytest
from starlette.routing import Route
from stores import central_db, open_store
from web_harness import Clock, Dash, csrf_of, password_hash, sign_in

from central import master, openapi, queries, users
from central.adapters.sqlite_store import CentralStore
from central.ingest import anomaly
from central.logtail import TailHub
from central.metrics import metrics_endpoint
from central.web.app import Dashboard, dashboard_server
from central.web.page import WebConfig

ROLES = users.ROLES
ALL = frozenset(ROLES)
#: Anyone, signed in or not.
PUBLIC = "public"
#: Without a token from the loopback address (a local Prometheus); from elsewhere, any token.
LOOPBACK_OR_TOKEN = "loopback or token"  # noqa: S105 - a table value, not a secret

_READERS = frozenset({"admin", "operator", "finance", "auditor"})
_MONEY = frozenset({"admin", "operator"})
_ANOMALIES = frozenset({"admin", "operator", "finance"})
_FINANCE_READ = frozenset({"admin", "finance", "auditor"})
_TAIL = frozenset({"admin", "technician"})
_DOORS = frozenset({"admin", "operator", "technician"})
_UPGRADES_READ = frozenset({"admin", "technician", "auditor"})

#: Who may use each route. A new route needs a line here (the first test says which).
EXPECTED: dict[tuple[str, str], frozenset[str] | str] = {
    # -- pages ---------------------------------------------------------------------------------
    ("GET", "/"): ALL,
    ("GET", "/live/overview"): ALL,
    ("GET", "/sites/{site}"): ALL,
    ("GET", "/live/sites/{site}"): ALL,
    ("GET", "/people"): _READERS,
    ("GET", "/people/{person_id}"): _READERS,
    ("POST", "/people/{person_id}/recharge"): _MONEY,
    ("POST", "/people/{person_id}/report-lost"): _MONEY,
    ("POST", "/people/{person_id}/card-op"): _MONEY,
    ("POST", "/people/{person_id}/refund"): _MONEY,
    ("POST", "/people/{person_id}/op/{op}"): _MONEY,
    ("POST", "/sites/{site}/doors/{door}/open"): _DOORS,
    ("GET", "/attendance"): _READERS,
    ("GET", "/attendance.csv"): _READERS,
    ("GET", "/attendance.xlsx"): _READERS,
    ("GET", "/attendance/people/{person_id}"): _READERS,
    ("POST", "/attendance/people/{person_id}/punch"): _MONEY,
    ("POST", "/attendance/people/{person_id}/leave"): _MONEY,
    ("GET", "/access"): frozenset({"admin", "operator", "auditor"}),
    ("POST", "/access/{action}"): _MONEY,
    ("GET", "/rollouts"): _UPGRADES_READ,
    ("GET", "/rollouts/{rollout_id}"): _UPGRADES_READ,
    ("POST", "/rollouts/{rollout_id}/{action}"): _TAIL,
    ("GET", "/reconciliation"): _FINANCE_READ,
    ("POST", "/reconciliation"): frozenset({"admin", "finance"}),
    ("GET", "/blacklist"): _READERS,
    ("GET", "/anomalies"): _READERS,
    ("POST", "/anomalies/{anomaly_id}/acknowledge"): _ANOMALIES,
    ("POST", "/anomalies/{anomaly_id}/resolve"): _ANOMALIES,
    ("GET", "/alerts"): ALL,
    ("POST", "/alerts/{alert_id}/acknowledge"): frozenset({"admin", "operator", "technician"}),
    ("GET", "/clearing"): _FINANCE_READ,
    ("GET", "/clearing.csv"): _FINANCE_READ,
    ("GET", "/audit"): frozenset({"admin", "auditor"}),
    ("GET", "/sites/{site}/logs"): _TAIL,
    ("GET", "/sites/{site}/logs/stream"): _TAIL,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("POST", "/logout"): ALL,
    ("GET", "/metrics"): LOOPBACK_OR_TOKEN,
    # -- the JSON API --------------------------------------------------------------------------
    ("GET", "/api/v1/openapi.json"): ALL,
    ("POST", "/api/v1/operations"): _MONEY,
    ("GET", "/api/v1/persons"): _READERS,
    ("GET", "/api/v1/persons/{person_id}"): _READERS,
    ("GET", "/api/v1/cards/{uid}"): _READERS,
    ("GET", "/api/v1/audit"): frozenset({"admin", "auditor"}),
    ("GET", "/api/v1/anomalies"): _READERS,
    ("POST", "/api/v1/anomalies/{anomaly_id}"): _ANOMALIES,
    ("POST", "/api/v1/imports/members"): _MONEY,
    ("GET", "/api/v1/clearing"): _FINANCE_READ,
    ("GET", "/api/v1/settlement"): _FINANCE_READ,
    ("POST", "/api/v1/reconciliations"): frozenset({"admin", "finance"}),
    ("GET", "/api/v1/settings"): _READERS,
    ("PUT", "/api/v1/settings"): frozenset({"admin"}),
    ("GET", "/api/v1/sites/{site}/logs"): _TAIL,
    ("POST", "/api/v1/sites/{site}/log-level"): _TAIL,
    ("POST", "/api/v1/sites/{site}/doors/{door}/open"): _DOORS,
    ("GET", "/api/v1/rollouts"): _UPGRADES_READ,
    ("GET", "/api/v1/rollouts/{rollout_id}"): _UPGRADES_READ,
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}"): _TAIL,
}

ALICE_CARD, BOB_CARD = "04A1B2C3D4E5F6", "04B1B2B3B4B5B6"
#: Values for path parameters (a new parameter needs one).
SAMPLES = {
    "site": "SZ-FUTIAN",
    "person_id": "P1",
    "uid": ALICE_CARD,
    "anomaly_id": "1",
    "alert_id": "1",
    "door": "DOOR-01",
    "op": "card.freeze",
    "rollout_id": "r-0.2.0",
    "action": "pause",
}
#: Query strings some reads need to get past their own checks.
QUERIES = {
    "/api/v1/clearing": "day=2026-11-27",
    "/api/v1/settlement": "from=2026-11-20&to=2026-11-27",
    "/api/v1/sites/{site}/logs": "follow=0",
}
#: Answers that stream (Server-Sent Events): only their status is read.
STREAMS = frozenset(
    {
        "/live/overview",
        "/live/sites/{site}",
        "/sites/{site}/logs/stream",
        "/api/v1/sites/{site}/logs",
    }
)


@dataclass
class Secured:
    dash: Dash
    tokens: dict[str, str]

    def client(self) -> httpx.AsyncClient:
        return self.dash.client(**{"Accept-Language": "en"})

    async def signed_in(self, role: str) -> httpx.AsyncClient:
        http = self.client()
        assert (await sign_in(http, f"{role}-1")).status_code == 303
        return http

    def bearer(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """The whole HTTP surface over a real store: a user and an API token per role, two sites,
    two people with cards and money, an open anomaly; the log tails without a broker."""
    clock = Clock()
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "王小明"}, {"id": "P2", "name": "Li Lei"}],
            "cards": [
                {"uid": ALICE_CARD, "person_id": "P1"},
                {"uid": BOB_CARD, "person_id": "P2"},
            ],
            "accounts": [{"person_id": "P1", "cash_fen": 10_000}],
        },
        master.CentralSeed,
    )

    def setup(conn: sqlite3.Connection) -> dict[str, str]:
        master.apply_seed(conn, seed, batch="t")
        for site in ("SZ-FUTIAN", "BJ-CHAOYANG"):
            master.register_site(conn, site)
        anomaly(conn, "negative_balance", site="SZ-FUTIAN", at_ms=1, person_id="P1")
        tokens = {}
        for role in ROLES:
            users.add_user(conn, f"{role}-1", role, password_hash(), operator="t", source="test")
            tokens[role] = queries.add_token(conn, f"{role}-token", role)
        return tokens

    async with open_store(central_db(tmp_path)) as store:
        tokens = await store.run(setup)
        secret = await store.run(users.web_key)
        sock = socket.create_server(("127.0.0.1", 0))
        throttle = users.ThrottlePolicy(per_ip=8)
        server = dashboard_server(
            store,
            "127.0.0.1",
            0,
            secret_key=secret,
            config=WebConfig(clock=clock, throttle=throttle),
            metrics=metrics_endpoint(store),
            logtail=TailHub(store),  # no broker: a permitted tail answers 503
        )
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        dash = Dash(store, f"http://127.0.0.1:{sock.getsockname()[1]}", clock, server.config.app)
        try:
            yield Secured(dash, tokens)
        finally:
            for http in dash.clients:
                await http.aclose()
            server.should_exit = True
            await serving


def served_routes(app: Dashboard) -> set[tuple[str, str]]:
    """Every (method, path) the dashboard server answers (HEAD aside; static files aside)."""
    found = {
        (method, route.path)
        for route in app.web.routes  # type: ignore[attr-defined]
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }
    api_routes: set[tuple[str, str]] = set()
    pending = [app.api]
    while pending:  # the API app, the apps it mounts, and those it passes requests on to
        app_ = pending.pop()
        fallback = getattr(getattr(app_, "router", None), "default", None)
        if getattr(fallback, "routes", None):  # central.api.in_front
            pending.append(fallback)
        for route in getattr(app_, "routes", ()):
            if isinstance(route, Route):
                api_routes |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
            elif hasattr(route, "app"):
                pending.append(route.app)
    if app.metrics is not None:
        found.add(("GET", "/metrics"))
    return found | api_routes


def url_of(path: str) -> str:
    url = path
    for name, value in SAMPLES.items():
        url = url.replace("{" + name + "}", value)
    assert "{" not in url, f"add a sample value for the parameter of {path} to SAMPLES"
    query = QUERIES.get(path)
    return f"{url}?{query}" if query else url


async def call(
    http: httpx.AsyncClient, method: str, path: str, *, csrf: str | None, headers: dict[str, str]
) -> httpx.Response:
    """One request as a browser or a program would send it, with an incomplete body."""
    kwargs: dict[str, object] = {"headers": headers}
    if method in {"POST", "PUT"}:
        if path.startswith("/api/"):
            kwargs["json"] = {}
        else:
            kwargs["data"] = {"csrf": csrf} if csrf else {}
    if path in STREAMS:
        async with http.stream(method, url_of(path), **kwargs) as answer:  # type: ignore[arg-type]
            if not answer.headers.get("content-type", "").startswith("text/event-stream"):
                await answer.aread()  # an error page or JSON error, not the endless stream
            return answer
    return await http.request(method, url_of(path), **kwargs)  # type: ignore[arg-type]


def to_sign_in(answer: httpx.Response) -> bool:
    """Whether the guard sent the browser to sign in (sign-out's own redirect aside)."""
    location = answer.headers.get("location", "") if answer.status_code == 303 else ""
    return location.startswith("/login") and "m=signed_out" not in location


async def test_every_route_has_an_entry_in_the_permission_table(secured):
    routes = served_routes(secured.dash.app)
    missing = sorted(routes - set(EXPECTED))
    assert not missing, f"add these routes to EXPECTED (who may use them?): {missing}"
    gone = sorted(set(EXPECTED) - routes)
    assert not gone, f"EXPECTED names routes the server no longer answers: {gone}"


def test_the_api_document_names_the_roles_of_the_permission_table():
    for (method, path), doc in openapi.endpoints().items():
        assert doc.roles == EXPECTED[(method, path)], (method, path)


async def test_each_role_reaches_only_its_routes_and_nobody_without_a_session_or_token(secured):
    # Sign-out ends the session: it goes last. (A route without an entry fails the test above.)
    routes = sorted(
        set(EXPECTED) & served_routes(secured.dash.app), key=lambda r: (r == ("POST", "/logout"), r)
    )
    wrong: list[str] = []
    for role in (None, *ROLES):
        http = await secured.signed_in(role) if role else secured.client()
        csrf = await csrf_of(http, "/" if role else "/login")
        for method, path in routes:
            allowed = EXPECTED[(method, path)]
            api = path.startswith("/api/")
            headers = secured.bearer(role) if api and role else {}
            answer = await call(http, method, path, csrf=csrf, headers=headers)
            if allowed in {PUBLIC, LOOPBACK_OR_TOKEN}:
                refused = answer.status_code in {401, 403} and path != "/login"
                ok = not refused and not to_sign_in(answer)
            elif role is not None and role in allowed:
                ok = answer.status_code not in {401, 403} and not to_sign_in(answer)
            elif api:
                ok = answer.status_code == (403 if role else 401)
                code = "forbidden" if role else "unauthenticated"
                ok = ok and answer.json()["error"]["code"] == code
            else:
                ok = answer.status_code == 403 if role else to_sign_in(answer)
            if not ok:
                wrong.append(f"{role or 'anonymous'} {method} {path} -> {answer.status_code}")
    assert not wrong, "\n".join(wrong)


async def test_every_form_post_without_its_csrf_token_is_refused_and_does_nothing(secured):
    http = await secured.signed_in("admin")
    foreign = await csrf_of(secured.client(), "/login")  # another browser's (anonymous) token
    audit_before = len(await secured.dash.audit())
    posts = [
        (m, p)
        for m, p in served_routes(secured.dash.app)
        if m == "POST" and not p.startswith("/api/")
    ]
    assert ("POST", "/people/{person_id}/recharge") in posts
    for method, path in posts:
        for form in ({}, {"csrf": "x" * 43}, {"csrf": foreign}):
            answer = await http.request(method, url_of(path), data=form)
            assert answer.status_code == 403, (path, form)
    assert len(await secured.dash.audit()) == audit_before
    assert (await http.get("/")).status_code == 200  # still signed in: sign-out did not run


async def balances_and_lists(store: CentralStore) -> tuple[object, ...]:
    def read(conn: sqlite3.Connection) -> tuple[object, ...]:
        return tuple(
            conn.execute(sql).fetchall()
            for sql in (
                "SELECT * FROM ledger ORDER BY id",
                "SELECT * FROM blacklist ORDER BY uid",
                "SELECT scope, entity, key, data FROM master ORDER BY scope, entity, key",
                "SELECT id, state, note FROM anomalies ORDER BY id",
                "SELECT key, value FROM settings ORDER BY key",
                # What was done (sign-ins aside: the tests sign in).
                "SELECT count(*) FROM audit WHERE outcome = 'accepted' AND action != 'user.login'",
            )
        )

    return await store.run(read)


async def person_form(http: httpx.AsyncClient, person: str) -> tuple[str, str]:
    """The CSRF token and a request id of a person page's forms (as an operator sees it)."""
    page = (await http.get(f"/people/{person}")).text
    csrf = page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    rid = page.split('name="request_id" value="', 1)[1].split('"', 1)[0]
    return csrf, rid


async def test_a_technician_cannot_recharge_nor_finance_report_lost_and_nothing_changes(secured):
    store = secured.dash.store
    before = await balances_and_lists(store)
    operator = await secured.signed_in("operator")
    csrf_op, rid = await person_form(operator, "P1")
    recharge_form = {
        "request_id": rid,
        "card_uid": ALICE_CARD,
        "amount": "50",
        "method": "cash",
        "confirm": "yes",
    }
    lost_form = {"request_id": rid + "-lost", "card_uid": BOB_CARD, "confirm": "yes"}
    recharge_op = {
        "op": "money.recharge",
        "request_id": "sec-r1",
        "card_uid": ALICE_CARD,
        "amount_fen": 5000,
        "method": "cash",
    }
    lost_op = {"op": "card.report_lost", "request_id": "sec-l1", "card_uid": BOB_CARD}
    for role, path, form, op in (
        ("technician", "/people/P1/recharge", recharge_form, recharge_op),
        ("finance", "/people/P2/report-lost", lost_form, lost_op),
        ("auditor", "/people/P1/recharge", recharge_form, recharge_op),
        ("auditor", "/people/P2/report-lost", lost_form, lost_op),
    ):
        http = await secured.signed_in(role)
        csrf = await csrf_of(http, "/")
        page = await http.post(path, data={**form, "csrf": csrf})
        assert page.status_code == 403, (role, path)
        api = await http.post("/api/v1/operations", json=op, headers=secured.bearer(role))
        assert api.status_code == 403, (role, op["op"])
    assert await balances_and_lists(store) == before
    # The same requests from an operator are applied: the refusals were the roles.
    done = await operator.post("/people/P1/recharge", data={**recharge_form, "csrf": csrf_op})
    assert done.status_code == 200, done.text
    lost = await operator.post(
        "/api/v1/operations", json=lost_op, headers=secured.bearer("operator")
    )
    assert lost.status_code == 200 and lost.headers["blacklist-version"] == "1"


async def test_an_auditor_changes_nothing_through_any_route(secured):
    store = secured.dash.store
    before = await balances_and_lists(store)
    http = await secured.signed_in("auditor")
    csrf = await csrf_of(http, "/")
    bodies = {
        "/api/v1/operations": {
            "op": "money.recharge",
            "request_id": "aud-1",
            "card_uid": ALICE_CARD,
            "amount_fen": 100,
            "method": "cash",
        },
        "/api/v1/anomalies/{anomaly_id}": {"state": "resolved", "note": "x"},
        "/api/v1/settings": {"policy": {"recharge_cap_fen": 1}},
    }
    writes = [
        (m, p)
        for m, p in served_routes(secured.dash.app)
        if m in {"POST", "PUT", "DELETE", "PATCH"} and p not in {"/login", "/logout"}
    ]
    for method, path in writes:
        if path.startswith("/api/"):
            answer = await http.request(
                method, url_of(path), json=bodies.get(path, {}), headers=secured.bearer("auditor")
            )
        else:
            form = {"csrf": csrf, "note": "x", "confirm": "yes", "card_uid": ALICE_CARD}
            answer = await http.request(method, url_of(path), data=form)
        assert answer.status_code == 403, (method, path)
    assert await balances_and_lists(store) == before


async def test_a_revoked_token_or_a_session_cookie_opens_no_api_route(secured):
    store = secured.dash.store
    await store.run(lambda conn: queries.revoke_token(conn, "admin-token"))
    admin = await secured.signed_in("admin")  # a live dashboard session: not an API credential
    api_routes = [(m, p) for m, p in served_routes(secured.dash.app) if p.startswith("/api/")]
    for method, path in api_routes:
        revoked = await call(admin, method, path, csrf=None, headers=secured.bearer("admin"))
        assert revoked.status_code == 401, (method, path)
        cookie_only = await call(admin, method, path, csrf=None, headers={})
        assert cookie_only.status_code == 401, (method, path)
    # /metrics from another address: any active token, not a revoked one, not none.
    transport = httpx.ASGITransport(app=secured.dash.app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://hq") as remote:
        assert (await remote.get("/metrics")).status_code == 401
        assert (await remote.get("/metrics", headers=secured.bearer("admin"))).status_code == 401
        live = await remote.get("/metrics", headers=secured.bearer("technician"))
        assert live.status_code == 200


async def test_a_disabled_users_session_opens_nothing(secured):
    http = await secured.signed_in("operator")
    assert (await http.get("/people")).status_code == 200
    await secured.dash.store.run(
        lambda conn: users.disable_user(conn, "operator-1", operator="admin-1", source="test")
    )
    for method, path in sorted(served_routes(secured.dash.app)):
        allowed = EXPECTED.get((method, path), ALL)
        if allowed in {PUBLIC, LOOPBACK_OR_TOKEN} or path.startswith("/api/"):
            continue
        answer = await call(http, method, path, csrf=None, headers={})
        assert to_sign_in(answer) or answer.status_code == 403, (method, path)


async def test_guessing_many_usernames_from_one_address_is_throttled(secured):
    # per_ip=8 here (50 by default): an address guessing across accounts is locked out,
    # and then even a right password from it is not looked at.
    http = secured.client()
    for n in range(8):
        assert (await sign_in(http, f"nobody-{n}", "guess guess")).status_code == 401
    locked = await sign_in(http, "admin-1")
    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert secured.dash.stats["login_throttled"] == 1
    refused = await secured.dash.audit(action="user.login", outcome="rejected")
    assert [a["reason_code"] for a in refused].count("throttled") == 1
