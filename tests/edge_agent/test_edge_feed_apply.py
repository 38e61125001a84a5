"""Applying central's feed and blacklist at the edge: version rules and balances' covers."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.adapters.mqtt_sync import _apply_blacklist
from edge_agent.adapters.sqlite_master import clear_master, delete_from_feed, upsert_from_feed
from edge_agent.adapters.sqlite_migrations import migrate
from edge_agent.adapters.sqlite_store import set_meta
from protocol.messages import BlacklistChange, BlacklistDelta

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
AT = datetime(2026, 11, 23, 4, 0, tzinfo=UTC)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "edge.db", isolation_level=None)
    migrate(db)
    set_meta(db, "blacklist_version", 0)
    return db


def delta(version: int, prev: int, *uids: str, op: str = "add") -> BlacklistDelta:
    return BlacklistDelta(
        version=version,
        prev_version=prev,
        at=AT,
        changes=[
            BlacklistChange(op=op, card_uid=u, reason="lost", effective_at=AT)  # type: ignore[arg-type]
            for u in uids
        ],
    )


def listed(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT uid FROM blacklist")}


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key='blacklist_version'").fetchone()[0])


def test_blacklist_deltas_apply_in_chain_order_even_if_they_arrive_shuffled(conn):
    gap = _apply_blacklist(conn, [delta(2, 1, "04BBBBBB"), delta(1, 0, "04AAAAAA")])
    assert not gap and listed(conn) == {"04AAAAAA", "04BBBBBB"} and version(conn) == 2


def test_a_delta_already_applied_is_ignored_and_a_gap_stops_and_is_reported(conn):
    _apply_blacklist(conn, [delta(1, 0, "04AAAAAA")])
    assert not _apply_blacklist(conn, [delta(1, 0, "04AAAAAA")])
    assert _apply_blacklist(conn, [delta(3, 2, "04CCCCCC")])  # 2 is missing
    assert listed(conn) == {"04AAAAAA"} and version(conn) == 1


def test_a_remove_takes_a_card_off_the_list(conn):
    _apply_blacklist(conn, [delta(1, 0, "04AAAAAA"), delta(2, 1, "04AAAAAA", op="remove")])
    assert listed(conn) == set() and version(conn) == 2


def test_an_account_covers_only_this_sites_records_of_this_epoch(conn):
    data = {"person_id": "P1", "cash_fen": 900, "covers": {SITE: [EPOCH, 42], "BJ01": [7, 99]}}
    upsert_from_feed(conn, "account", data, site=SITE, epoch=EPOCH)
    assert conn.execute("SELECT cash_fen, covers_seq FROM accounts").fetchone() == (900, 42)
    upsert_from_feed(conn, "account", data, site=SITE, epoch=EPOCH + 1)  # a recreated database
    assert conn.execute("SELECT covers_seq FROM accounts").fetchone() == (0,)
    upsert_from_feed(conn, "account", data, site="GZ-TIANHE", epoch=EPOCH)  # never sold here
    assert conn.execute("SELECT covers_seq FROM accounts").fetchone() == (0,)


def test_feed_rows_are_validated_strictly(conn):
    with pytest.raises(Exception, match="unknown field"):
        upsert_from_feed(
            conn, "person", {"id": "P1", "name": "x", "salary": 1}, site=SITE, epoch=EPOCH
        )


def test_time_zones_with_weekday_keys_round_trip_through_the_feed(conn):
    zone = {"id": "24H", "weekly": {"0": [[0, 1440]]}, "holiday": []}
    upsert_from_feed(conn, "time_zone", zone, site=SITE, epoch=EPOCH)
    assert conn.execute("SELECT id FROM time_zones").fetchall() == [("24H",)]


def test_deletes_and_snapshot_clearing(conn):
    upsert_from_feed(conn, "person", {"id": "P1", "name": "张三"}, site=SITE, epoch=EPOCH)
    grant = {"person_id": "P1", "access_level_id": "ALL"}
    upsert_from_feed(conn, "access_grant", grant, site=SITE, epoch=EPOCH)
    delete_from_feed(conn, "access_grant", "P1:ALL")
    assert conn.execute("SELECT count(*) FROM access_grants").fetchone() == (0,)
    clear_master(conn)
    assert conn.execute("SELECT count(*) FROM persons").fetchone() == (0,)


def test_a_feed_row_the_edge_cannot_take_is_a_message_error_not_a_crash(conn):
    from protocol.errors import MessageError

    with pytest.raises(MessageError, match="not kept at the edge"):
        upsert_from_feed(conn, "site_config", {"x": 1}, site=SITE, epoch=EPOCH)
    with pytest.raises(MessageError, match="feed person"):
        upsert_from_feed(conn, "person", {"id": 5}, site=SITE, epoch=EPOCH)
