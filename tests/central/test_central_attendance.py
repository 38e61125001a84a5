"""Attendance at HQ over a real central database: punches taken at ingest (late ones too),
manual punches and leave in the audit log, departments in a tree, and a department's month
matching a hand-computed fixture, as a table, CSV and XLSX."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import openpyxl
import pytest
from click.testing import CliRunner
from stores import central_db, db_of, open_store

from central import attendance as att
from central import master
from central.adapters.sqlite_store import CentralStore
from central.cli import main as cli
from central.core.attendance_rules import Break, RosterEntry, Shift
from central.ingest import ingest_batch
from protocol.messages import AttendancePunch, RawRecordBatch, decode, encode

SITE = "SZ-FUTIAN"
EPOCH = 1_795_000_000_000
SH = ZoneInfo("Asia/Shanghai")
MONDAY = date(2026, 11, 2)
DAY = Shift("day", time(9), time(18), late_grace=5, breaks=(Break(time(12), time(13)),))
CARDS = {"ANN": "04A1B2C3D40001", "BOB": "04A1B2C3D40002", "CAT": "04A1B2C3D40003"}


def at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=SH).astimezone(UTC)


def punch(seq: int, who: str, when: datetime, *, reason: str = "ok") -> AttendancePunch:
    return AttendancePunch(
        id=f"{SITE}.{EPOCH}.1.{seq}",
        seq=seq,
        site=SITE,
        terminal="CLOCK-01",
        at=when,
        received_at=when,
        offline=False,
        card_uid=CARDS[who],
        accepted=True,
        reason=reason,
    )


def batch(records: list[AttendancePunch]) -> RawRecordBatch:
    body = {
        "site": SITE,
        "epoch": EPOCH,
        "lane": 1,
        "first_seq": records[0].seq,
        "last_seq": records[-1].seq,
        "records": [json.loads(encode(r)) for r in records],
    }
    return decode(json.dumps(body).encode(), RawRecordBatch)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CentralStore]:
    people = [("ANN", "安娜", "ops-east"), ("BOB", "鲍勃", "ops"), ("CAT", "凯特", "finance")]
    seed = msgspec.convert(
        {
            "persons": [
                {"id": pid, "name": name, "kind": "staff", "number": f"E{i}", "department": dept}
                for i, (pid, name, dept) in enumerate(people)
            ],
            "cards": [{"uid": uid, "person_id": pid} for pid, uid in CARDS.items()],
            "sites": {SITE: {}},
        },
        master.CentralSeed,
    )

    def setup(conn: sqlite3.Connection) -> None:
        master.apply_seed(conn, seed, batch="t")
        att.put_department(conn, "hq", "总部", None, operator="hr")
        att.put_department(conn, "ops", "运营", "hq", operator="hr")
        att.put_department(conn, "ops-east", "运营东区", "ops", operator="hr")
        att.put_department(conn, "finance", "财务", "hq", operator="hr")
        att.put_shift(conn, DAY, operator="hr")
        att.add_roster(conn, RosterEntry("day", date(2026, 1, 1), department="hq"), operator="hr")
        att.set_calendar_day(conn, MONDAY + timedelta(days=2), "holiday", operator="hr")

    async with open_store(central_db(tmp_path)) as central:
        await central.run(setup)
        yield central


async def ingest(store: CentralStore, records: list[AttendancePunch]) -> None:
    await store.run(
        lambda conn: ingest_batch(conn, SITE, batch(records), topic="t", now_ms=1_795_440_000_000)
    )


async def test_counted_punches_are_taken_at_ingest_and_repeats_are_not(store: CentralStore):
    await ingest(
        store,
        [
            punch(1, "ANN", at(MONDAY, 8, 55)),
            punch(2, "ANN", at(MONDAY, 8, 56), reason="duplicate_punch"),
            punch(3, "BOB", at(MONDAY, 9, 1)),
        ],
    )
    await ingest(store, [punch(1, "ANN", at(MONDAY, 8, 55))])  # a resend: nothing new
    rows = await store.run(
        lambda c: c.execute("SELECT id, person_id, source FROM att_punches ORDER BY id").fetchall()
    )
    assert rows == [
        (f"{SITE}.{EPOCH}.1.1", "ANN", "terminal"),
        (f"{SITE}.{EPOCH}.1.3", "BOB", "terminal"),
    ]


async def test_a_punch_from_a_site_that_was_offline_changes_the_report_when_it_arrives(
    store: CentralStore,
):
    await ingest(store, [punch(1, "ANN", at(MONDAY, 18, 2))])
    ann = att.Member("ANN", "安娜", "E0", "ops-east")
    (before,) = await store.run(lambda c: att.person_days(c, ann, [MONDAY]))
    assert before.missing_in
    # the clock's buffer (a gap in seq, filled later) brings the morning punch a day late
    await ingest(store, [punch(3, "ANN", at(MONDAY + timedelta(days=1), 9))])
    await ingest(store, [punch(2, "ANN", at(MONDAY, 9, 20))])
    (after,) = await store.run(lambda c: att.person_days(c, ann, [MONDAY]))
    assert (after.missing_in, after.late, after.worked) == (False, 20, 460)


async def test_manual_punches_need_a_reason_and_are_audited(store: CentralStore):
    with pytest.raises(att.AttendanceError, match="reason"):
        await store.run(
            lambda c: att.add_manual_punch(c, "BOB", at(MONDAY, 9), operator="hr", note=" ")
        )
    with pytest.raises(att.AttendanceError, match="unknown person"):
        await store.run(
            lambda c: att.add_manual_punch(c, "NOBODY", at(MONDAY, 9), operator="hr", note="x")
        )
    await store.run(
        lambda c: att.add_manual_punch(
            c, "BOB", at(MONDAY, 9), operator="hr-li", note="忘带卡 forgot card"
        )
    )
    audit = await store.run(
        lambda c: c.execute(
            "SELECT operator, action, target, note FROM audit WHERE action LIKE 'attendance.punch%'"
        ).fetchall()
    )
    assert audit == [("hr-li", "attendance.punch_add", "BOB", "忘带卡 forgot card")]


async def test_the_department_tree_refuses_cycles_and_unknown_parents(store: CentralStore):
    with pytest.raises(att.AttendanceError, match="own subtree"):
        await store.run(lambda c: att.put_department(c, "hq", "总部", "ops-east", operator="hr"))
    with pytest.raises(att.AttendanceError, match="unknown parent"):
        await store.run(lambda c: att.put_department(c, "x", "X", "nowhere", operator="hr"))
    chain = await store.run(lambda c: att.ancestors(c, "ops-east"))
    assert chain == ["ops-east", "ops", "hq"]
    people = await store.run(lambda c: att.members(c, "ops"))
    assert [m.person_id for m in people] == ["ANN", "BOB"]


async def fill_week(store: CentralStore) -> None:
    """ops's first week of November (Wednesday the 4th a holiday)."""
    tue, thu, fri = (MONDAY + timedelta(days=i) for i in (1, 3, 4))
    await ingest(
        store,
        [
            punch(1, "ANN", at(MONDAY, 8, 55)),
            punch(2, "ANN", at(MONDAY, 18, 5)),
            punch(3, "ANN", at(tue, 9, 20)),
            punch(4, "ANN", at(tue, 18)),
            punch(5, "ANN", at(thu, 9)),
            punch(6, "ANN", at(thu, 17)),
            punch(7, "ANN", at(fri, 9)),
            punch(8, "ANN", at(fri, 20, 10)),
            punch(9, "BOB", at(tue, 8, 50)),
            punch(10, "BOB", at(thu, 8, 45)),
            punch(11, "BOB", at(thu, 18)),
        ],
    )
    # BOB forgot his card on Friday; HR adds both punches. Monday he was on leave.
    for hh in (9, 18):
        await store.run(
            lambda c, hh=hh: att.add_manual_punch(c, "BOB", at(fri, hh), operator="hr", note="补卡")
        )
    await store.run(
        lambda c: att.add_leave(
            c, "BOB", at(MONDAY, 0), at(MONDAY, 23, 59), kind="annual", operator="hr"
        )
    )


async def test_a_departments_month_matches_the_hand_computed_fixture(store: CentralStore):
    """November 2026 for ops (ANN in ops-east below it, BOB in ops): 21 workdays less the
    Wednesday holiday = 20 scheduled days each.

    ANN: Mon 480; Tue late 20 → 460; Thu early 60 → 420; Fri 480 + overtime 130 → 120;
         absent the other 16 days.  BOB: Mon annual leave; Tue only a check-in (missing
         punch); Thu 480; Fri (manual) 480; absent the other 16 days.
    """
    await fill_week(store)
    report = await store.run(lambda c: att.month_report(c, 2026, 11, "ops"))
    by_id = {p.member.person_id: p.summary for p in report.people}
    ann, bob = by_id["ANN"], by_id["BOB"]
    assert (ann.scheduled_days, ann.present_days, ann.absent_days) == (20, 4, 16)
    assert (ann.late_count, ann.late_minutes, ann.early_count, ann.early_minutes) == (1, 20, 1, 60)
    assert ann.worked_minutes == 480 + 460 + 420 + 480
    assert sum(ann.overtime.values()) == 120
    assert (bob.scheduled_days, bob.present_days, bob.absent_days) == (20, 3, 16)
    assert (bob.leave_days, bob.missing_punches, bob.worked_minutes) == (1, 1, 960)
    assert report.total.worked_minutes == 1840 + 960
    assert report.total.absent_days == 32
    # CAT (finance) is not in ops
    assert set(by_id) == {"ANN", "BOB"}


async def test_the_month_exports_as_csv_and_xlsx(store: CentralStore, tmp_path: Path):
    await fill_week(store)
    runner = CliRunner()
    db = db_of(store)
    out_csv, out_xlsx = tmp_path / "nov.csv", tmp_path / "nov.xlsx"
    result = await asyncio.to_thread(  # the CLI runs its own event loop
        runner.invoke,
        cli,
        [
            "attendance", "report", "--month", "2026-11", "--department", "ops",
            "--csv", str(out_csv), "--xlsx", str(out_xlsx), "--db", db,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = out_csv.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # a BOM: Excel reads the Chinese names right
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert [r["person_id"] for r in rows] == ["ANN", "BOB", "TOTAL"]
    assert rows[0]["name"] == "安娜"
    assert (rows[0]["worked_hours"], rows[0]["overtime_workday_hours"]) == ("30.67", "2.00")
    assert rows[2]["absent_days"] == "32"
    book = openpyxl.load_workbook(out_xlsx)
    assert book.sheetnames == ["2026-11", "days"]
    days = list(book["days"].iter_rows(values_only=True))
    assert len(days) == 1 + 2 * 30  # a header, then every day of November for both
    friday_ann = next(r for r in days if r[0] == "ANN" and r[2] == "2026-11-06")
    assert friday_ann[5:8] == ("normal", "2026-11-06 09:00", "2026-11-06 20:10")
    table = await asyncio.to_thread(
        runner.invoke, cli, ["attendance", "report", "--month", "2026-11", "--db", db]
    )
    assert table.exit_code == 0 and "TOTAL" in table.output and "凯特" in table.output


def test_the_cli_configures_shifts_rosters_and_refuses_bad_input(tmp_path: Path):
    runner = CliRunner()
    db = ["--db", str(central_db(tmp_path))]
    ok = runner.invoke(
        cli,
        ["attendance", "shift", "night", "--start", "22:00", "--end", "06:00",
         "--break", "02:00-02:30", *db],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    bad_time = runner.invoke(
        cli, ["attendance", "shift", "x", "--start", "9h", "--end", "18:00", *db]
    )
    assert bad_time.exit_code == 2 and "not a time like 09:00" in bad_time.output
    flex_without_minimum = runner.invoke(
        cli,
        ["attendance", "shift", "f", "--start", "07:00", "--end", "20:00", "--core", "10:00-16:00",
         *db],
    )  # fmt: skip
    assert flex_without_minimum.exit_code == 1 and "min_work" in flex_without_minimum.output
    unknown = runner.invoke(
        cli, ["attendance", "roster", "nope", "--department", "ops", "--from", "2026-11-01", *db]
    )
    assert unknown.exit_code == 1 and "unknown shift nope" in unknown.output
    both = runner.invoke(cli, ["attendance", "roster", "night", "--from", "2026-11-01", *db])
    assert both.exit_code == 1 and "person or a department" in both.output
    assert runner.invoke(cli, ["dept", "put", "ops", "运营", *db]).exit_code == 0
    rostered = runner.invoke(
        cli, ["attendance", "roster", "night", "--department", "ops", "--from", "2026-11-01", *db]
    )
    assert rostered.exit_code == 0, rostered.output
    holiday = runner.invoke(
        cli, ["attendance", "calendar", "2026-10-01", "holiday", "--name", "国庆节", *db]
    )
    assert holiday.exit_code == 0
    bad_month = runner.invoke(cli, ["attendance", "report", "--month", "2026-13", *db])
    assert bad_month.exit_code == 2 and "not a month" in bad_month.output


def test_the_department_tree_and_the_people_go_out_and_come_back_in(tmp_path: Path):
    runner = CliRunner()
    db = ["--db", str(central_db(tmp_path))]
    tree = tmp_path / "tree.csv"
    # children before parents, GB18030 as Excel on a Chinese Windows saves it
    tree.write_bytes(
        "id,name,parent\nops-east,运营东区,ops\nops,运营,hq\nhq,总部,\n".encode("gb18030")
    )
    loaded = runner.invoke(cli, ["dept", "import", str(tree), *db])
    assert loaded.exit_code == 0 and "3 departments" in loaded.output, loaded.output
    out = runner.invoke(cli, ["dept", "export", *db])
    assert out.output.splitlines() == [
        "id,name,parent", "hq,总部,", "ops,运营,hq", "ops-east,运营东区,ops",
    ]  # fmt: skip
    cycle = tmp_path / "cycle.csv"
    cycle.write_text("id,name,parent\na,A,b\nb,B,a\n")
    refused = runner.invoke(cli, ["dept", "import", str(cycle), *db])
    assert refused.exit_code == 1 and "unknown parent or a cycle" in refused.output
    bad = tmp_path / "bad.csv"
    bad.write_text("code,title\nx,y\n")
    assert (
        "lacks the column(s) id, name, parent"
        in runner.invoke(cli, ["dept", "import", str(bad), *db]).output
    )
    seed = tmp_path / "seed.json"
    seed.write_text(
        '{"persons": [{"id": "P1", "name": "安娜", "kind": "staff", "number": "007",'
        ' "department": "ops-east"}], "cards": [{"uid": "04A1B2C3D4E5F6", "person_id": "P1"}]}'
    )
    assert runner.invoke(cli, ["seed", str(seed), *db]).exit_code == 0
    people = runner.invoke(cli, ["dept", "people", "--department", "ops", *db])
    assert people.output.splitlines() == [
        "person_id,number,name,kind,department,card_uid",
        "P1,007,安娜,staff,ops-east,04A1B2C3D4E5F6",
    ]
