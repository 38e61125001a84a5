"""Card and money operations against central's real SQLite store: effects, idempotency,
audit, feed and blacklist, and the ledger invariant (every balance = its ledger sums)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from stores import central_db, open_store

from central import master, operations
from central.adapters.sqlite_store import CentralStore
from central.core.cancel import CancelCard
from central.core.cards import IssueCard, Reissue, ReportLost
from central.core.effects import Accepted, Rejected
from central.core.money import CorrectPurchase, Recharge
from central.core.operations import AnyRequest
from central.core.state import CardType, Policy
from central.ingest import ingest_batch
from protocol.messages import CardIntent, Purchase, RawRecordBatch, decode, encode

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
ALICE, ALICE_NEW, BOB = "04A1B2C3D4E5F6", "04A1B2C3D4E5F7", "04B0B0B0B0B0B0"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice"}, {"id": "P2", "name": "Bob"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 10_000, "subsidy_fen": 500}],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )

    def setup(conn: sqlite3.Connection) -> None:
        master.apply_seed(conn, seed, batch="t")
        operations.save_card_types(
            conn,
            [CardType(name="standard", deposit_fen=2000), CardType(name="vip", deposit_fen=5000)],
        )
        operations.save_policy(conn, Policy(cancel_fee_fen=500, reissue_fee_fen=1000))

    async with open_store(central_db(tmp_path)) as central:
        await central.run(setup)
        yield central


def req(cls: type, rid: str, **fields: Any) -> Any:
    return cls(request_id=rid, operator="op-zhang", source="hq:cli", **fields)


async def run(store: CentralStore, request: AnyRequest, at: datetime = NOW) -> operations.Outcome:
    return await store.run(lambda conn: operations.execute(conn, request, now=at))


async def sql(store: CentralStore, query: str, *args: Any) -> list[tuple[Any, ...]]:
    return await store.run(lambda conn: conn.execute(query, args).fetchall())


async def purses(store: CentralStore, person: str) -> tuple[int, int, int]:
    rows = await sql(
        store, "SELECT cash_fen, subsidy_fen, deposit_fen FROM accounts WHERE person_id = ?", person
    )
    return rows[0]


async def assert_ledger_invariant(store: CentralStore) -> None:
    rows = await sql(
        store,
        "SELECT a.person_id, a.cash_fen, a.subsidy_fen, a.deposit_fen,"
        " coalesce(sum(l.cash_fen), 0), coalesce(sum(l.subsidy_fen), 0),"
        " coalesce(sum(l.deposit_fen), 0)"
        " FROM accounts a LEFT JOIN ledger l USING (person_id) GROUP BY a.person_id",
    )
    for person, *both in rows:
        assert both[:3] == both[3:], f"{person}: balance {both[:3]} != ledger {both[3:]}"


async def test_issue_recharge_lost_reissue_cancel_end_to_end(store):
    issued = await run(store, req(IssueCard, "r1", card_uid=BOB, person_id="P2", card_type="vip"))
    assert isinstance(issued.result, Accepted)
    assert await purses(store, "P2") == (0, 0, 5000)  # 押金 in its own purse
    bank = req(Recharge, "r2", card_uid=BOB, amount_fen=8000, method="bank", pay_ref="B-77")
    assert isinstance((await run(store, bank)).result, Accepted)
    assert await purses(store, "P2") == (8000, 0, 5000)

    lost = await run(store, req(ReportLost, "r3", card_uid=BOB))
    assert isinstance(lost.result, Accepted) and lost.blacklist_version == 1
    assert await sql(store, "SELECT uid, reason FROM blacklist") == [(BOB, "lost")]
    new_uid = "04C0C0C0C0C0C0"
    reissued = await run(store, req(Reissue, "r4", card_uid=BOB, new_card_uid=new_uid))
    assert isinstance(reissued.result, Accepted)
    # The new card opens the same account: the balance carried over, minus the 工本费.
    assert await purses(store, "P2") == (7000, 0, 5000)
    assert await sql(store, "SELECT reason FROM blacklist WHERE uid = ?", BOB) == [("replaced",)]
    statuses = await sql(
        store,
        "SELECT key, json_extract(data, '$.status') FROM master WHERE entity = 'card'"
        " AND json_extract(data, '$.person_id') = 'P2' ORDER BY key",
    )
    assert statuses == [(BOB, "replaced"), (new_uid, "active")]

    cancelled = await run(store, req(CancelCard, "r5", card_uid=new_uid, recycle=True))
    assert isinstance(cancelled.result, Accepted)
    assert await purses(store, "P2") == (0, 0, 0)
    payouts = await sql(
        store,
        "SELECT kind, cash_fen, deposit_fen FROM ledger WHERE record_id = 'op:r5' ORDER BY kind",
    )
    # fee 500 from the deposit first; 4500 deposit and 7000 cash paid back.
    assert payouts == [("fee", 0, -500), ("refund_cash", -7000, 0), ("refund_deposit", 0, -4500)]
    await assert_ledger_invariant(store)
    actions = await sql(store, "SELECT action, outcome, target FROM audit ORDER BY id")
    assert [a[0] for a in actions] == [
        "card.issue",
        "money.recharge",
        "card.report_lost",
        "card.reissue",
        "card.cancel",
    ]
    assert all(a[1] == "accepted" for a in actions)


async def test_a_retried_request_is_answered_once_and_a_reused_id_is_refused(store):
    first = req(Recharge, "r-retry", card_uid=ALICE, amount_fen=1234, method="cash")
    one = await run(store, first)
    two = await run(store, first)
    assert not one.replayed and two.replayed
    assert encode_result(one.result) == encode_result(two.result)
    assert await purses(store, "P1") == (11_234, 500, 0)  # credited once

    other = req(Recharge, "r-retry", card_uid=ALICE, amount_fen=99, method="cash")
    reused = (await run(store, other)).result
    assert isinstance(reused, Rejected) and reused.reason_code == "request_id_reused"
    assert await purses(store, "P1") == (11_234, 500, 0)
    audit = await sql(store, "SELECT outcome, reason_code FROM audit ORDER BY id")
    assert audit == [("accepted", None), ("rejected", "request_id_reused")]


async def test_a_refusal_is_stored_audited_and_changes_nothing(store):
    pay = req(Recharge, "r-a", card_uid=ALICE, amount_fen=100, method="online", pay_ref="WX-1")
    assert isinstance((await run(store, pay)).result, Accepted)
    again = req(Recharge, "r-b", card_uid=ALICE, amount_fen=100, method="online", pay_ref="WX-1")
    refused = (await run(store, again)).result
    assert isinstance(refused, Rejected) and refused.reason_code == "pay_ref_used"
    assert await purses(store, "P1") == (10_100, 500, 0)
    assert (await run(store, again)).replayed  # the refusal is the stored answer too
    rows = await sql(store, "SELECT op, json_extract(result, '$.outcome') FROM op_results")
    assert sorted(rows) == [("money.recharge", "accepted"), ("money.recharge", "rejected")]
    audit = await sql(store, "SELECT target, reason_code FROM audit WHERE outcome = 'rejected'")
    assert audit == [(f"card:{ALICE}", "pay_ref_used")]


async def test_accounts_and_cards_reach_the_feed_rendered_with_their_purses(store):
    head = await store.run(master.head_version)
    await run(store, req(IssueCard, "r1", card_uid=BOB, person_id="P2"))
    changes = await store.run(
        lambda conn: master.changes_since(conn, site=SITE, after=head, limit=100)
    )
    cards = [c for _, c in changes if c.entity == "card"]
    assert [(c.key, c.data["status"]) for c in cards] == [(BOB, "active")]
    await run(store, req(Recharge, "r2", card_uid=BOB, amount_fen=700, method="cash"))
    await store.run(master.flush_balances)
    changes = await store.run(
        lambda conn: master.changes_since(conn, site=SITE, after=head, limit=100)
    )
    accounts = [c.data for _, c in changes if c.entity == "account" and c.key == "P2"]
    assert accounts[-1]["cash_fen"] == 700


def site_purchase(seq: int, amount: int, cash: int) -> Purchase:
    return Purchase(
        id=f"{SITE}.{EPOCH}.0.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=ALICE,
        terminal="POS-01",
        term_rec=seq,
        approved=True,
        reason="ok",
        amount=amount,
        cash_fen=cash,
        subsidy_fen=amount - cash,
    )


def raw_batch(records: list[Any]) -> RawRecordBatch:
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": 0,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "records": [json.loads(encode(r)) for r in records],
    }
    return decode(json.dumps(body).encode(), RawRecordBatch)


async def test_a_correction_credits_the_difference_and_a_second_accounts_for_the_first(store):
    sale = site_purchase(1, 1500, cash=1000)  # 500 subsidy spent first, then 1000 cash
    await store.run(lambda conn: ingest_batch(conn, SITE, raw_batch([sale]), topic="t", now_ms=1))
    assert await purses(store, "P1") == (9000, 0, 0)
    fix = req(CorrectPurchase, "c1", original_id=sale.id, corrected_amount_fen=1200, reason="x")
    assert isinstance((await run(store, fix)).result, Accepted)
    assert await purses(store, "P1") == (9300, 0, 0)  # 300 back, cash first
    fix2 = req(CorrectPurchase, "c2", original_id=sale.id, corrected_amount_fen=800, reason="y")
    assert isinstance((await run(store, fix2)).result, Accepted)
    assert await purses(store, "P1") == (9700, 0, 0)  # 400 more: the first counted
    over = req(CorrectPurchase, "c3", original_id=sale.id, corrected_amount_fen=900, reason="z")
    refused = (await run(store, over)).result
    assert isinstance(refused, Rejected) and refused.reason_code == "already_corrected"
    await assert_ledger_invariant(store)


def intent(rid_seq: int, action: str, uid: str, person: str | None = None) -> CardIntent:
    return CardIntent(
        id=f"{SITE}.{EPOCH}.0.{rid_seq}",
        seq=rid_seq,
        site=SITE,
        at=NOW - timedelta(hours=1),
        received_at=NOW - timedelta(hours=1),
        offline=True,
        card_uid=uid,
        action=action,
        person_id=person,
        operator="desk-li",
    )


async def test_a_branch_intent_is_decided_once_with_a_reason_when_refused(store):
    # HQ bound BOB's card to P2 first; the branch, offline, tried to give it to P1.
    await run(store, req(IssueCard, "hq-1", card_uid=BOB, person_id="P2"))
    late = intent(7, "issue", BOB, "P1")
    first = await store.run(lambda conn: operations.execute_intent(conn, late, now=NOW))
    again = await store.run(lambda conn: operations.execute_intent(conn, late, now=NOW))
    assert isinstance(first.result, Rejected)
    assert first.result.reason_code == "card_already_bound"
    assert again.replayed and again.result == first.result
    lost = intent(8, "report_lost", ALICE, "P1")
    done = await store.run(lambda conn: operations.execute_intent(conn, lost, now=NOW))
    assert isinstance(done.result, Accepted)
    # Liability runs from when the member reported it at the branch, not when HQ heard.
    effective = await sql(store, "SELECT effective_ms FROM blacklist WHERE uid = ?", ALICE)
    assert effective == [(int(lost.at.timestamp() * 1000),)]
    sources = await sql(store, "SELECT source, operator FROM audit WHERE action = 'card.issue'")
    assert ("site:SZ-FUTIAN", "desk-li") in sources


def encode_result(result: Accepted | Rejected) -> bytes:
    return msgspec.json.encode(result)
