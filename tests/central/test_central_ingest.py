"""Central ingest against a real SQLite file: exactly once, gaps, dead letters, the ledger."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from stores import central_db, open_store, rows

from central import master
from central.adapters.sqlite_store import CentralStore
from central.ingest import IngestResult, UnknownSiteError, ingest_batch
from protocol.messages import DoorAccess, Purchase, RawRecordBatch, RechargeCommit, decode, encode

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)
ALICE = "04A1B2C3D4E5F6"


def purchase(seq: int, amount: int, *, cash: int | None = None) -> Purchase:
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
        cash_fen=amount if cash is None else cash,
        subsidy_fen=0 if cash is None else amount - cash,
    )


def recharge(seq: int, amount: int) -> RechargeCommit:
    return RechargeCommit(
        id=f"{SITE}.{EPOCH}.0.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=ALICE,
        pay_ref=f"BANK-{seq}",
        amount=amount,
    )


def door(seq: int) -> DoorAccess:
    return DoorAccess(
        id=f"{SITE}.{EPOCH}.1.{seq}",
        seq=seq,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=ALICE,
        door="D1",
        granted=True,
        reason="ok",
        blacklist_version=0,
    )


def batch(records: list, *, lane: int = 0, payloads: list[bytes] | None = None) -> RawRecordBatch:
    raws = payloads or [encode(r) for r in records]
    first = records[0].seq if records else 1
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": lane,
        "first_seq": first,
        "last_seq": first + len(raws) - 1,
        "records": [json.loads(r) for r in raws],
    }
    return decode(json.dumps(body).encode(), RawRecordBatch)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 1000}],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )
    async with open_store(central_db(tmp_path)) as central:
        await central.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
        yield central


async def ingest(store: CentralStore, raw: RawRecordBatch) -> IngestResult:
    return await store.run(
        lambda conn: ingest_batch(conn, SITE, raw, topic="t", now_ms=1_795_440_000_000)
    )


async def balance(store: CentralStore) -> tuple[int, int, int]:
    cash, ledger, covered = await store.run(
        lambda conn: conn.execute(
            "SELECT a.cash_fen, (SELECT sum(cash_fen) FROM ledger WHERE person_id = 'P1'),"
            " json_extract(a.covers, '$.\"SZ-FUTIAN\"[1]')"
            " FROM accounts a WHERE person_id = 'P1'"
        ).fetchone()
    )
    return cash, ledger, None if covered is None else int(covered)  # text on PostgreSQL


async def test_a_batch_is_stored_applied_and_acked_and_a_repeat_changes_nothing(store):
    first = await ingest(store, batch([purchase(1, 300), recharge(2, 500)]))
    again = await ingest(store, batch([purchase(1, 300), recharge(2, 500)]))
    assert (first.acked_seq, first.new, first.applied) == (2, 2, 2)
    assert (again.acked_seq, again.new, again.duplicates) == (2, 0, 2)
    assert await balance(store) == (1200, 1200, 2)  # 1000 - 300 + 500, covers lane-0 seq 2


async def test_a_gap_holds_the_watermark_and_the_ledger_until_it_is_filled(store):
    later = await ingest(store, batch([purchase(3, 100)]))
    assert (later.acked_seq, later.gap, later.applied) == (0, True, 0)
    assert await balance(store) == (1000, 1000, None)  # nothing after a gap is applied
    filled = await ingest(store, batch([purchase(1, 100), purchase(2, 100)]))
    assert (filled.acked_seq, filled.gap, filled.applied) == (3, False, 3)
    assert await balance(store) == (700, 700, 3)


async def test_the_same_seq_with_other_content_is_an_anomaly_and_never_replaces_the_first(store):
    await ingest(store, batch([purchase(1, 300)]))
    result = await ingest(store, batch([purchase(1, 900)]))
    assert result.conflicts == 1
    assert await balance(store) == (700, 700, 1)
    kinds = await store.run(lambda conn: conn.execute("SELECT kind FROM anomalies").fetchall())
    assert kinds == [("duplicate_conflict",)]


async def test_a_bad_record_is_dead_lettered_alone_and_the_lane_moves_on(store):
    good1, good3 = encode(purchase(1, 100)), encode(purchase(3, 100))
    bad = encode(purchase(2, 100)).replace(b'"amount":100', b'"amount":-5')
    result = await ingest(store, batch([purchase(1, 100)], payloads=[good1, bad, good3]))
    assert (result.acked_seq, result.dead, result.applied) == (3, 1, 3)
    assert await balance(store) == (800, 800, 3)
    letters = await rows(store, "SELECT reason FROM dead_letters")
    assert len(letters) == 1 and "records[1]" in letters[0][0] and "amount" in letters[0][0]


async def test_a_record_with_a_nul_character_is_dead_on_either_store(store):
    good1, good3 = encode(door(1)), encode(door(3))
    nul = encode(door(2)).replace(b'"door":"D1"', b'"door":"D\\u00001"')
    assert nul != encode(door(2))
    result = await ingest(store, batch([door(1)], lane=1, payloads=[good1, nul, good3]))
    assert (result.acked_seq, result.dead, result.applied) == (3, 1, 3)
    letters = await rows(store, "SELECT reason FROM dead_letters")
    assert len(letters) == 1 and "records[1]" in letters[0][0] and "NUL" in letters[0][0]


async def test_a_record_in_the_wrong_lane_is_dead(store):
    result = await ingest(store, batch([door(1)], lane=0))
    assert (result.dead, result.acked_seq) == (1, 1)


async def test_lanes_are_independent_streams(store):
    money = await ingest(store, batch([purchase(1, 100)], lane=0))
    doors = await ingest(store, batch([door(1), door(2)], lane=1))
    assert (money.acked_seq, doors.acked_seq) == (1, 2)


async def test_an_unknown_or_removed_site_is_refused(store):
    raw = batch([purchase(1, 100)])
    with pytest.raises(UnknownSiteError):
        await store.run(lambda conn: ingest_batch(conn, "BJ-NOWHERE", raw, topic="t", now_ms=0))
    await store.run(lambda conn: master.remove_site(conn, SITE))
    with pytest.raises(UnknownSiteError):
        await ingest(store, raw)


async def test_an_overdraft_after_merging_is_an_anomaly(store):
    await ingest(store, batch([purchase(1, 800), purchase(2, 800)]))
    kinds = await store.run(
        lambda conn: conn.execute("SELECT kind, detail FROM anomalies").fetchall()
    )
    assert [k for k, _ in kinds] == ["negative_balance"]
    assert json.loads(kinds[0][1])["balance_fen"] == -600


async def test_seeding_twice_with_the_same_batch_never_doubles_a_balance(store):
    seed = msgspec.convert(
        {"accounts": [{"person_id": "P1", "cash_fen": 1000}]}, master.CentralSeed
    )
    await store.run(lambda conn: master.apply_seed(conn, seed, batch="t"))
    assert (await balance(store))[:2] == (1000, 1000)


async def test_feed_has_the_card_lost_and_the_blacklist_chain_grows(store):
    delta = await store.run(lambda conn: master.report_lost(conn, ALICE, at=NOW))
    assert (delta.prev_version, delta.version) == (0, 1)
    changes = await store.run(
        lambda conn: master.changes_since(conn, site=SITE, after=0, limit=100)
    )
    cards = [c for _, c in changes if c.entity == "card"]
    assert cards[-1].data is not None and cards[-1].data["status"] == "lost"
    with pytest.raises(master.MasterDataError):
        await store.run(lambda conn: master.report_lost(conn, "04FFFFFFFF", at=NOW))


async def test_a_snapshot_renders_balances_with_their_covers(store):
    await ingest(store, batch([purchase(1, 250)]))
    snap = await store.run(lambda conn: master.snapshot(conn, SITE))
    account = next(c for c in snap if c.entity == "account")
    assert account.data is not None
    assert (account.data["cash_fen"], account.data["covers"]) == (750, {SITE: [EPOCH, 1]})


async def test_a_payment_committed_twice_under_different_records_is_credited_once(store):
    await ingest(store, batch([recharge(1, 500)]))
    again = RechargeCommit(
        id=f"{SITE}.{EPOCH + 1}.0.1",
        seq=1,
        site=SITE,
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=ALICE,
        pay_ref="BANK-1",
        amount=500,
    )  # a kiosk whose database was recreated commits the same payment again
    raw = decode(
        json.dumps(
            {
                "site": SITE,
                "epoch": EPOCH + 1,
                "lane": 0,
                "first_seq": 1,
                "last_seq": 1,
                "records": [json.loads(encode(again))],
            }
        ).encode(),
        RawRecordBatch,
    )
    await ingest(store, raw)
    assert (await balance(store))[:2] == (1500, 1500)
    kinds = await store.run(lambda conn: conn.execute("SELECT kind FROM anomalies").fetchall())
    assert kinds == [("duplicate_payment",)]
