"""The Attendance pages over real HTTP: a department's month with its totals and downloads,
a person's days, and a manual punch (补卡) that changes the month at once — by the roles
that may, refused with a reason otherwise."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, date, datetime, time

import msgspec
import pytest
from web_harness import sign_in

from central import attendance as att
from central import master
from central.core.attendance_rules import Break, RosterEntry, Shift

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def staffed(dash):
    seed = msgspec.convert(
        {
            "persons": [
                {"id": "E1", "name": "安娜", "kind": "staff", "number": "001", "department": "ops"},
                {"id": "E2", "name": "Bo", "kind": "staff", "number": "002", "department": "hq"},
            ]
        },
        master.CentralSeed,
    )

    def setup(conn) -> None:
        master.apply_seed(conn, seed, batch="t")
        att.put_department(conn, "hq", "总部", None, operator="hr")
        att.put_department(conn, "ops", "运营", "hq", operator="hr")
        day = Shift("day", time(9), time(18), breaks=(Break(time(12), time(13)),))
        att.put_shift(conn, day, operator="hr")
        att.add_roster(conn, RosterEntry("day", date(2026, 1, 1), department="hq"), operator="hr")
        for hh in (1, 10):  # 09:00 and 18:00 in Shanghai on Monday 2 November
            at = datetime(2026, 11, 2, hh, tzinfo=UTC)
            att.add_manual_punch(conn, "E1", at, operator="hr", note="seed")

    await dash.store.run(setup)
    return dash


async def client(dash, username: str):
    http = dash.client(**{"Accept-Language": "en"})
    assert (await sign_in(http, username)).status_code == 303
    return http


async def test_a_departments_month_with_totals_and_downloads(staffed):
    http = await client(staffed, "finance-1")
    page = await http.get("/attendance", params={"month": "2026-11", "department": "ops"})
    assert page.status_code == 200
    assert 'data-person="E1"' in page.text and 'data-person="E2"' not in page.text
    everyone = await http.get("/attendance", params={"month": "2026-11"})
    assert 'data-person="E2"' in everyone.text
    got = await http.get("/attendance.csv", params={"month": "2026-11", "department": "ops"})
    rows = list(csv.DictReader(io.StringIO(got.content.decode("utf-8-sig"))))
    assert [(r["person_id"], r["present_days"], r["worked_hours"]) for r in rows] == [
        ("E1", "1", "8.00"),
        ("TOTAL", "1", "8.00"),
    ]
    xlsx = await http.get("/attendance.xlsx", params={"month": "2026-11"})
    assert xlsx.status_code == 200 and xlsx.content[:2] == b"PK"
    assert (await http.get("/attendance", params={"month": "2026-13"})).status_code == 400
    assert (await http.get("/attendance", params={"department": "nope"})).status_code == 404


async def test_a_manual_punch_changes_the_month_and_is_for_operators(staffed):
    http = await client(staffed, "operator-1")
    page = await http.get("/attendance/people/E2", params={"month": "2026-11"})
    assert 'data-day="2026-11-03" data-status="absent"' in page.text
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    url = "/attendance/people/E2/punch?month=2026-11"
    no_reason = await http.post(
        url, data={"csrf": token, "at": "2026-11-03T09:00", "confirm": "yes"}
    )
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.text
    added = await http.post(
        url,
        data={"csrf": token, "at": "2026-11-03T09:00", "reason": "forgot card", "confirm": "yes"},
    )
    assert "The punch is added" in added.text
    assert 'data-day="2026-11-03" data-status="missing_punch"' in added.text  # in, no out yet
    audit = await staffed.audit(action="attendance.punch_add")
    assert [(a["operator"], a["target"]) for a in audit][:1] == [("operator-1", "E2")]
    auditor = await client(staffed, "auditor-1")
    assert (await auditor.get("/attendance/people/E2")).status_code == 200
    refused = await auditor.post(url, data={"csrf": token, "at": "2026-11-03T18:00"})
    assert refused.status_code == 403


async def test_one_day_for_a_department(staffed):
    http = await client(staffed, "auditor-1")
    day = await http.get("/attendance", params={"day": "2026-11-02", "department": "hq"})
    assert day.status_code == 200
    assert 'data-person="E1" data-status="normal"' in day.text
    assert 'data-person="E2" data-status="absent"' in day.text
    assert (await http.get("/attendance", params={"day": "2026-02-30"})).status_code == 400


async def test_leave_recorded_on_the_page_excuses_the_day(staffed):
    http = await client(staffed, "operator-1")
    page = await http.get("/attendance/people/E2", params={"month": "2026-11"})
    token = _CSRF.search(page.text)[1]  # type: ignore[index]
    url = "/attendance/people/E2/leave?month=2026-11"
    form = {"csrf": token, "start": "2026-11-04T00:00", "end": "2026-11-04T23:59", "confirm": "yes"}
    bad_kind = await http.post(url, data={**form, "kind": "holiday-by-myself"})
    assert bad_kind.status_code == 400
    backwards = await http.post(url, data={**form, "end": "2026-11-03T00:00", "kind": "sick"})
    assert backwards.status_code == 400 and "must end after it starts" in backwards.text
    done = await http.post(url, data={**form, "kind": "sick", "note": "flu"})
    assert "The leave is recorded" in done.text
    assert 'data-day="2026-11-04" data-status="leave"' in done.text
    audit = await staffed.audit(action="attendance.leave_add")
    assert [(a["operator"], a["source"], a["note"]) for a in audit] == [
        ("operator-1", "hq:web", "flu")
    ]
