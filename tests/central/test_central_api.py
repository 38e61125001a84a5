"""HQ's JSON API over real HTTP (uvicorn on a free loopback port) and a real SQLite store:
tokens and roles, operations with idempotency, reads, anomalies, settings, bad input."""

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
from stores import central_db, open_store

from central import master, queries
from central.adapters.sqlite_store import CentralStore
from central.api import MAX_BODY, api_server
from central.ingest import anomaly

ALICE = "04A1B2C3D4E5F6"


@dataclass
class Api:
    store: CentralStore
    http: httpx.AsyncClient
    tokens: dict[str, str]
    stats: dict[str, int]

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "王小明", "number": "S-1001"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 1000}],
        },
        master.CentralSeed,
    )
    async with open_store(central_db(tmp_path)) as store:
        await store.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
        tokens = {}
        for role in queries.ROLES:
            tokens[role] = await store.run(
                lambda conn, role=role: queries.add_token(conn, f"{role}-1", role)
            )
        # A socket bound and listening before the server starts: requests wait in its
        # backlog until uvicorn accepts them.
        sock = socket.create_server(("127.0.0.1", 0))
        server = api_server(store, "127.0.0.1", 0)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base) as http:
            yield Api(store, http, tokens, server.config.app.state.api.stats)
        server.should_exit = True
        await serving


def recharge(rid: str, amount: int = 500, **extra: object) -> dict[str, object]:
    return {
        "op": "money.recharge",
        "request_id": rid,
        "card_uid": ALICE,
        "amount_fen": amount,
        "method": "cash",
        **extra,
    }


async def test_without_a_valid_token_nothing_is_answered(api):
    assert (await api.http.get("/api/v1/persons/P1")).status_code == 401
    bad = await api.http.get("/api/v1/persons/P1", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "unauthenticated"
    await api.store.run(lambda conn: queries.revoke_token(conn, "operator-1"))
    revoked = await api.http.post(
        "/api/v1/operations", json=recharge("r1"), headers=api.auth("operator")
    )
    assert revoked.status_code == 401
    assert api.stats["api_error_unauthenticated"] == 3


async def test_roles_decide_what_a_token_may_do(api):
    for role in ("technician", "auditor", "finance"):
        denied = await api.http.post(
            "/api/v1/operations", json=recharge(f"r-{role}"), headers=api.auth(role)
        )
        assert denied.status_code == 403, role
    assert (await api.http.get("/api/v1/audit", headers=api.auth("operator"))).status_code == 403
    assert (
        await api.http.get("/api/v1/persons/P1", headers=api.auth("technician"))
    ).status_code == 403
    assert (await api.http.get("/api/v1/audit", headers=api.auth("auditor"))).status_code == 200


async def test_an_operation_is_applied_once_and_audited_under_the_token(api):
    body = recharge("r-1", operator="someone-else", source="hq:forged")
    first = await api.http.post("/api/v1/operations", json=body, headers=api.auth("operator"))
    again = await api.http.post("/api/v1/operations", json=body, headers=api.auth("operator"))
    assert first.status_code == again.status_code == 200
    assert first.json()["outcome"] == "accepted"
    assert first.content == again.content
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    person = (await api.http.get("/api/v1/persons/P1", headers=api.auth("operator"))).json()
    assert person["balance"]["cash_fen"] == 1500  # once
    assert person["ledger"][0]["kind"] == "recharge"
    audit = (
        await api.http.get("/api/v1/audit?action=money.recharge", headers=api.auth("auditor"))
    ).json()["audit"]
    assert [(a["operator"], a["role"], a["source"], a["ip"]) for a in audit] == [
        ("operator-1", "operator", "hq:api", "127.0.0.1")
    ]
    other = await api.http.post(
        "/api/v1/operations", json=recharge("r-1", 900), headers=api.auth("operator")
    )
    assert other.status_code == 422
    assert other.json()["reason_code"] == "request_id_reused"


async def test_a_refusal_is_422_with_its_reason(api):
    lost_card = {"op": "money.recharge", "request_id": "r-x", "card_uid": "04FFFFFFFF",
                 "amount_fen": 100, "method": "cash"}  # fmt: skip
    refused = await api.http.post("/api/v1/operations", json=lost_card, headers=api.auth("admin"))
    assert refused.status_code == 422
    assert refused.json() == {
        "outcome": "rejected",
        "request_id": "r-x",
        "reason_code": "card_unknown",
        "message": "no card 04FFFFFFFF",
    }
    assert api.stats["operations_rejected"] == 1


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b'{"op": "money.steal", "request_id": "r"}', "invalid_request", "money.steal"),
        (
            (
                b'{"op": "money.recharge", "request_id": "r", "card_uid": "04A1B2C3D4E5F6",'
                b' "amount_fen": "12.50", "method": "cash"}'
            ),
            "invalid_request",
            "amount_fen",
        ),
        (
            (
                b'{"op": "money.recharge", "request_id": "r", "card_uid": "04A1B2C3D4E5F6",'
                b' "amount_fen": 100, "method": "cash", "tip": 1}'
            ),
            "invalid_request",
            "tip",
        ),
    ],
)
async def test_bad_input_gets_a_specific_error_is_counted_and_changes_nothing(
    api, body, code, needle
):
    answer = await api.http.post("/api/v1/operations", content=body, headers=api.auth("admin"))
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == code
    assert needle in answer.json()["error"]["message"]
    assert api.stats[f"api_error_{code}"] == 1
    rows = await api.store.run(
        lambda conn: conn.execute("SELECT count(*) FROM op_results").fetchone()
    )
    assert rows == (0,)


async def test_an_oversized_body_is_refused(api):
    answer = await api.http.post(
        "/api/v1/operations", content=b" " * (MAX_BODY + 1), headers=api.auth("admin")
    )
    assert answer.status_code == 413


async def test_people_are_found_by_name_number_and_card(api):
    for q in ("小明", "S-1001", ALICE.lower(), "P1"):
        found = await api.http.get("/api/v1/persons", params={"q": q}, headers=api.auth("finance"))
        assert [p["id"] for p in found.json()["persons"]] == ["P1"], q
    card = await api.http.get(f"/api/v1/cards/{ALICE}", headers=api.auth("finance"))
    assert card.json()["person_id"] == "P1" and card.json()["blacklist"] is None
    missing = await api.http.get("/api/v1/persons/NOPE", headers=api.auth("finance"))
    assert missing.status_code == 404


async def test_an_anomaly_is_acknowledged_then_resolved_once(api):
    def raise_one(conn: sqlite3.Connection) -> int:
        anomaly(conn, "negative_balance", site="SZ-FUTIAN", at_ms=1, person_id="P1")
        return int(conn.execute("SELECT max(id) FROM anomalies").fetchone()[0])

    aid = await api.store.run(raise_one)
    url = f"/api/v1/anomalies/{aid}"
    ack = await api.http.post(url, json={"state": "acknowledged"}, headers=api.auth("finance"))
    assert ack.json()["state"] == "acknowledged" and ack.json()["acted_by"] == "finance-1"
    done = await api.http.post(
        url, json={"state": "resolved", "note": "paid at desk"}, headers=api.auth("operator")
    )
    assert done.json()["state"] == "resolved" and done.json()["note"] == "paid at desk"
    again = await api.http.post(url, json={"state": "acknowledged"}, headers=api.auth("admin"))
    assert again.status_code == 409
    listed = await api.http.get("/api/v1/anomalies?state=resolved", headers=api.auth("auditor"))
    assert [a["id"] for a in listed.json()["anomalies"]] == [aid]
    audit = await api.http.get(
        "/api/v1/audit?target=anomaly:" + str(aid), headers=api.auth("auditor")
    )
    assert [a["action"] for a in audit.json()["audit"]] == [
        "anomaly.resolve",
        "anomaly.acknowledge",
    ]


async def test_only_an_admin_changes_settings_and_it_is_audited(api):
    change = {"card_types": [{"name": "standard", "deposit_fen": 2000}]}
    denied = await api.http.put("/api/v1/settings", json=change, headers=api.auth("operator"))
    assert denied.status_code == 403
    done = await api.http.put("/api/v1/settings", json=change, headers=api.auth("admin"))
    assert done.json()["card_types"] == [{"name": "standard", "deposit_fen": 2000}]
    issue = {"op": "card.issue", "request_id": "i-1", "card_uid": "04C0FFEE", "person_id": "P1"}
    refused = await api.http.post("/api/v1/operations", json=issue, headers=api.auth("admin"))
    assert refused.json()["reason_code"] == "person_has_card"  # one live card per person
    audit = await api.http.get("/api/v1/audit?action=settings.change", headers=api.auth("admin"))
    assert audit.json()["audit"][0]["operator"] == "admin-1"


async def test_a_member_file_is_checked_then_imported_through_the_api(api):
    data = "person_id,name,card_uid,cash\nP9,赵六,04D0D0D0,88.00\n".encode("gbk")
    url = "/api/v1/imports/members?filename=m.csv&batch=b1"
    dry = await api.http.post(url + "&dry_run=1", content=data, headers=api.auth("operator"))
    assert dry.status_code == 200 and dry.json()["applied"] is False
    assert dry.json()["encoding"] == "gb18030"
    done = await api.http.post(url, content=data, headers=api.auth("operator"))
    assert done.status_code == 200 and done.json()["applied"] is True
    person = (await api.http.get("/api/v1/persons/P9", headers=api.auth("operator"))).json()
    assert (person["person"]["name"], person["balance"]["cash_fen"]) == ("赵六", 8800)
    bad = await api.http.post(url, content=b"name\nnobody\n", headers=api.auth("operator"))
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["code"] == "columns_missing"
    denied = await api.http.post(url, content=data, headers=api.auth("finance"))
    assert denied.status_code == 403


async def test_finance_reads_clearing_and_settlement_and_reconciles(api):
    url = "/api/v1/clearing?day=2026-11-26"
    day = await api.http.get(url, headers=api.auth("finance"))
    assert day.status_code == 200
    assert [r["site"] for r in day.json()] == [None]  # no sites yet: HQ's own desk
    csv = await api.http.get(url + "&format=csv", headers=api.auth("auditor"))
    assert csv.content.startswith(b"\xef\xbb\xbf")
    assert "attachment" in csv.headers["content-disposition"]
    assert (await api.http.get(url, headers=api.auth("operator"))).status_code == 403
    bad = await api.http.get("/api/v1/clearing?day=yesterday", headers=api.auth("finance"))
    assert bad.status_code == 400
    settled = await api.http.get(
        "/api/v1/settlement?from=2026-11-01&to=2026-11-30", headers=api.auth("finance")
    )
    assert settled.json()["hq_net_fen"] == 0
    statement = b"pay_ref,amount,time\nWX-9,10.00,2026-11-26 10:00:00\n"
    run = await api.http.post(
        "/api/v1/reconciliations?filename=s.csv", content=statement, headers=api.auth("finance")
    )
    assert run.status_code == 200
    assert run.json()["result"]["summary"]["only_in_statement"] == 1
    assert run.json()["applied"] is False


async def test_a_settings_change_keeps_the_policy_fields_it_does_not_name(api):
    first = {"policy": {"cancel_fee_fen": 500, "freeze_on_negative": True}}
    await api.http.put("/api/v1/settings", json=first, headers=api.auth("admin"))
    second = await api.http.put(
        "/api/v1/settings", json={"policy": {"reissue_fee_fen": 1000}}, headers=api.auth("admin")
    )
    policy = second.json()["policy"]
    assert (policy["cancel_fee_fen"], policy["freeze_on_negative"]) == (500, True)
    assert policy["reissue_fee_fen"] == 1000
    bad = await api.http.put(
        "/api/v1/settings", json={"policy": {"free_lunch": True}}, headers=api.auth("admin")
    )
    assert bad.status_code == 400 and "free_lunch" in bad.json()["error"]["message"]


async def test_a_nul_character_names_nothing_and_is_refused_on_either_store(api):
    admin = api.auth("admin")
    person = await api.http.get("/api/v1/persons/P%001", headers=admin)
    assert person.status_code == 404 and person.json()["error"]["code"] == "not_found"
    listed = await api.http.get("/api/v1/anomalies", params={"site": "SZ\x00"}, headers=admin)
    assert listed.status_code == 400 and "site" in listed.json()["error"]["message"]
    body = recharge("r-nul", note="a\x00b")
    posted = await api.http.post("/api/v1/operations", json=body, headers=api.auth("operator"))
    assert posted.status_code == 400 and "NUL" in posted.json()["error"]["message"]
    note = {"state": "acknowledged", "note": "x\x00"}
    changed = await api.http.post("/api/v1/anomalies/1", json=note, headers=admin)
    assert changed.status_code == 400 and "NUL" in changed.json()["error"]["message"]
    assert (
        await api.store.run(
            lambda conn: conn.execute(
                "SELECT count(*) FROM audit WHERE action = 'money.recharge'"
            ).fetchone()[0]
        )
        == 0
    )
