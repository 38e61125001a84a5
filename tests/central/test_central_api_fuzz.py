"""Fuzzing HQ's JSON API from its own OpenAPI document (schemathesis): every operation of
``/api/v1/openapi.json``, with generated parameters and bodies, against the real dashboard
server (uvicorn on a free loopback port) over a real SQLite store seeded with people, cards
and an anomaly, called with an admin token. No answer may be a 500, and every answer must
match the document (status, content type, headers, body schema)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from stores import central_db, open_store

from central import master, openapi, queries, users
from central.ingest import anomaly
from central.web.app import dashboard_server

SEED = {
    "persons": [
        {"id": "P1", "name": "王小明", "number": "S-1001"},
        {"id": "P2", "name": "Li Lei", "number": "M-2002", "kind": "member"},
    ],
    "cards": [
        {"uid": "04A1B2C3D4E5F6", "person_id": "P1"},
        {"uid": "04B1B2B3B4B5B6", "person_id": "P2"},
    ],
    "accounts": [{"person_id": "P1", "cash_fen": 10_000}, {"person_id": "P2", "cash_fen": 500}],
}
#: Examples per operation: enough to reach every parameter and body shape, bounded in time.
EXAMPLES = 25
#: The admin token: schemathesis sets it on cases while collecting them, before the server
#: (which stores its digest as ``token add`` does) is up.
TOKEN = "oc_" + secrets.token_urlsafe(32)


@dataclass
class Served:
    base: str
    server: object

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The dashboard (with the API) on its own event loop in a thread: schemathesis calls it
    with blocking ``requests``."""
    db = central_db(tmp_path_factory.mktemp("fuzz"))
    ready = threading.Event()
    running: list[Served] = []
    failure: list[BaseException] = []

    async def serve() -> None:
        async with open_store(db) as store:

            def seed(conn: sqlite3.Connection) -> None:
                master.apply_seed(conn, msgspec.convert(SEED, master.CentralSeed), batch="fuzz")
                for site in ("SZ-FUTIAN", "BJ-CHAOYANG"):
                    master.register_site(conn, site)
                anomaly(conn, "negative_balance", site="SZ-FUTIAN", at_ms=1, person_id="P1")
                anomaly(conn, "seq_gap", site="BJ-CHAOYANG", at_ms=2, first=5, last=9)
                conn.execute(
                    "INSERT INTO api_tokens (name, role, digest, created_ms) VALUES (?, ?, ?, 0)",
                    ("fuzz-admin", "admin", queries.token_digest(TOKEN)),
                )

            await store.run(seed)
            secret = await store.run(users.web_key)
            sock = socket.create_server(("127.0.0.1", 0))
            # As `onecard-central serve --http` composes it (the log tails without a broker).
            server = dashboard_server(store, "127.0.0.1", 0, secret_key=secret)
            base = f"http://127.0.0.1:{sock.getsockname()[1]}"
            running.append(Served(base, server))
            ready.set()
            await server.serve(sockets=[sock])

    def main() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=main, name="fuzzed-api")
    thread.start()
    assert ready.wait(20), "the API did not start"
    if failure:
        raise failure[0]
    try:
        yield running[0]
    finally:
        running[0].server.should_exit = True  # type: ignore[attr-defined]
        thread.join(20)
        assert not thread.is_alive()


#: The document the server serves (checked below), loaded without a server so that pytest
#: can list one test per operation.
schema = schemathesis.openapi.from_dict(openapi.document())


def test_the_served_document_is_the_one_fuzzed(served):
    answer = requests.get(f"{served.base}/api/v1/openapi.json", headers=served.auth, timeout=10)
    assert answer.status_code == 200
    assert answer.json() == openapi.document()


@schema.auth()
class AdminToken:
    """Every call carries the admin token; schemathesis also calls without it, expecting
    401 (``ignored_auth``)."""

    def get(self, _case: schemathesis.Case, _ctx: object) -> str:
        return TOKEN

    def set(self, case: schemathesis.Case, data: str, _ctx: object) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


#: One test per operation, by name: schemathesis' own ``parametrize`` gives its items one
#: shared id, and the suite's two workers (pytest-xdist) would run only one of them.
OPERATIONS = sorted(
    (result.ok().method.upper(), result.ok().path) for result in schema.get_all_operations()
)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_operation_answers_500_or_off_its_document(method: str, path: str, served) -> None:
    operation = schema[path][method]

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: schemathesis.Case) -> None:
        with requests.Session() as session:
            # Every check but one: a request the document allows may still be refused for
            # what no schema can say (a statement that is not a statement, a reused id).
            case.call_and_validate(
                base_url=served.base, session=session, excluded_checks=[positive_data_acceptance]
            )

    fuzz()


@pytest.mark.parametrize(
    "bad",
    [
        # Found by fuzzing: each was a 500 before it was checked at the boundary.
        ("POST", "/api/v1/anomalies/2129708557689442829074432", {"state": "open"}, 404, "no "),
        ("GET", "/api/v1/clearing?day=0001-01-01", None, 400, "day must be from 1970-01-01"),
        ("GET", "/api/v1/settlement?from=9999-12-31&to=9999-12-31", None, 400, "from must be"),
        ("GET", "/api/v1/audit?before_id=" + "9" * 30, None, 400, "before_id must be a 64-bit"),
        ("POST", "/api/v1/reconciliations?grace_minutes=" + "9" * 12, b"", 400, "grace_minutes"),
        # Accepted silently before: now refused, naming the parameter.
        ("GET", "/api/v1/anomalies?state=AAA", None, 400, "state must be one of"),
        ("GET", "/api/v1/audit?outcome=maybe", None, 400, "outcome must be one of"),
        ("GET", "/api/v1/clearing?day=2026-11-27&format=", None, 400, "format must be one of"),
        ("POST", "/api/v1/imports/members?dry_run=perhaps", b"", 400, "dry_run must be one of"),
        ("PUT", "/api/v1/settings", {"policy": {"cancel_fee_fen": -1}}, 400, "cancel_fee_fen"),
        ("PUT", "/api/v1/settings", {"policy": {"recharge_cap_fen": 0}}, 400, "at least 1"),
        ("PUT", "/api/v1/settings", {"card_types": [{"name": " "}]}, 400, "card type name"),
        (
            "PUT",
            "/api/v1/settings",
            {"card_types": [{"name": "x", "deposit_fen": -5}]},
            400,
            "0 to",
        ),
        # Unknown routes and methods answer in the API's error shape.
        ("GET", "/api/v1/persons/%0Anobody", None, 404, "no person"),
        ("DELETE", "/api/v1/settings", None, 405, "DELETE is not allowed"),
    ],
    ids=lambda bad: f"{bad[0]} {bad[1][:48]} {str(bad[2])[:40]}",
)
def test_bad_input_gets_a_specific_4xx_and_changes_nothing(
    served: Served, bad: tuple[str, str, object, int, str]
) -> None:
    method, url, body, status, fragment = bad
    before = requests.get(f"{served.base}/api/v1/settings", headers=served.auth, timeout=10).json()
    kwargs: dict[str, object] = {"json": body} if isinstance(body, dict) else {"data": body}
    answer = requests.request(method, served.base + url, headers=served.auth, timeout=10, **kwargs)
    assert answer.status_code == status, answer.text
    assert fragment in answer.json()["error"]["message"]
    after = requests.get(f"{served.base}/api/v1/settings", headers=served.auth, timeout=10).json()
    assert after == before
