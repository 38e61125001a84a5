"""Central ingest's batch paths: a batch continuing the watermark is stored as applied in a
few multi-row statements, anything else goes record by record; card holders are cached
across batches until a card changes; acks of one lane are coalesced."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from stores import central_db, open_store, rows

from central import master
from central.adapters.sqlite_store import CentralStore
from central.ingest import HolderCache, IngestResult, ingest_batch
from central.service import CentralService
from edge_agent.adapters.mqtt_client import BrokerSettings
from protocol.messages import Purchase, RawRecordBatch, decode, encode

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
CARDS = {f"04A1B2C3D4E5{i:02X}": f"P{i}" for i in range(1, 8)}


def purchase(seq: int, uid: str, amount: int, *, rid: str | None = None) -> Purchase:
    return Purchase(
        id=rid or f"{SITE}.{EPOCH}.0.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=uid,
        terminal="POS-01",
        term_rec=seq,
        approved=True,
        reason="ok",
        amount=amount,
        cash_fen=amount,
    )


def batch(records: list[Purchase]) -> RawRecordBatch:
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": 0,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "records": [json.loads(encode(r)) for r in records],
    }
    return decode(json.dumps(body).encode(), RawRecordBatch)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [{"id": p, "name": p} for p in CARDS.values()],
            "cards": [{"uid": uid, "person_id": p} for uid, p in CARDS.items()],
            "accounts": [{"person_id": p, "cash_fen": 100_000} for p in CARDS.values()],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )
    async with open_store(central_db(tmp_path)) as central:
        await central.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
        yield central


async def ingest(store: CentralStore, raw: RawRecordBatch) -> IngestResult:
    return await store.run(
        lambda conn: ingest_batch(conn, SITE, raw, topic="t", now_ms=1, holders=store.holders)
    )


async def test_a_long_batch_lands_whole_with_balances_equal_to_the_ledger(store):
    uids = list(CARDS)
    sales = [purchase(seq, uids[seq % len(uids)], 100 + seq) for seq in range(1, 301)]
    result = await ingest(store, batch(sales))
    assert (result.new, result.applied, result.acked_seq, result.gap) == (300, 300, 300, False)
    assert await rows(store, "SELECT count(*), sum(applied) FROM records") == [(300, 300)]
    assert await rows(store, "SELECT count(*) FROM records WHERE applied = 0") == [(0,)]
    assert await rows(
        store,
        "SELECT count(*) FROM accounts a WHERE a.cash_fen !="
        " (SELECT sum(cash_fen) FROM ledger l WHERE l.person_id = a.person_id)",
    ) == [(0,)]
    spent = (await rows(store, "SELECT -sum(cash_fen) FROM ledger WHERE kind = 'purchase'"))[0][0]
    assert spent == sum(s.amount for s in sales)
    # each account's covers names the last sale of its card
    for uid, person in CARDS.items():
        last = max(s.seq for s in sales if s.card_uid == uid)
        covers = dict(await rows(store, "SELECT person_id, covers FROM accounts"))[person]
        assert json.loads(covers) == {SITE: [EPOCH, last]}


async def test_a_resend_overlapping_the_watermark_counts_each_record_once(store):
    uid = next(iter(CARDS))
    await ingest(store, batch([purchase(seq, uid, 10) for seq in range(1, 6)]))
    again = await ingest(store, batch([purchase(seq, uid, 10) for seq in range(3, 9)]))
    assert (again.new, again.duplicates, again.acked_seq) == (3, 3, 8)
    assert await rows(
        store, "SELECT count(*), -sum(cash_fen) FROM ledger WHERE kind = 'purchase'"
    ) == [(8, 80)]
    assert await rows(store, "SELECT count(*) FROM records WHERE applied = 0") == [(0,)]


async def test_an_id_taken_by_another_seq_sends_the_batch_record_by_record(store):
    uid = next(iter(CARDS))
    await ingest(store, batch([purchase(1, uid, 10)]))
    # seq 3 reuses seq 1's id: the fast path is undone whole, the slow one keeps the first
    clash = [purchase(2, uid, 10), purchase(3, uid, 10, rid=f"{SITE}.{EPOCH}.0.1")]
    result = await ingest(store, batch(clash))
    assert (result.new, result.conflicts, result.acked_seq) == (1, 1, 3)
    assert await rows(store, "SELECT kind FROM records WHERE seq = 3") == [("dead",)]
    assert await rows(store, "SELECT count(*) FROM ledger WHERE kind = 'purchase'") == [(2,)]
    assert await rows(store, "SELECT kind FROM anomalies") == [("duplicate_conflict",)]


async def test_the_holder_cache_follows_a_card_moved_to_another_person(store):
    uid, first = next(iter(CARDS.items()))
    await ingest(store, batch([purchase(1, uid, 10)]))
    moved = json.dumps({"uid": uid, "person_id": "P7"}).encode()
    await store.run(lambda conn: master.upsert(conn, "", "card", uid, moved))
    await ingest(store, batch([purchase(2, uid, 20)]))
    assert await rows(store, "SELECT record_id, person_id FROM ledger WHERE site IS NOT NULL") == [
        (f"{SITE}.{EPOCH}.0.1", first),
        (f"{SITE}.{EPOCH}.0.2", "P7"),
    ]


def test_the_holder_cache_is_dropped_when_a_card_changes_or_a_commit_failed(tmp_path):
    conn = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    conn.execute("CREATE TABLE changes (version INTEGER PRIMARY KEY, entity TEXT)")
    conn.execute("CREATE TABLE master (scope TEXT, entity TEXT, key TEXT, data TEXT)")
    conn.execute("""INSERT INTO master VALUES ('', 'card', 'C1', '{"person_id": "P1"}')""")
    cache = HolderCache()
    cache.sync(conn)
    assert cache.get(conn, "C1") == "P1"
    conn.execute("""UPDATE master SET data = '{"person_id": "P2"}'""")
    conn.execute("INSERT INTO changes (entity) VALUES ('account')")  # not a card: kept
    cache.sync(conn)
    assert cache.get(conn, "C1") == "P1"
    conn.execute("INSERT INTO changes (entity) VALUES ('card')")
    cache.sync(conn)
    assert cache.get(conn, "C1") == "P2"
    conn.execute("""UPDATE master SET data = '{"person_id": "P3"}'""")
    cache.clear()  # what the store does when a commit fails
    cache.sync(conn)
    assert cache.get(conn, "C1") == "P3"


async def test_acks_of_one_lane_committed_together_go_out_once_with_the_newest():
    broker = BrokerSettings.from_url("mqtts://127.0.0.1:1", username="central", password="")
    service = CentralService(store=None, broker=broker)  # type: ignore[arg-type]
    sent: list[int] = []
    release = asyncio.Event()

    async def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
        sent.append(json.loads(payload)["acked_seq"])
        await release.wait()

    service._publish = publish  # type: ignore[method-assign]
    first = asyncio.create_task(service._ack(SITE, EPOCH, 0, 500))
    await asyncio.sleep(0)
    others = [asyncio.create_task(service._ack(SITE, EPOCH, 0, seq)) for seq in (1000, 1500)]
    await asyncio.gather(*others)  # handed to the publishing task, which sends the newest next
    release.set()
    await first
    assert sent == [500, 1500]
    await service._ack(SITE, EPOCH, 0, 1500)  # a resent batch: its ack goes out again
    assert sent == [500, 1500, 1500]
