"""Attendance at HQ: punches collected at ingest, the rules HR keeps, reports on demand.

- **Punches**: every accepted, non-duplicate ``attendance.punch`` record is copied into
  ``att_punches`` with its holder as ingest applies it (:func:`collect`), whenever it
  arrives — a site that was offline for a day, or a clock's buffer, simply adds punches
  later. Manual punches (补卡) go in beside them with who added them and why.
- **Reports are computed, not stored**: a day or a month is computed from the punches, leave
  and rules when asked (:func:`month_report`), so a late punch or a corrected roster shows
  at once, and there is no stale copy to recompute. A department's month (hundreds of people,
  thousands of punches) is a fraction of a second.
- Every change of rules, leave and manual punches is in the audit log.

The computation itself is :mod:`central.core.attendance` (pure).
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import msgspec

from central.core.attendance import DayResult, Summary, compute_person, summarise
from central.core.attendance_rules import (
    Calendar,
    DayType,
    Leave,
    Roster,
    RosterEntry,
    Rules,
    Shift,
)
from central.core.clearing_export import encode_csv
from central.core.effects import AuditEntry
from central.core.tables import TableProblem, decode_text
from central.operations import write_audit
from protocol.messages import AnyRecord, AttendancePunch

if TYPE_CHECKING:
    from central.ingest import HolderCache

#: The zone days are counted in unless ``settings`` says otherwise (``attendance.zone``).
DEFAULT_ZONE = "Asia/Shanghai"
#: A punch the edge took as a repeat of the last one: kept in the records, not counted.
DUPLICATE = "duplicate_punch"


class AttendanceError(ValueError):
    """A request HR made that cannot be done (unknown person, a cycle in the tree …)."""


# -- punches -------------------------------------------------------------------------------------


def collect(
    conn: sqlite3.Connection,
    site: str,
    records: Iterable[tuple[int, AnyRecord]],
    holders: HolderCache,
    *,
    now_ms: int,
) -> int:
    """Copy the counted punches among ``records`` (being applied by ingest, in its
    transaction) into ``att_punches``; returns how many. Idempotent by record id."""
    rows = []
    for _, record in records:
        if not isinstance(record, AttendancePunch):
            continue
        if not record.accepted or record.reason == DUPLICATE or not record.card_uid:
            continue
        person = holders.get(conn, record.card_uid)
        if person is None:
            continue
        at_ms = int(record.at.timestamp() * 1000)
        rows.append((record.id, person, at_ms, site, record.terminal, now_ms))
    if rows:
        conn.executemany(
            "INSERT OR IGNORE INTO att_punches (id, person_id, at_ms, site, terminal, source,"
            " created_ms) VALUES (?, ?, ?, ?, ?, 'terminal', ?)",
            rows,
        )
    return len(rows)


def add_manual_punch(
    conn: sqlite3.Connection,
    person_id: str,
    at: datetime,
    *,
    operator: str,
    note: str,
    source: str = "hq:cli",
) -> str:
    """A punch added by hand (补卡): needs a reason; audited. Returns its id."""
    _person(conn, person_id)
    if not note.strip():
        raise AttendanceError("a manual punch needs a reason")
    now = datetime.now(UTC)
    number = conn.execute(
        "SELECT count(*) + 1 FROM att_punches WHERE source = 'manual'"
    ).fetchone()[0]
    punch_id = f"manual:{number}"
    conn.execute(
        "INSERT INTO att_punches (id, person_id, at_ms, source, operator, note, created_ms)"
        " VALUES (?, ?, ?, 'manual', ?, ?, ?)",
        (punch_id, person_id, _ms(at), operator, note, _ms(now)),
    )
    _audit(conn, operator, "attendance.punch_add", person_id, {"at": _iso(at)}, note, source=source)
    return punch_id


def punches_of(
    conn: sqlite3.Connection, person_id: str, start: datetime, end: datetime
) -> list[datetime]:
    """The person's counted punches in [start, end), UTC."""
    return [
        datetime.fromtimestamp(ms / 1000, UTC)
        for (ms,) in conn.execute(
            "SELECT at_ms FROM att_punches WHERE person_id = ? AND at_ms >= ? AND at_ms < ?"
            " ORDER BY at_ms",
            (person_id, _ms(start), _ms(end)),
        )
    ]


# -- leave ---------------------------------------------------------------------------------------


def add_leave(
    conn: sqlite3.Connection,
    person_id: str,
    start: datetime,
    end: datetime,
    *,
    kind: str,
    operator: str,
    note: str = "",
    source: str = "hq:cli",
) -> int:
    """Record approved leave; audited. Returns its id."""
    _person(conn, person_id)
    try:
        Leave(start, end, kind, note)
    except ValueError as exc:
        raise AttendanceError(str(exc)) from exc
    cursor = conn.execute(
        "INSERT INTO att_leaves (person_id, start_ms, end_ms, kind, note, operator, created_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (person_id, _ms(start), _ms(end), kind, note, operator, _ms(datetime.now(UTC))),
    )
    _audit(
        conn,
        operator,
        "attendance.leave_add",
        person_id,
        {"start": _iso(start), "end": _iso(end), "kind": kind},
        note,
        source=source,
    )
    return int(cursor.lastrowid or 0)


def leaves_of(
    conn: sqlite3.Connection, person_id: str, start: datetime, end: datetime
) -> list[Leave]:
    """The person's leave overlapping [start, end)."""
    return [
        Leave(_dt(s), _dt(e), kind, note)
        for s, e, kind, note in conn.execute(
            "SELECT start_ms, end_ms, kind, note FROM att_leaves"
            " WHERE person_id = ? AND start_ms < ? AND end_ms > ?",
            (person_id, _ms(end), _ms(start)),
        )
    ]


# -- rules -----------------------------------------------------------------------------------------

_shift_json = msgspec.json.Decoder(Shift)
_entry_json = msgspec.json.Decoder(RosterEntry)
_encoder = msgspec.json.Encoder()


def put_shift(conn: sqlite3.Connection, shift: Shift, *, operator: str) -> None:
    """Create or replace a shift; audited."""
    before = conn.execute("SELECT data FROM att_shifts WHERE id = ?", (shift.id,)).fetchone()
    data = _encoder.encode(shift).decode()
    conn.execute(
        "INSERT INTO att_shifts (id, data) VALUES (?, ?)"
        " ON CONFLICT (id) DO UPDATE SET data = excluded.data",
        (shift.id, data),
    )
    _audit(
        conn,
        operator,
        "attendance.shift_put",
        shift.id,
        {"shift": data},
        "",
        before={"shift": before[0] if before else None},
    )


def shifts(conn: sqlite3.Connection) -> dict[str, Shift]:
    """Every shift by id."""
    return {
        key: _shift_json.decode(data)
        for key, data in conn.execute("SELECT id, data FROM att_shifts")
    }


def add_roster(conn: sqlite3.Connection, entry: RosterEntry, *, operator: str) -> int:
    """Add a roster entry (a shift for a person or department over dates); audited."""
    if entry.shift_id is not None and entry.shift_id not in shifts(conn):
        raise AttendanceError(f"unknown shift {entry.shift_id}")
    if entry.person_id is not None:
        _person(conn, entry.person_id)
    if entry.department is not None:
        _department(conn, entry.department)
    data = _encoder.encode(entry).decode()
    cursor = conn.execute("INSERT INTO att_roster (data) VALUES (?)", (data,))
    target = entry.person_id or f"department:{entry.department}"
    _audit(conn, operator, "attendance.roster_add", target, {"entry": data}, "")
    return int(cursor.lastrowid or 0)


def roster(conn: sqlite3.Connection) -> Roster:
    """All roster entries, in the order they were added."""
    return Roster(
        tuple(
            _entry_json.decode(data)
            for (data,) in conn.execute("SELECT data FROM att_roster ORDER BY id")
        )
    )


def set_calendar_day(
    conn: sqlite3.Connection, day: date, kind: str | None, *, operator: str, name: str = ""
) -> None:
    """Mark ``day`` a statutory holiday (``"holiday"``), a swapped workday (``"workday"``),
    or back to its weekday's rule (None); audited."""
    if kind not in (None, "holiday", "workday"):
        raise AttendanceError(f"a calendar day is a holiday or a workday, not {kind!r}")
    if kind is None:
        conn.execute("DELETE FROM att_calendar WHERE day = ?", (day.isoformat(),))
    else:
        conn.execute(
            "INSERT INTO att_calendar (day, kind, name) VALUES (?, ?, ?)"
            " ON CONFLICT (day) DO UPDATE SET kind = excluded.kind, name = excluded.name",
            (day.isoformat(), kind, name),
        )
    _audit(
        conn,
        operator,
        "attendance.calendar_set",
        day.isoformat(),
        {"kind": kind or "weekday"},
        name,
    )


def calendar(conn: sqlite3.Connection) -> Calendar:
    """The calendar: Monday to Friday, with HQ's holidays and swapped workdays."""
    holidays: set[date] = set()
    swapped: set[date] = set()
    for day, kind in conn.execute("SELECT day, kind FROM att_calendar"):
        (holidays if kind == "holiday" else swapped).add(date.fromisoformat(day))
    return Calendar(holidays=frozenset(holidays), swapped_workdays=frozenset(swapped))


def zone(conn: sqlite3.Connection) -> ZoneInfo:
    """The zone attendance days are counted in (``settings`` key ``attendance.zone``)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'attendance.zone'").fetchone()
    return ZoneInfo(msgspec.json.decode(row[0]) if row else DEFAULT_ZONE)


def load_rules(conn: sqlite3.Connection) -> Rules:
    """Everything the computation needs besides punches and leave."""
    return Rules(shifts(conn), calendar(conn), roster(conn), zone(conn))


# -- organisation ---------------------------------------------------------------------------------


def put_department(
    conn: sqlite3.Connection, dept_id: str, name: str, parent: str | None, *, operator: str
) -> None:
    """Create or move/rename a department; refuses an unknown parent or a cycle; audited."""
    if parent is not None:
        chain = ancestors(conn, parent, include_self=True)
        if not chain:
            raise AttendanceError(f"unknown parent department {parent}")
        if dept_id in chain:
            raise AttendanceError(f"{dept_id} cannot be inside its own subtree ({parent})")
    conn.execute(
        "INSERT INTO departments (id, name, parent_id) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET name = excluded.name, parent_id = excluded.parent_id",
        (dept_id, name, parent),
    )
    _audit(conn, operator, "department.put", dept_id, {"name": name, "parent": parent}, "")


DEPARTMENT_COLUMNS = ("id", "name", "parent")


def import_departments(conn: sqlite3.Connection, data: bytes, *, operator: str) -> int:
    """Load a department tree from CSV (``id,name,parent``; UTF-8, with or without a BOM,
    or GB18030), parents before or after their children; all or nothing. Returns how many
    departments were written."""
    decoded = decode_text(data)
    if isinstance(decoded, TableProblem):
        raise AttendanceError(decoded.message)
    text = decoded[0]
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in DEPARTMENT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise AttendanceError(f"the file lacks the column(s) {', '.join(missing)}")
    rows: dict[str, tuple[str, str | None]] = {}
    for line, row in enumerate(reader, start=2):
        dept_id, name = (row["id"] or "").strip(), (row["name"] or "").strip()
        parent = (row["parent"] or "").strip() or None
        if not dept_id or not name or len(dept_id) > 64 or len(name) > 100:
            raise AttendanceError(f"line {line}: id (≤ 64) and name (≤ 100) are required")
        if dept_id in rows:
            raise AttendanceError(f"line {line}: department {dept_id} appears twice")
        rows[dept_id] = (name, parent)
    known = {r[0] for r in conn.execute("SELECT id FROM departments")}
    done: set[str] = set()
    while len(done) < len(rows):  # parents first, whatever the file's order
        placed = done | (known - set(rows))  # parents that exist already
        ready = [
            d
            for d, (_, parent) in rows.items()
            if d not in done and (parent is None or parent in placed)
        ]
        if not ready:
            stuck = sorted(set(rows) - done)
            raise AttendanceError(f"departments {', '.join(stuck[:5])}: unknown parent or a cycle")
        for dept_id in ready:
            name, parent = rows[dept_id]
            put_department(conn, dept_id, name, parent, operator=operator)
            done.add(dept_id)
    return len(done)


def export_departments(conn: sqlite3.Connection) -> bytes:
    """The department tree as CSV (``id,name,parent``, UTF-8 with a BOM for Excel)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(DEPARTMENT_COLUMNS)
    for row in conn.execute(
        "SELECT id, name, coalesce(parent_id, '') FROM departments ORDER BY id"
    ):
        writer.writerow(row)
    return ("\ufeff" + out.getvalue()).encode()


def ancestors(conn: sqlite3.Connection, dept_id: str, *, include_self: bool = True) -> list[str]:
    """``dept_id`` (if asked) and its parents up to the root, nearest first; [] if unknown."""
    rows = conn.execute(
        "WITH RECURSIVE up (id, parent_id, depth) AS ("
        " SELECT id, parent_id, 0 FROM departments WHERE id = ?"
        " UNION ALL SELECT d.id, d.parent_id, up.depth + 1 FROM departments d"
        " JOIN up ON d.id = up.parent_id WHERE up.depth < 64)"
        " SELECT id FROM up ORDER BY depth",
        (dept_id,),
    ).fetchall()
    chain = [r[0] for r in rows]
    return chain if include_self else chain[1:]


def subtree(conn: sqlite3.Connection, dept_id: str) -> list[str]:
    """``dept_id`` and every department under it."""
    return [
        r[0]
        for r in conn.execute(
            "WITH RECURSIVE down (id, depth) AS ("
            " SELECT id, 0 FROM departments WHERE id = ?"
            " UNION ALL SELECT d.id, down.depth + 1 FROM departments d"
            " JOIN down ON d.parent_id = down.id WHERE down.depth < 64)"
            " SELECT id FROM down",
            (dept_id,),
        )
    ]


@dataclass(frozen=True)
class Member:
    """A person as attendance lists them."""

    person_id: str
    name: str
    number: str
    department: str | None


def members(
    conn: sqlite3.Connection, department: str | None, *, staff_only: bool = True
) -> list[Member]:
    """Staff (or everyone, if not ``staff_only``) in ``department`` and the departments
    under it; every staff member if ``department`` is None."""
    rows = conn.execute(
        "SELECT key, json_extract(data, '$.name'), coalesce(json_extract(data, '$.number'), ''),"
        " json_extract(data, '$.department') FROM master"
        " WHERE scope = '' AND entity = 'person'"
        " AND (? OR coalesce(json_extract(data, '$.kind'), 'member') = 'staff') ORDER BY key",
        (not staff_only,),
    ).fetchall()
    found = [Member(*row) for row in rows]
    if department is None:
        return found
    inside = set(subtree(conn, department))
    if not inside:
        raise AttendanceError(f"unknown department {department}")
    return [m for m in found if m.department in inside]


# -- reports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonMonth:
    """One person's month: every day and the totals."""

    member: Member
    days: list[DayResult]
    summary: Summary


@dataclass(frozen=True)
class MonthReport:
    """A department's (or everyone's) month."""

    year: int
    month: int
    department: str | None
    people: list[PersonMonth]
    total: Summary


def month_days(year: int, month: int) -> list[date]:
    """Every date of the month."""
    first = date(year, month, 1)
    following = date(year + month // 12, month % 12 + 1, 1)
    return [first + timedelta(days=i) for i in range((following - first).days)]


def person_days(
    conn: sqlite3.Connection, member: Member, days: list[date], rules: Rules | None = None
) -> list[DayResult]:
    """The person's results for ``days`` (consecutive), from punches and leave around them."""
    rules = rules or load_rules(conn)
    start = datetime.combine(days[0] - timedelta(days=2), datetime.min.time(), tzinfo=UTC)
    end = datetime.combine(days[-1] + timedelta(days=3), datetime.min.time(), tzinfo=UTC)
    chain = ancestors(conn, member.department) if member.department else []
    return compute_person(
        rules,
        member.person_id,
        chain,
        days,
        punches=punches_of(conn, member.person_id, start, end),
        leaves=leaves_of(conn, member.person_id, start, end),
    )


def month_report(
    conn: sqlite3.Connection, year: int, month: int, department: str | None = None
) -> MonthReport:
    """Each person's month in ``department`` (and below it), and the department's total."""
    rules = load_rules(conn)
    days = month_days(year, month)
    people = []
    total = Summary()
    for member in members(conn, department):
        results = person_days(conn, member, days, rules)
        summary = summarise(results)
        total.merge(summary)
        people.append(PersonMonth(member, results, summary))
    return MonthReport(year, month, department, people, total)


SUMMARY_COLUMNS = [
    "person_id",
    "name",
    "number",
    "department",
    "scheduled_days",
    "present_days",
    "absent_days",
    "leave_days",
    "late_count",
    "late_minutes",
    "early_count",
    "early_minutes",
    "short_minutes",
    "missing_punches",
    "worked_hours",
    "overtime_workday_hours",
    "overtime_rest_hours",
    "overtime_holiday_hours",
]


def summary_row(member: Member | None, s: Summary) -> list[str | int]:
    """One CSV/XLSX row: hours with two decimals, counts and minutes whole."""
    who: list[str | int] = (
        [member.person_id, member.name, member.number, member.department or ""]
        if member
        else ["TOTAL", "", "", ""]
    )
    return [
        *who,
        s.scheduled_days,
        s.present_days,
        s.absent_days,
        s.leave_days,
        s.late_count,
        s.late_minutes,
        s.early_count,
        s.early_minutes,
        s.short_minutes,
        s.missing_punches,
        f"{s.worked_minutes / 60:.2f}",
        f"{s.overtime[DayType.WORKDAY] / 60:.2f}",
        f"{s.overtime[DayType.REST] / 60:.2f}",
        f"{s.overtime[DayType.HOLIDAY] / 60:.2f}",
    ]


def report_csv(report: MonthReport) -> bytes:
    """The month as CSV (UTF-8 with a BOM, so Excel opens the Chinese names right)."""
    rows = [summary_row(person.member, person.summary) for person in report.people]
    rows.append(summary_row(None, report.total))
    # a name such as "=HYPERLINK(…)" must reach Excel as text, never as a formula
    return encode_csv(SUMMARY_COLUMNS, rows)


def report_xlsx(report: MonthReport, tz: ZoneInfo) -> bytes:
    """The month as XLSX: a summary sheet and a sheet of every person-day."""
    from openpyxl import Workbook  # noqa: PLC0415 - only exports need it

    book = Workbook()
    sheet = book.active
    assert sheet is not None  # noqa: S101 - a new workbook always has its first sheet
    sheet.title = f"{report.year}-{report.month:02d}"
    sheet.append(SUMMARY_COLUMNS)
    for person in report.people:
        sheet.append(summary_row(person.member, person.summary))
    sheet.append(summary_row(None, report.total))
    days = book.create_sheet("days")
    days.append(
        [
            *("person_id", "name", "date", "day_type", "shift", "status", "first_in"),
            *("last_out", "worked_min", "late_min", "early_min", "leave_min", "overtime_min"),
        ]
    )
    for person in report.people:
        for d in person.days:
            days.append(
                [
                    person.member.person_id,
                    person.member.name,
                    d.day.isoformat(),
                    d.day_type.value,
                    d.shift_id or "",
                    d.status,
                    _local(d.first_in, tz),
                    _local(d.last_out, tz),
                    d.worked,
                    d.late,
                    d.early,
                    d.leave,
                    d.overtime,
                ]
            )
    for ws in (sheet, days):
        _text_cells_as_text(ws)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _text_cells_as_text(sheet: Any) -> None:
    """openpyxl writes a string starting with "=" as a live formula: store every text cell
    as a string cell (a name or shift id is data, never a formula)."""
    for row in sheet.iter_rows():
        for cell in row:
            if isinstance(cell.value, str) and cell.data_type == "f":
                cell.data_type = "s"


# -- helpers ---------------------------------------------------------------------------------------


def _person(conn: sqlite3.Connection, person_id: str) -> None:
    row = conn.execute(
        "SELECT 1 FROM master WHERE scope = '' AND entity = 'person' AND key = ?", (person_id,)
    ).fetchone()
    if row is None:
        raise AttendanceError(f"unknown person {person_id}")


def _department(conn: sqlite3.Connection, dept_id: str) -> None:
    if not ancestors(conn, dept_id):
        raise AttendanceError(f"unknown department {dept_id}")


def _audit(  # noqa: PLR0917 - the audit line's parts
    conn: sqlite3.Connection,
    operator: str,
    action: str,
    target: str,
    after: dict[str, str | None],
    note: str,
    *,
    before: dict[str, str | None] | None = None,
    source: str = "hq:cli",
) -> None:
    now = datetime.now(UTC)
    write_audit(
        conn,
        AuditEntry(
            request_id=f"{action}:{target}:{_ms(now)}",
            operator=operator,
            source=source,
            action=action,
            target=target,
            at=now,
            before=before or {},  # type: ignore[arg-type]
            after=after,  # type: ignore[arg-type]
            note=note,
        ),
    )


def _ms(at: datetime) -> int:
    if at.tzinfo is None:
        raise AttendanceError("times must be timezone-aware")
    return int(at.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _local(at: datetime | None, tz: ZoneInfo) -> str:
    return "" if at is None else at.astimezone(tz).strftime("%Y-%m-%d %H:%M")
