"""The edge's SQLite store against real database files: migrations, group commit, outbox."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest

from edge_agent.adapters import sqlite_facts as facts
from edge_agent.adapters import sqlite_outbox as outbox
from edge_agent.adapters import sqlite_store
from edge_agent.adapters.sqlite_facts import dt
from edge_agent.adapters.sqlite_migrations import MIGRATIONS, migrate
from edge_agent.adapters.sqlite_store import (
    EdgeStore,
    MetaCounters,
    StoreError,
    StoreUnavailableError,
)
from edge_agent.core.purses import Purses
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


async def test_an_ack_is_one_watermark_never_ahead_of_the_records_written(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(3):
            await store.run(partial(append_event, store=store))
        # central cannot have committed seq 9: the ack covers what exists, no more
        assert await store.run(lambda c: outbox.mark_acked(c, store.epoch, 1, 9)) == 3
        assert await store.run(lambda c: outbox.acked_watermark(c, 1)) == 3
        assert await store.run(lambda c: outbox.mark_acked(c, store.epoch, 1, 2)) == 0  # stale
        fourth = await store.run(partial(append_event, store=store))
        assert [r.seq for r in await store.run(lambda c: outbox.unacked(c, 1))] == [fourth.seq]
        assert (await store.run(outbox.depth))[0] == 1
    with sqlite3.connect(tmp_path / "edge.db") as conn:  # the `outbox` view tells the same
        assert conn.execute("SELECT seq, acked FROM outbox ORDER BY rowid").fetchall() == [
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 0),
        ]
        assert conn.execute(outbox.DEPTH_SQL).fetchone() == (1,)


def test_upgrading_an_outbox_with_acked_flags_keeps_what_was_acked(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    migrate(conn, MIGRATIONS[:1])  # the schema before acked became a watermark
    for lane, seq, acked in [(0, 1, 1), (0, 2, 1), (0, 3, 0), (1, 1, 1), (1, 2, 0)]:
        conn.execute(
            "INSERT INTO outbox (lane, seq, epoch, id, kind, payload, created_ms, acked)"
            " VALUES (?, ?, 7, ?, 'k', x'7b7d', ?, ?)",
            (lane, seq, f"r{lane}.{seq}", seq, acked),
        )
    conn.execute("INSERT INTO meta VALUES ('acked_seq_1', '0')")  # behind its rows: repaired
    assert migrate(conn) == list(range(2, len(MIGRATIONS) + 1))
    assert dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE 'acked_seq_%'")) == {
        "acked_seq_0": "2",
        "acked_seq_1": "1",
    }
    unacked = conn.execute("SELECT lane, seq FROM outbox WHERE acked = 0 ORDER BY lane, seq")
    assert unacked.fetchall() == [(0, 3), (1, 2)]
    assert outbox.depth(conn) == (2, 2)
    assert outbox.prune_acked(conn, older_than_ms=10) == 3
    assert conn.execute("SELECT count(*) FROM outbox_rows").fetchone() == (2,)
    conn.close()


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


# -- the in-memory seq counters, quick operations, background checkpoints ----------------------


def _meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM meta"))


async def test_the_seq_counter_row_is_written_with_each_commit(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        records = await asyncio.gather(
            *(store.run(partial(append_event, store=store), quick=True) for _ in range(50))
        )
        # Read by another connection while the store is open: the row is already committed.
        assert _meta(tmp_path / "edge.db")["next_seq_1"] == "51"
        assert sorted(r.seq for r in records) == list(range(1, 51))


_CRASH_SCRIPT = """
import asyncio, os, signal, sys
from functools import partial
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_edge_store import SITE, append_event
from edge_agent.adapters.sqlite_store import EdgeStore

async def main():
    store = EdgeStore(path=Path({db!r}), site=SITE)
    await store.start()
    for _ in range(5):  # five group commits of 20 taps each, some on the loop's thread
        await asyncio.gather(
            *(store.run(partial(append_event, store=store), quick=i % 2 == 0) for i in range(20))
        )
    print("committed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no final checkpoint: the WAL stays

asyncio.run(main())
"""


async def test_after_kill_9_the_next_seq_follows_the_last_committed_one(tmp_path: Path):
    db = tmp_path / "edge.db"
    script = _CRASH_SCRIPT.format(tests=str(Path(__file__).parent), db=str(db))
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "committed"
    assert (tmp_path / "edge.db-wal").exists()  # recovered from the WAL on the next open
    async with EdgeStore.open(db, SITE) as store:
        record = await store.run(partial(append_event, store=store), quick=True)
    assert record.seq == 101
    with sqlite3.connect(db) as conn:
        seqs = [s for (s,) in conn.execute("SELECT seq FROM outbox WHERE lane = 1 ORDER BY seq")]
    assert seqs == list(range(1, 102))


async def test_a_counter_row_behind_the_outbox_never_hands_out_a_used_seq(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(7):
            await store.run(partial(append_event, store=store))
    with sqlite3.connect(tmp_path / "edge.db") as conn:  # e.g. a database from an older edge
        conn.execute("UPDATE meta SET value = '3' WHERE key = 'next_seq_1'")
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        record = await store.run(partial(append_event, store=store))
    assert record.seq == 8
    assert _meta(tmp_path / "edge.db")["next_seq_1"] == "9"


async def test_a_failed_commit_gives_its_seqs_back(tmp_path: Path, monkeypatch):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        await store.run(partial(append_event, store=store))
        real_flush = MetaCounters.flush

        def failing_flush(self: MetaCounters, conn: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(MetaCounters, "flush", failing_flush)
        results = await asyncio.gather(
            *(store.run(partial(append_event, store=store), quick=True) for _ in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreUnavailableError) for r in results)
        monkeypatch.setattr(MetaCounters, "flush", real_flush)
        record = await store.run(partial(append_event, store=store), quick=True)
    assert record.seq == 2
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        assert conn.execute("SELECT seq FROM outbox ORDER BY seq").fetchall() == [(1,), (2,)]


async def test_quick_operations_run_on_the_loop_and_roll_back_alone(tmp_path: Path):
    loop_thread = threading.get_ident()

    def where(conn: sqlite3.Connection) -> int:
        append_event(conn, store)
        return threading.get_ident()

    def append_then_fail(conn: sqlite3.Connection) -> None:
        append_event(conn, store)
        raise ValueError("decision blew up")

    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        results = await asyncio.gather(
            store.run(where, quick=True),
            store.run(append_then_fail, quick=True),
            store.run(where, quick=True),
            return_exceptions=True,
        )
        assert results[0] == results[2] == loop_thread
        assert isinstance(results[1], ValueError)
        slow = await store.run(where)  # not quick: the writer thread
        assert slow != loop_thread
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        assert conn.execute("SELECT seq FROM outbox ORDER BY seq").fetchall() == [
            (1,),
            (2,),
            (3,),
        ]


async def test_quick_operations_wait_for_another_writer_off_the_loop(tmp_path: Path):
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        other = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. a CLI command writing to the site's database
        pending = asyncio.ensure_future(store.run(partial(append_event, store=store), quick=True))
        ticks = 0
        while ticks < 20:  # the event loop keeps running while the writer waits
            await asyncio.sleep(0.01)
            ticks += 1
        assert not pending.done()
        other.execute("COMMIT")
        other.close()
        record = await asyncio.wait_for(pending, 10)
    assert record.seq == 1


async def test_background_checkpoints_keep_the_wal_bounded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_AFTER_CHANGES", 50)
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_INTERVAL_S", 0.0)
    monkeypatch.setattr(sqlite_store, "WAL_WRAP_FRAMES", 64)
    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        for _ in range(40):
            await asyncio.gather(
                *(store.run(partial(append_event, store=store), quick=True) for _ in range(10))
            )
            await asyncio.sleep(0.005)
        with sqlite3.connect(tmp_path / "edge.db") as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 0  # others: default
            assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 400
        wraps = store.stats.wal_wraps
    assert store.stats.checkpoints > 0
    assert wraps > 0
    with sqlite3.connect(tmp_path / "edge.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT max(seq) FROM outbox").fetchone()[0] == 400


async def test_the_one_query_sale_facts_equal_the_separate_lookups(tmp_path: Path):
    path = tmp_path / "seed.json"
    path.write_text(
        json.dumps(
            {
                "site": SITE,
                "persons": [{"id": "P1", "name": "张三"}, {"id": "P2", "name": "李四"},
                            {"id": "P3", "name": "王五"}],
                "cards": [
                    {"uid": "04A1B2C3D4E5F6", "person_id": "P1"},
                    {"uid": "04A1B2C3D4E5F7", "person_id": "P2", "status": "lost"},
                    {"uid": "04A1B2C3D4E5F8", "person_id": "P3"},  # no account
                ],
                "accounts": [
                    {"person_id": "P1", "cash_fen": 500, "subsidy_fen": 70, "covers_seq": 2,
                     "daily_limit_fen": 9000},
                    {"person_id": "P2", "cash_fen": 300},
                ],
                "blacklist": [{"uid": "04A1B2C3D4E5F7", "effective_at": "2026-11-01T00:00:00Z"},
                              {"uid": "04C0FFEE000001", "effective_at": "2026-11-01T00:00:00Z"}],
            }
        )
    )  # fmt: skip
    day_start = int(NOW.timestamp() * 1000) - 3_600_000
    day_end = day_start + 86_400_000

    def op(conn: sqlite3.Connection) -> list[tuple[object, object]]:
        apply_seed(conn, load_seed(path))
        conn.execute(  # a card whose person has not reached this site (yet)
            "INSERT INTO cards (uid, person_id, status) VALUES ('04A1B2C3D4E5F9', 'P9', 'active')"
        )
        conn.executemany(
            "INSERT INTO local_deltas (seq, person_id, cash_fen, subsidy_fen) VALUES (?, ?, ?, ?)",
            [(1, "P1", -100, 0), (2, "P1", 0, -20), (3, "P1", -30, -5), (4, "P2", -7, 0)],
        )
        conn.executemany(
            "INSERT INTO purchases (seq, person_id, card_uid, amount, at_ms, offline)"
            " VALUES (?, ?, ?, ?, ?, 0)",
            [(1, "P1", "04A1B2C3D4E5F6", 100, day_start - 1), (2, "P1", "x", 20, day_start),
             (3, "P1", "x", 35, day_end - 1), (4, "P1", "x", 9, day_end)],
        )  # fmt: skip
        pairs = []
        uids = ("04A1B2C3D4E5F6", "04A1B2C3D4E5F7", "04A1B2C3D4E5F8", "04C0FFEE000001", "FF",
                "04A1B2C3D4E5F9")  # fmt: skip
        for uid in uids:
            card = facts.card_facts(conn, uid)
            pid = card.card.person_id if card.card else None
            account = facts.account(conn, pid) if pid else None
            separate = (
                card,
                account,
                facts.pending(conn, pid, account.covers_seq if account else 0) if pid else Purses(),
                facts.spent_between(conn, pid, dt(day_start), dt(day_end))[1] if pid else 0,  # type: ignore[arg-type]
            )
            pairs.append((facts.card_purchase_facts(conn, uid, day_start, day_end), separate))
        return pairs

    async with EdgeStore.open(tmp_path / "edge.db", SITE) as store:
        pairs = await store.run(op)
    for merged, separate in pairs:
        assert merged == separate
    _card, account, pending, spent = pairs[0][0]  # type: ignore[misc]
    assert account is not None and account.covers_seq == 2
    assert pending == Purses(cash_fen=-30, subsidy_fen=-5)  # only seq > covers_seq
    assert spent == 55  # [day_start, day_end)
    assert pairs[3][0][0].blacklisted  # type: ignore[index]  # unknown card on the list
