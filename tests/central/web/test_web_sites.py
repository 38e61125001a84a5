"""The site page over real HTTP: state and versions, terminals with their state and last
tap, today's totals, the recent records in the site's time zone, the "tail logs" entry
point for those who may use it, and its live stream."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from test_web_live import Events, fast
from web_harness import sign_in

from central import master
from central.web import sites
from protocol.messages import DoorAccess, Purchase, RechargeCommit, encode

SITE = "SZ-FUTIAN"
ALICE = "04A1B2C3D4E5F6"


async def signed_in(dash, username: str = "technician-1"):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


def terminals_and_birth(conn, now: datetime) -> None:
    master.upsert(
        conn, SITE, "policy", "policy", b'{"site": "SZ-FUTIAN", "timezone": "Asia/Tokyo"}'
    )
    for tid, kind, name in (("DOOR-01", "door", "Front door"), ("POS-01", "pos", "Canteen")):
        data = {"id": tid, "kind": kind, "key_hex": "00" * 16, "name": name}
        master.upsert(conn, SITE, "terminal", tid, msgspec.json.encode(data))
    birth = {
        "terminals": [
            {"id": "DOOR-01", "kind": "door", "online": True},
            {"id": "POS-01", "kind": "pos", "online": False},
        ]
    }
    conn.execute(
        "UPDATE sites SET online = 1, last_seen_ms = ?, version = '0.4.0', epoch = 3,"
        " state = ?, outbox_depth = 0 WHERE id = ?",
        (int(now.timestamp() * 1000), msgspec.json.encode(birth), SITE),
    )


def add_record(conn, record, lane: int, received: datetime) -> None:
    payload = encode(record)
    conn.execute(
        "INSERT INTO records (site, epoch, lane, seq, id, kind, payload, digest, received_ms)"
        " VALUES (?, 3, ?, ?, ?, ?, ?, ?, ?)",
        (
            SITE,
            lane,
            record.seq,
            record.id,
            type(record).__struct_config__.tag,
            payload,
            hashlib.sha256(payload).digest(),
            int(received.timestamp() * 1000),
        ),
    )
    conn.execute(
        "INSERT INTO lanes (site, epoch, lane, acked_seq, max_seen_seq) VALUES (?, 3, ?, ?, ?)"
        " ON CONFLICT (site, epoch, lane) DO UPDATE SET acked_seq = excluded.acked_seq,"
        " max_seen_seq = excluded.max_seen_seq",
        (SITE, lane, record.seq, record.seq),
    )


def common(seq: int, at: datetime, terminal: str) -> dict[str, object]:
    lane = 1 if terminal.startswith("DOOR") else 0
    return {
        "id": f"{SITE}:3:{lane}:{seq}",
        "seq": seq,
        "site": SITE,
        "terminal": terminal,
        "at": at,
        "received_at": at,
        "offline": False,
        "card_uid": ALICE,
    }


async def test_the_site_page_shows_terminals_today_and_recent_records_in_the_site_zone(dash):
    now = datetime(2026, 5, 1, 3, 0, tzinfo=UTC)  # noon in Tokyo: clear of the day's ends
    dash.clock.now = now.timestamp()
    yesterday = now - timedelta(days=2)
    lunch = now - timedelta(minutes=5)

    def setup(conn):
        terminals_and_birth(conn, now)
        # Two days ago: counted in no totals, but still the newest on its lane once.
        add_record(
            conn,
            Purchase(
                **common(1, yesterday, "POS-01"),
                approved=True,
                reason="ok",
                amount=999,
                cash_fen=999,
            ),
            0,
            yesterday,
        )
        add_record(
            conn,
            Purchase(
                **common(2, lunch, "POS-01"), approved=True, reason="ok", amount=1250, cash_fen=1250
            ),
            0,
            lunch,
        )
        add_record(
            conn,
            RechargeCommit(**common(3, lunch, "KIOSK-01"), pay_ref="PAY-1", amount=20000),
            0,
            lunch,
        )
        add_record(
            conn,
            DoorAccess(
                **common(1, lunch, "DOOR-01"),
                door="D1",
                granted=True,
                reason="ok",
                blacklist_version=0,
            ),
            1,
            lunch,
        )
        add_record(
            conn,
            DoorAccess(
                **common(2, now, "DOOR-01"),
                door="D1",
                granted=False,
                reason="blacklisted",
                blacklist_version=1,
            ),
            1,
            now,
        )

    await dash.store.run(setup)
    http = await signed_in(dash)
    page = (await http.get(f"/sites/{SITE}")).text
    assert 'data-live="/live/sites/SZ-FUTIAN"' in page
    assert "0.4.0" in page and "Site time zone: Asia/Tokyo" in page
    # Terminals: registered at HQ, state as the edge last reported, last tap from records.
    door = page[page.index('data-terminal="DOOR-01"') :].split("</tr>")[0]
    assert "Front door" in door and "Door reader" in door and "Online" in door
    assert "Refused" in door and "blacklisted" in door
    assert "2026-05-01 12:00:00" in door  # the site's zone (Tokyo), not HQ's (Shanghai)
    pos = page[page.index('data-terminal="POS-01"') :].split("</tr>")[0]
    assert "Offline" in pos and "Sale" in pos and "OK" in pos
    # Today's totals: today's records only, amounts in yuan.
    today = page[page.index('id="site-today"') :].split("</section>")[0]
    assert "Today (2026-05-01, business day in Asia/Tokyo)" in page
    assert "¥12.50" in today and "transactions: 1" in today
    assert "¥200.00" in today and "transactions: 1" in today.split("Recharges")[1]
    assert "1 opened · 1 refused" in today
    # Recent records, newest first.
    records = page[page.index('id="records"') :]
    assert records.index(f"{SITE}:3:1:2") < records.index(f"{SITE}:3:0:2")
    assert "¥9.99" in records


async def test_tail_logs_is_offered_to_technicians_and_admins_only(dash):
    for username, offered in (
        ("technician-1", True),
        ("admin-1", True),
        ("operator-1", False),
        ("auditor-1", False),
    ):
        http = await signed_in(dash, username)
        page = (await http.get(f"/sites/{SITE}")).text
        assert ('href="/sites/SZ-FUTIAN/logs"' in page) is offered, username


async def test_an_unknown_site_is_a_404_page(dash):
    http = await signed_in(dash)
    answer = await http.get("/sites/NOPE")
    assert answer.status_code == 404 and "There is no site NOPE." in answer.text
    assert (await http.get("/live/sites/NOPE")).status_code == 404


async def test_a_site_with_nothing_yet_says_so(dash):
    http = await signed_in(dash)
    page = (await http.get("/sites/BJ-CHAOYANG")).text
    assert "No records from this site yet." in page
    assert "No terminals are registered at this site." in page
    assert "Never connected" in page


async def test_the_site_stream_sends_a_new_record_as_it_arrives(dash):
    fast(dash)
    now = datetime.fromtimestamp(dash.clock.now, UTC)
    await dash.store.run(lambda conn: terminals_and_birth(conn, now))
    http = await signed_in(dash)
    async with http.stream("GET", f"/live/sites/{SITE}") as answer:
        events = Events(answer)
        _, parts = await events.next()
        assert set(parts) == set(sites.LIVE_PARTS)
        assert "No records from this site yet." in parts["site-records"]
        door = DoorAccess(
            **common(1, now, "DOOR-01"), door="D1", granted=True, reason="ok", blacklist_version=0
        )
        await dash.store.run(lambda conn: add_record(conn, door, 1, now))
        async with asyncio.timeout(3):
            while True:
                _, parts = await events.next()
                if "site-records" in parts:
                    break
        assert f"{SITE}:3:1:1" in parts["site-records"]
        assert "1 opened · 0 refused" in parts["site-state"]


@pytest.mark.store_fixed  # reads a SQLite file of its own, whatever the run's store
def test_the_first_record_received_today_is_found_by_binary_search(tmp_path):
    import sqlite3

    from central.adapters.sqlite_schema import MIGRATIONS
    from edge_agent.adapters.sqlite_migrations import migrate

    conn = sqlite3.connect(tmp_path / "c.db")
    migrate(conn, MIGRATIONS)
    # seqs 1..100 (with a hole at 50..59) received at 1000 * seq ms
    for seq in [s for s in range(1, 101) if not 50 <= s < 60]:
        conn.execute(
            "INSERT INTO records (site, epoch, lane, seq, id, kind, payload, digest,"
            " received_ms) VALUES ('S', 1, 0, ?, ?, 'x', x'', x'', ?)",
            (seq, f"r{seq}", seq * 1000),
        )
    find = sites._first_seq_received_since
    assert find(conn, "S", 1, 0, 0) == 1
    assert find(conn, "S", 1, 0, 30_500) == 31
    assert find(conn, "S", 1, 0, 52_000) in range(50, 61)
    assert find(conn, "S", 1, 0, 101_000) == 101
    assert find(conn, "S", 1, 1, 0) == 0  # an empty lane


async def test_the_latest_health_report_beats_the_birth_message(dash):
    now = datetime.fromtimestamp(dash.clock.now, UTC)

    def setup(conn):
        terminals_and_birth(conn, now)  # the birth: POS-01 offline, outbox 0
        conn.execute(
            "INSERT INTO site_health (site, received_ms, at_ms, terminals, outbox_depth)"
            " VALUES (?, 0, 0, ?, 5)",
            (
                SITE,
                msgspec.json.encode(
                    [
                        {"id": "DOOR-01", "kind": "door", "online": True},
                        {"id": "POS-01", "kind": "pos", "online": True},
                    ]
                ).decode(),
            ),
        )

    await dash.store.run(setup)
    http = await signed_in(dash)
    overview = (await http.get("/")).text
    row = overview[overview.index(f'data-site="{SITE}"') :].split("</tr>")[0]
    assert "2/2" in row and ">\n        5\n" in row
    page = (await http.get(f"/sites/{SITE}")).text
    pos = page[page.index('data-terminal="POS-01"') :].split("</tr>")[0]
    assert "Online" in pos
