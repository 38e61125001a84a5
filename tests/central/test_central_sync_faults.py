"""Sync under faults: hostile or broken payloads, a site that fell behind, a lost message."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import UTC, datetime

import pytest
from stores import rows
from sync_system import ALICE, BOB, System, edge_db, until

from central import master
from firmware_sim.terminals import DoorReader, PosTerminal
from protocol.messages import Feed, FeedChange, encode

pytestmark = pytest.mark.integration

A, B = "SZ-FUTIAN", "BJ-CHAOYANG"


async def dead_letters(system: System) -> list[tuple[str, str]]:
    return await rows(system.store, "SELECT topic, reason FROM dead_letters ORDER BY id")


async def test_broken_and_forged_payloads_are_dead_lettered_and_ingest_goes_on(system: System):
    topic = f"onecard/v1/site/{A}/up/records"
    good = {
        "v": 1,
        "site": A,
        "epoch": 1,
        "lane": 1,
        "first_seq": 1,
        "last_seq": 1,
        "records": [{}],
    }
    async with system.broker.client(A, system.passwords[A], identifier="forger") as forger:
        await forger.publish(topic, b"{not json", qos=1)
        await forger.publish(topic, json.dumps({**good, "v": 2}).encode(), qos=1)
        await forger.publish(topic, json.dumps({**good, "site": B}).encode(), qos=1)
        await forger.publish(topic, b" " * (1024 * 1024 + 512 * 1024), qos=1)  # 1.5 MiB
        await forger.publish(f"onecard/v1/site/{A}/up/state", b'{"online": "yes"}', qos=1)

    async def five_letters() -> bool:
        return len(await dead_letters(system)) >= 5

    await until(five_letters)
    reasons = [reason for _, reason in await dead_letters(system)]
    assert "malformed JSON" in reasons[0]
    assert "at `$.v`" in reasons[1]
    assert f"payload site {B} is not the topic's site {A}" in reasons[2]
    assert "exceeds" in reasons[3]
    assert "$.online" in reasons[4]
    # Ingest goes on: a real tap still arrives and is acked.
    door = system.terminal(DoorReader, A, "DOOR-01")
    async with door as reader:  # type: ignore[attr-defined]
        assert (await reader.tap(ALICE)).ok

    async def acked() -> bool:
        with edge_db(system.edges[A]) as conn:
            return conn.execute("SELECT count(*) FROM outbox WHERE acked = 0").fetchone()[0] == 0

    await until(acked)


async def test_a_site_that_was_away_catches_up_on_feed_and_blacklist(system: System):
    await system.stop_edge(B)
    at = datetime.now(UTC)
    await system.store.run(lambda conn: master.report_lost(conn, ALICE, at=at))
    await system.store.run(lambda conn: master.report_lost(conn, BOB, at=at))
    await system.start_edge(B)  # its birth reports the versions it had; central replays
    door = system.terminal(DoorReader, B, "DOOR-01")

    async def both_refused() -> bool:
        async with door as reader:  # type: ignore[attr-defined]
            alice, bob = await reader.tap(ALICE), await reader.tap(BOB)
        return not alice.ok and not bob.ok

    await until(both_refused)  # by card status (feed) or blacklist, whichever lands first

    async def blacklist_caught_up() -> bool:  # and the blacklist chain catches up too
        with edge_db(system.edges[B]) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'blacklist_version'").fetchone()
        return row == ("2",)

    await until(blacklist_caught_up)


async def test_a_lost_feed_message_is_noticed_and_replayed(system: System):
    edge = system.edges[A]
    with edge_db(edge) as conn:
        before = int(conn.execute("SELECT value FROM meta WHERE key='feed_version'").fetchone()[0])
    # A change the site never got (as if its message was lost) ...
    version = await system.store.run(
        lambda conn: master.upsert(
            conn, "", "person", "P9", json.dumps({"id": "P9", "name": "王五"}).encode()
        )
    )
    system.central.sent_feed.pop(A, None)  # central forgets the site, so it will not send it
    # ... then a later change arrives whose prev_version is past what the site has.
    later = Feed(
        site=A,
        feed_version=version + 1,
        prev_version=version,
        changes=[FeedChange(op="delete", entity="person", key="NOBODY")],
    )
    async with system.broker.central() as hq:
        await hq.publish(f"onecard/v1/site/{A}/down/feed", encode(later), qos=1)

    async def caught_up() -> bool:
        with edge_db(edge) as conn:
            row = conn.execute("SELECT name FROM persons WHERE id = 'P9'").fetchone()
        return row is not None and row[0] == "王五"

    await until(caught_up)
    with edge_db(edge) as conn:
        after = int(conn.execute("SELECT value FROM meta WHERE key='feed_version'").fetchone()[0])
    assert after >= version > before


async def test_a_recreated_site_database_gets_a_snapshot_and_a_new_epoch(system: System):
    old_epoch = system.edges[B].site.store.epoch  # type: ignore[union-attr]
    await system.stop_edge(B)
    shutil.rmtree(system.edges[B].config.data_dir / "edge.db", ignore_errors=True)
    for suffix in ("", "-wal", "-shm"):
        (system.edges[B].config.data_dir / f"edge.db{suffix}").unlink(missing_ok=True)
    await asyncio.sleep(0.01)
    edge = await system.start_edge(B)  # waits for the terminals from the snapshot
    assert edge.site is not None and edge.site.store.epoch > old_epoch
    with edge_db(edge) as conn:
        cards = conn.execute("SELECT count(*) FROM cards").fetchone()[0]
        lost = conn.execute("SELECT count(*) FROM blacklist").fetchone()[0]
    assert cards == 2 and lost == 0


async def test_with_hq_down_the_site_goes_offline_and_applies_its_caps(system: System):
    edge = system.edges[A]
    system.central.stop()  # central says goodbye: central/state online=false

    async def offline() -> bool:
        return edge.site is not None and edge.site.offline_since is not None

    await until(offline)
    till = system.terminal(PosTerminal, A, "POS-01")
    async with till as pos:  # type: ignore[attr-defined]
        big = await pos.sale(BOB, amount=4900)  # under the ¥50 per-sale offline cap: ok
        over = await pos.sale(BOB, amount=5001)
        door = system.terminal(DoorReader, A, "DOOR-01")
        async with door as reader:  # type: ignore[attr-defined]
            still_opens = await reader.tap(BOB)
    assert big.ok and (over.ok, over.code) == (False, "offline_limit")
    assert still_opens.ok  # doors are not money: they go on
    with edge_db(edge) as conn:
        flags = conn.execute(
            "SELECT json_extract(payload, '$.offline') FROM outbox ORDER BY rowid"
        ).fetchall()
    assert flags and all(flag == 1 for (flag,) in flags)
