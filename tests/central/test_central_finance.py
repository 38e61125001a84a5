"""Clearing, settlement, 单边账 and reconciliation against central's real store, records
arriving through ingest exactly as sites send them."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from stores import central_db, open_store

from central import finance, master, operations
from central.adapters.sqlite_store import CentralStore
from central.cli import main
from central.core.clearing import SiteDay, to_csv
from central.core.money import Recharge
from central.ingest import ingest_batch
from protocol.messages import (
    Purchase,
    RawRecordBatch,
    RechargeCommit,
    RechargePrepare,
    decode,
    encode,
)

SITE = "SZ-FUTIAN"
EPOCH = 1_795_440_000_000
ALICE = "04A1B2C3D4E5F6"
DAY = date(2026, 11, 26)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    seed = msgspec.convert(
        {
            "persons": [{"id": "P1", "name": "Alice"}],
            "cards": [{"uid": ALICE, "person_id": "P1"}],
            "accounts": [{"person_id": "P1", "cash_fen": 100_000}],
            "sites": {SITE: {"policy": {"site": SITE, "timezone": "Asia/Shanghai"}}},
        },
        master.CentralSeed,
    )

    def setup(conn: sqlite3.Connection) -> None:
        master.apply_seed(conn, seed, batch="t")
        finance.set_clearing_config(conn, SiteDay(timezone="Asia/Shanghai", cutoff_hour=4))

    async with open_store(central_db(tmp_path)) as central:
        await central.run(setup)
        yield central


class Site:
    """Sends lane-0 records in order, as an edge would."""

    def __init__(self, store: CentralStore) -> None:
        self.store, self.seq = store, 0

    def common(self, at: datetime) -> dict[str, Any]:
        self.seq += 1
        return {
            "id": f"{SITE}.{EPOCH}.0.{self.seq}",
            "seq": self.seq,
            "site": SITE,
            "at": at,
            "received_at": at,
            "offline": False,
            "card_uid": ALICE,
        }

    async def send(self, record: Any) -> None:
        body = {
            "site": SITE,
            "epoch": EPOCH,
            "lane": 0,
            "first_seq": record.seq,
            "last_seq": record.seq,
            "records": [json.loads(encode(record))],
        }
        raw = decode(json.dumps(body).encode(), RawRecordBatch)
        arrived = int(record.at.timestamp() * 1000) + 500
        await self.store.run(lambda conn: ingest_batch(conn, SITE, raw, topic="t", now_ms=arrived))

    async def sale(self, at: datetime, fen: int) -> None:
        await self.send(
            Purchase(
                **self.common(at),
                terminal="POS-1",
                approved=True,
                reason="ok",
                amount=fen,
                cash_fen=fen,
            )
        )

    async def prepare(self, at: datetime, ref: str, fen: int) -> None:
        await self.send(
            RechargePrepare(
                **self.common(at), terminal="KIOSK-1", pay_ref=ref, amount=fen, method="online"
            )
        )

    async def commit(self, at: datetime, ref: str, fen: int) -> None:
        await self.send(
            RechargeCommit(**self.common(at), terminal="KIOSK-1", pay_ref=ref, amount=fen)
        )


async def test_a_day_clears_reproducibly_and_a_late_record_makes_a_visible_revision(store):
    site = Site(store)
    await site.commit(utc("2026-11-26T02:00"), "K-1", 10_000)  # 10:00 local
    await site.sale(utc("2026-11-26T04:00"), 1500)  # 12:00 local
    await site.sale(utc("2026-11-26T18:30"), 500)  # 02:30 local on the 27th: still the 26th
    await site.sale(utc("2026-11-26T20:30"), 700)  # 04:30 local on the 27th: the next day
    hq = Recharge(
        request_id="hq-1",
        operator="fin",
        source="hq:cli",
        card_uid=ALICE,
        amount_fen=2000,
        method="cash",
    )
    await store.run(lambda conn: operations.execute(conn, hq, now=utc("2026-11-26T03:00")))

    first = await store.run(lambda conn: finance.clear(conn, SITE, DAY))
    t = first.totals
    assert (t.recharge_fen, t.purchase_fen, t.taken_in_fen, t.consumption_fen) == (
        10_000,
        2000,
        10_000,
        2000,
    )
    assert t.net_position_fen == -8000  # the site holds ¥80 more than it served: it remits
    again = await store.run(lambda conn: finance.clear(conn, SITE, DAY))
    assert (again.revision, again.digest) == (1, first.digest)  # reproducible

    await site.sale(utc("2026-11-26T05:00"), 300)  # an offline till's sale, arriving late
    revised = await store.run(lambda conn: finance.refresh(conn, now=utc("2026-11-27T06:00")))
    assert [(r.site, r.revision) for r in revised] == [(SITE, 2)]
    note = revised[0].revisions[-1]
    assert note.late_entries == 1
    assert {c.field for c in note.changed} >= {"totals.purchase_fen", "totals.consumption_fen"}

    settled = await store.run(lambda conn: finance.settlement(conn, DAY, DAY))
    lines = {line.site: line.net_fen for line in settled.lines}
    assert lines == {SITE: -7700}
    assert settled.hq_net_fen == 7700  # the list sums to zero with HQ
    assert settled.hq_desk_taken_in_fen == 2000
    assert to_csv([revised[0]]).startswith(b"\xef\xbb\xbf")


STATEMENT = """交易时间,商户订单号,金额,状态
2026-11-27 09:00:00,WX-C,20.00,成功
2026-11-27 10:31:00,WX-A,50.00,成功
2026-11-27 12:00:00,WX-E,10.00,成功
"""


async def balance(store: CentralStore) -> int:
    rows = await store.run(
        lambda conn: conn.execute("SELECT cash_fen FROM accounts WHERE person_id = 'P1'").fetchone()
    )
    return int(rows[0])


async def test_a_unilateral_recharge_is_flagged_then_credited_once_on_proof(store):
    site = Site(store)
    await site.prepare(utc("2026-11-27T01:00"), "WX-C", 2000)
    await site.commit(utc("2026-11-27T01:00"), "WX-C", 2000)
    await site.prepare(utc("2026-11-27T02:30"), "WX-A", 5000)  # money taken, commit lost
    await site.prepare(utc("2026-11-27T02:40"), "WX-B", 3000)  # customer walked away
    now = utc("2026-11-27T06:00")
    raised = await store.run(lambda conn: finance.flag_uncommitted(conn, now=now))
    raised_again = await store.run(lambda conn: finance.flag_uncommitted(conn, now=now))
    assert (raised, raised_again) == (2, 0)
    before = await balance(store)

    def go(apply: bool) -> Any:
        return store.run(
            lambda conn: finance.reconcile_statement(
                conn,
                STATEMENT.encode("gbk"),
                "wx.csv",
                operator="fin-wu",
                source="hq:cli",
                apply=apply,
                now=now,
            )
        )

    preview = await go(False)
    assert preview.credited == () and await balance(store) == before
    by_ref = {i.pay_ref: (i.category, i.resolution) for i in preview.result.items}
    assert by_ref == {
        "WX-A": ("matched", "credit_once"),
        "WX-B": ("only_in_onecard", "void"),
        "WX-C": ("matched", "ok"),
        "WX-E": ("only_in_statement", "review"),
    }
    applied = await go(True)
    assert (applied.credited, applied.voided) == (("WX-A",), ("WX-B",))
    assert await balance(store) == before + 5000
    twice = await go(True)
    assert (twice.credited, twice.voided) == ((), ())
    assert await balance(store) == before + 5000  # credited once, ever
    states = await store.run(
        lambda conn: conn.execute(
            "SELECT json_extract(detail, '$.pay_ref'), state FROM anomalies"
            " WHERE kind = 'recharge_uncommitted' ORDER BY 1"
        ).fetchall()
    )
    assert states == [("WX-A", "resolved"), ("WX-B", "resolved")]


def test_clearing_and_reconcile_from_the_command_line(tmp_path):
    db = central_db(tmp_path)
    env = {"ONECARD_CENTRAL_DB": str(db), "SUDO_USER": "fin-wu"}
    runner = CliRunner()
    assert runner.invoke(main, ["clearing", "config", "--cutoff-hour", "4"], env=env).exit_code == 0
    out = tmp_path / "day.csv"
    day = runner.invoke(
        main, ["clearing", "day", "--date", "2026-11-26", "--csv", str(out)], env=env
    )
    assert day.exit_code == 0, day.output
    assert "HQ" in day.output and out.read_bytes().startswith(b"\xef\xbb\xbf")
    statement = tmp_path / "s.csv"
    statement.write_bytes(STATEMENT.encode("gbk"))
    rec = runner.invoke(main, ["reconcile", str(statement)], env=env)
    assert rec.exit_code == 0, rec.output
    assert "only in statement 3" in rec.output and "not applied" in rec.output
    tz = runner.invoke(main, ["clearing", "config", "--timezone", "Asia/Urumqi"], env=env)
    assert "starts at 04:00" in tz.output and "Asia/Urumqi" in tz.output  # cut-off kept
    bad = runner.invoke(main, ["clearing", "day", "--date", "26/11/2026"], env=env)
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.output


async def test_a_payment_prepared_just_before_the_statements_first_line_is_still_found(store):
    site = Site(store)
    await site.prepare(utc("2026-11-27T00:59:50"), "WX-EARLY", 2500)  # 08:59:50 local
    statement = "交易时间,商户订单号,金额\n2026-11-27 09:00:02,WX-EARLY,25.00\n"
    now = utc("2026-11-27T06:00")
    run = await store.run(
        lambda conn: finance.reconcile_statement(
            conn, statement.encode(), "s.csv", operator="fin", source="hq:cli", apply=True, now=now
        )
    )
    assert run.credited == ("WX-EARLY",)
