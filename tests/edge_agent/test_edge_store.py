"""The edge's SQLite store against real database files: migrations, group commit, outbox."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters.sqlite_migrations import MIGRATIONS
from edge_agent.adapters.sqlite_store import EdgeStore, StoreError
from edge_agent.seed import SeedError, apply_seed, load_seed
from protocol.messages import TerminalEvent

SITE = "SZ-FUTIAN"
NOW = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


def event(seq: int, rid: str) -> TerminalEvent:
    return TerminalEvent(
        id=rid, seq=seq, site=SITE, at=NOW, received_at=NOW, offline=False, event="tamper"
    )


def append_event(conn: sqlite3.Connection, store: EdgeStore) -> TerminalEvent:
    return outbox.append(conn, SITE, store.epoch, 1, event)


async def test_new_database_is_migrated_in_wal_with_full_sync_and_a_fresh_epoch(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        first_epoch = store.epoch
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = conn.execute("SELECT version FROM schema_migrations").fetchall()
    assert [v for (v,) in versions] == list(range(1, len(MIGRATIONS) + 1))
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        assert store.epoch == first_epoch  # reopening keeps the epoch
    (tmp_path / "edge.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"edge.db{suffix}").unlink(missing_ok=True)
    await asyncio.sleep(0.002)
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        assert store.epoch > first_epoch  # a recreated database is a new epoch


async def test_a_database_refuses_to_open_for_another_site(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE):
        pass
    with pytest.raises(StoreError, match="belongs to site SZ-FUTIAN"):
        async with EdgeStore.open(tmp_path / "edge.db", "BJ-CHAOYANG"):
            pass


async def test_concurrent_operations_share_commits_and_get_their_own_results(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        records = await asyncio.gather(
            *(store.run(partial(append_event, store=store)) for _ in range(200))
        )
        assert sorted(r.seq for r in records) == list(range(1, 201))
        assert store.stats.commits < 200  # group commit: many operations per fsync
        assert store.stats.max_batch > 1


async def test_a_failing_operation_rolls_back_alone_and_leaves_no_seq_gap(tmp_path: Path):
    def append_then_fail(conn: sqlite3.Connection, store: EdgeStore) -> None:
        append_event(conn, store)
        raise ValueError("decision blew up")

    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        ok1 = store.run(partial(append_event, store=store))
        bad = store.run(partial(append_then_fail, store=store))
        ok2 = store.run(partial(append_event, store=store))
        results = await asyncio.gather(ok1, bad, ok2, return_exceptions=True)
    assert isinstance(results[1], ValueError)
    assert (results[0].seq, results[2].seq) == (1, 2)  # type: ignore[union-attr]
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        assert conn.execute("SELECT seq FROM outbox ORDER BY seq").fetchall() == [(1,), (2,)]


async def test_outbox_rows_stay_until_an_ack_covers_them(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(5):
            await store.run(partial(append_event, store=store))
        assert (await store.run(outbox.depth))[0] == 5
        other_epoch = await store.run(lambda c: outbox.mark_acked(c, store.epoch + 1, 1, 5))
        assert other_epoch == 0  # an ack for another epoch covers nothing
        other_lane = await store.run(lambda c: outbox.mark_acked(c, store.epoch, 0, 5))
        assert other_lane == 0  # nor one for the other lane
        changed = await store.run(lambda c: outbox.mark_acked(c, store.epoch, 1, 3))
        rows = await store.run(lambda c: outbox.unacked(c, 1))
        assert changed == 3 and [r.seq for r in rows] == [4, 5]
        assert await store.run(lambda c: outbox.acked_watermark(c, 1)) == 3
        assert await store.run(lambda c: outbox.unacked(c, 0)) == []  # events go in lane 1


async def test_a_record_in_the_wrong_lane_is_refused(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        with pytest.raises(ValueError, match=r"terminal\.event records go in lane 1"):
            await store.run(lambda c: outbox.append(c, SITE, store.epoch, 0, event))


async def test_seq_is_never_reused_after_acked_rows_are_pruned(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(3):
            await store.run(partial(append_event, store=store))
        await store.run(lambda c: outbox.mark_acked(c, store.epoch, 1, 3))
        pruned = await store.run(lambda c: outbox.prune_acked(c, 2**62))
        record = await store.run(partial(append_event, store=store))
    assert pruned == 3 and record.seq == 4


def test_json_seed_errors_name_the_field(tmp_path: Path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({"site": SITE, "cards": [{"uid": "04A1B2C3", "person": "P1"}]}))
    with pytest.raises(SeedError, match=r"unknown field `person` - at `\$.cards\[0\]`"):
        load_seed(path)
    path.write_text(
        json.dumps(
            {
                "site": SITE,
                "persons": [{"id": "P1", "name": "张三"}],
                "cards": [{"uid": "04a1", "person_id": "P9"}],
                "terminals": [{"id": "POS-01", "kind": "pos", "key_hex": "abc"}],
            }
        )
    )
    with pytest.raises(SeedError) as info:
        load_seed(path)
    problems = "\n".join(info.value.problems)
    assert "$.cards[0].uid '04a1'" in problems
    assert "$.cards[0].person_id 'P9': no such person" in problems
    assert "$.terminals[0].key_hex" in problems


async def test_seed_loads_every_kind_and_twice_is_the_same(tmp_path: Path):
    path = tmp_path / "seed.json"
    path.write_text(
        json.dumps(
            {
                "site": SITE,
                "persons": [{"id": "P1", "name": "张三"}],
                "cards": [{"uid": "04A1B2C3D4E5F6", "person_id": "P1"}],
                "accounts": [{"person_id": "P1", "cash_fen": 500}],
                "tickets": [{"id": "T1", "person_id": "P1", "kind": "count", "service": "swim",
                             "remaining": 10}],
                "holidays": [{"day": "2026-10-01", "name": "国庆节"}],
                "blacklist": [{"uid": "04C0FFEE000001", "effective_at": "2026-11-01T00:00:00Z"}],
                "blacklist_version": 7,
            }
        )
    )  # fmt: skip
    seed = load_seed(path)
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(2):
            await store.run(lambda conn: apply_seed(conn, seed))
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        counts = [
            conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
            for t in ("persons", "cards", "accounts", "tickets", "holidays", "blacklist")
        ]
        version = conn.execute("SELECT value FROM meta WHERE key = 'blacklist_version'").fetchone()
    assert counts == [1, 1, 1, 1, 1, 1]
    assert version == ("7",)
