"""Anomalies raised while records are ingested (once per cause), branch intents decided in
stream order, and subsidy given back to offline sales an expiry overtook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest
from stores import central_db, open_store

from central import anomalies, master, operations
from central.adapters.sqlite_store import CentralStore
from central.core.cards import ReportLost
from central.core.state import Policy
from central.core.subsidy import ExpireSubsidy, GrantSubsidy
from central.ingest import ingest_batch
from protocol.messages import (
    CardIntent,
    DoorAccess,
    Purchase,
    RawRecordBatch,
    RechargeCommit,
    decode,
    encode,
)

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
ALICE, NEW = "04A1B2C3D4E5F6", "04C0C0C0C0C0C0"
T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice"}, {"id": "P2", "name": "Bob"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 1000}],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )
    async with open_store(central_db(tmp_path)) as central:
        await central.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
        yield central


def base(lane: int, seq: int, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"{SITE}.{EPOCH}.{lane}.{seq}",
        "seq": seq,
        "site": SITE,
        "at": at,
        "received_at": at,
        "offline": False,
        "card_uid": ALICE,
        **extra,
    }


async def send(store: CentralStore, lane: int, records: list[Any], now: datetime = T0) -> None:
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": lane,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "records": [json.loads(encode(r)) for r in records],
    }
    raw = decode(json.dumps(body).encode(), RawRecordBatch)
    ms = int(now.timestamp() * 1000)
    await store.run(lambda conn: ingest_batch(conn, SITE, raw, topic="t", now_ms=ms))


async def rows(store: CentralStore, sql: str) -> list[tuple[Any, ...]]:
    return await store.run(lambda conn: conn.execute(sql).fetchall())


async def test_a_skewed_terminal_clock_is_one_anomaly_however_many_records(store):
    skewed = [
        DoorAccess(
            **base(1, i, T0, received_at=T0 + timedelta(minutes=9)),
            terminal="DOOR-01",
            door="D1",
            granted=True,
            reason="ok",
            blacklist_version=0,
        )
        for i in range(1, 4)
    ]
    await send(store, 1, skewed)
    details = await rows(store, "SELECT detail FROM anomalies WHERE kind = 'clock_skew'")
    found = [(d["terminal"], d["skew_s"]) for d in (json.loads(row[0]) for row in details)]
    assert found == [(f"{SITE}/DOOR-01", 540.0)]


async def test_a_card_let_in_although_the_site_held_its_listing_is_an_anomaly(store):
    request = ReportLost(request_id="l1", operator="hq", source="hq:cli", card_uid=ALICE)
    outcome = await store.run(lambda conn: operations.execute(conn, request, now=T0))
    listed = outcome.blacklist_version
    later = T0 + timedelta(minutes=5)
    behind = DoorAccess(
        **base(1, 1, later),
        terminal="DOOR-01",
        door="D1",
        granted=True,
        reason="ok",
        blacklist_version=listed - 1,
    )
    holding = DoorAccess(
        **base(1, 2, later),
        terminal="DOOR-01",
        door="D1",
        granted=True,
        reason="ok",
        blacklist_version=listed,
    )
    await send(store, 1, [behind, holding])
    found = await rows(store, "SELECT record_id FROM anomalies WHERE kind = 'used_after_blacklist'")
    assert found == [(holding.id,)]  # the first had not received the list yet: no anomaly


async def test_a_long_seq_gap_becomes_one_anomaly(store):
    door = DoorAccess(
        **base(1, 5, T0),
        terminal="DOOR-01",
        door="D1",
        granted=True,
        reason="ok",
        blacklist_version=0,
    )
    await send(store, 1, [door])  # seqs 1..4 never arrived
    later = int((T0 + timedelta(minutes=30)).timestamp() * 1000)
    first = await store.run(lambda conn: anomalies.flag_gaps(conn, now_ms=later))
    again = await store.run(lambda conn: anomalies.flag_gaps(conn, now_ms=later + 60_000))
    assert (first, again) == (1, 0)


async def test_a_branch_intent_is_decided_before_the_records_after_it(store):
    issue = CardIntent(
        **base(0, 1, T0, card_uid=NEW), action="issue", person_id="P2", operator="desk-li"
    )
    paid = RechargeCommit(
        **base(0, 2, T0, card_uid=NEW), terminal="KIOSK-1", pay_ref="K-9", amount=3000
    )
    await send(store, 0, [issue, paid])
    assert await rows(store, "SELECT person_id, cash_fen FROM accounts WHERE person_id = 'P2'") == [
        ("P2", 3000)
    ]
    audit = await rows(store, "SELECT action, source, operator, outcome FROM audit")
    assert audit == [("card.issue", f"site:{SITE}", "desk-li", "accepted")]


async def test_subsidy_an_expiry_took_is_given_back_to_a_sale_made_before_it(store):
    grant = GrantSubsidy(
        request_id="g1",
        operator="hq",
        source="hq:cli",
        person_ids=("P1",),
        amount_fen=500,
        expires_at=T0 + timedelta(hours=1),
    )
    await store.run(lambda conn: operations.execute(conn, grant, now=T0))
    expire = ExpireSubsidy(request_id="x1", operator="hq", source="hq:cli", person_ids=("P1",))
    await store.run(lambda conn: operations.execute(conn, expire, now=T0 + timedelta(hours=2)))
    # An offline till sold at T0+30min, spending 300 of that subsidy; it arrives after expiry.
    sale = Purchase(
        **base(0, 1, T0 + timedelta(minutes=30), offline=True),
        terminal="POS-1",
        approved=True,
        reason="ok",
        amount=300,
        subsidy_fen=300,
    )
    await send(store, 0, [sale], now=T0 + timedelta(hours=3))
    entries = await rows(
        store, "SELECT kind, subsidy_fen FROM ledger WHERE person_id = 'P1' ORDER BY id"
    )
    assert entries[-2:] == [("purchase", -300), ("subsidy_restore", 300)]
    balance = await rows(store, "SELECT subsidy_fen FROM accounts WHERE person_id = 'P1'")
    assert balance == [(0,)]  # granted 500, expired 500, spent 300 before expiry, given back 300
    await send(store, 0, [sale], now=T0 + timedelta(hours=4))  # resent: restored once
    assert await rows(store, "SELECT count(*) FROM ledger WHERE kind = 'subsidy_restore'") == [(1,)]


async def test_a_restored_sale_is_not_an_overdraft(store):
    await store.run(lambda conn: operations.save_policy(conn, Policy(freeze_on_negative=True)))
    grant = GrantSubsidy(
        request_id="g1",
        operator="hq",
        source="hq:cli",
        person_ids=("P1",),
        amount_fen=5000,
        expires_at=T0 + timedelta(hours=1),
    )
    await store.run(lambda conn: operations.execute(conn, grant, now=T0))
    expire = ExpireSubsidy(request_id="x1", operator="hq", source="hq:cli", person_ids=("P1",))
    await store.run(lambda conn: operations.execute(conn, expire, now=T0 + timedelta(hours=2)))
    # ¥10.00 cash left; an offline sale of ¥45.00 made before the expiry, mostly subsidy.
    sale = Purchase(
        **base(0, 1, T0 + timedelta(minutes=30), offline=True),
        terminal="POS-1",
        approved=True,
        reason="ok",
        amount=4500,
        subsidy_fen=4500,
    )
    await send(store, 0, [sale], now=T0 + timedelta(hours=3))
    assert await rows(store, "SELECT cash_fen, subsidy_fen FROM accounts") == [(1000, 0)]
    assert await rows(store, "SELECT count(*) FROM anomalies") == [(0,)]
    card = await rows(
        store, "SELECT json_extract(data, '$.status') FROM master WHERE key = '04A1B2C3D4E5F6'"
    )
    assert card == [("active",)]


async def test_a_sale_approved_although_the_site_held_the_listing_is_an_anomaly(store):
    request = ReportLost(request_id="l2", operator="hq", source="hq:cli", card_uid=ALICE)
    listed = (await store.run(lambda c: operations.execute(c, request, now=T0))).blacklist_version
    later = T0 + timedelta(minutes=5)
    sale = Purchase(
        **base(0, 1, later),
        terminal="POS-1",
        approved=True,
        reason="ok",
        amount=100,
        cash_fen=100,
        blacklist_version=listed,
    )
    declined = Purchase(
        **base(0, 2, later),
        terminal="POS-1",
        approved=False,
        reason="lost",
        amount=100,
        blacklist_version=listed,
    )
    await send(store, 0, [sale, declined])
    found = await rows(store, "SELECT record_id FROM anomalies WHERE kind = 'used_after_blacklist'")
    assert found == [(sale.id,)]
