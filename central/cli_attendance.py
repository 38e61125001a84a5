"""``onecard-central attendance …`` and ``onecard-central dept …``: shifts, rosters, the
holiday calendar, leave, manual punches (补卡), departments, and monthly reports as a table,
CSV or XLSX (see ``docs/attendance.md``). Times given without a zone are read in the
attendance zone (``settings`` key ``attendance.zone``, default Asia/Shanghai).
"""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import click

from central.cli_common import DB_OPTION, DbTarget, run_op, who


def _run(db_path: DbTarget, op: Any) -> Any:
    from central.attendance import AttendanceError

    try:
        return run_op(db_path, op)
    except AttendanceError as exc:
        raise click.ClickException(str(exc)) from None


def _clock(_ctx: Any, _param: Any, value: str | None) -> time | None:
    if value is None:
        return None
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time like 09:00") from None


def _day(_ctx: Any, _param: Any, value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-11-02") from None


def _month(_ctx: Any, _param: Any, value: str) -> tuple[int, int]:
    try:
        year, month = (int(part) for part in value.split("-"))
        date(year, month, 1)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a month like 2026-11") from None
    return year, month


def _instant(db_path: DbTarget, value: str) -> datetime:
    """An ISO time; without a zone, in the attendance zone."""
    from central import attendance

    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a time like 2026-11-02T09:03") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=run_op(db_path, attendance.zone))
    return at


@click.group()
def attendance() -> None:
    """Attendance: shifts, rosters, calendar, leave, manual punches, reports."""


@attendance.command("shift")
@click.argument("shift_id")
@click.option("--start", callback=_clock, required=True, help="e.g. 09:00")
@click.option("--end", callback=_clock, required=True, help="e.g. 18:00 (≤ start: next day)")
@click.option("--break", "breaks", multiple=True, help="an unpaid break, e.g. 12:00-13:00")
@click.option("--core", help="flexible shift: the core time, e.g. 10:00-16:00")
@click.option("--min-work", type=int, default=0, help="flexible shift: minimum minutes")
@click.option("--late-grace", type=int, default=0, show_default=True)
@click.option("--early-grace", type=int, default=0, show_default=True)
@click.option("--overtime-after", type=int, default=30, show_default=True)
@click.option("--overtime-unit", type=int, default=30, show_default=True)
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def shift_cmd(
    shift_id: str,
    start: time,
    end: time,
    breaks: tuple[str, ...],
    core: str | None,
    min_work: int,
    late_grace: int,
    early_grace: int,
    overtime_after: int,
    overtime_unit: int,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Create or replace a shift."""
    from central import attendance as att
    from central.core.attendance_rules import Break, Shift

    def span(text: str) -> tuple[time, time]:
        try:
            first, second = text.split("-")
            return time.fromisoformat(first), time.fromisoformat(second)
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a span like 12:00-13:00") from None

    try:
        shift = Shift(
            shift_id,
            start,
            end,
            late_grace=late_grace,
            early_grace=early_grace,
            breaks=tuple(Break(*span(b)) for b in breaks),
            core=span(core) if core else None,
            min_work=min_work,
            overtime_after=overtime_after,
            overtime_unit=overtime_unit,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    _run(db_path, lambda conn: att.put_shift(conn, shift, operator=operator))
    click.echo(f"shift {shift_id}: {start:%H:%M}-{end:%H:%M}")


@attendance.command("roster")
@click.argument("shift_id")
@click.option("--person", help="a person id")
@click.option("--department", help="a department id (and everyone under it)")
@click.option("--from", "start", callback=_day, required=True, help="first date")
@click.option("--to", "end", callback=_day, help="last date (default: open-ended)")
@click.option("--weekdays", help="e.g. 0,1,2,3,4 (Monday = 0; default: the calendar's workdays)")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def roster_cmd(
    shift_id: str,
    person: str | None,
    department: str | None,
    start: date,
    end: date | None,
    weekdays: str | None,
    operator: str,
    db_path: DbTarget,
) -> None:
    """Roster SHIFT_ID (or "off") for a person or a department from a date."""
    from central import attendance as att
    from central.core.attendance_rules import RosterEntry

    try:
        days = frozenset(int(d) for d in weekdays.split(",")) if weekdays else None
        entry = RosterEntry(
            None if shift_id == "off" else shift_id,
            start,
            end,
            person_id=person,
            department=department,
            weekdays=days,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    entry_id = _run(db_path, lambda conn: att.add_roster(conn, entry, operator=operator))
    click.echo(f"roster entry #{entry_id}: {shift_id} for {person or department} from {start}")


@attendance.command("calendar")
@click.argument("day", callback=_day)
@click.argument("kind", type=click.Choice(["holiday", "workday", "weekday"]))
@click.option("--name", default="", help="e.g. 国庆节")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def calendar_cmd(day: date, kind: str, name: str, operator: str, db_path: DbTarget) -> None:
    """Mark DAY a holiday, a swapped workday (调休), or back to its weekday's rule."""
    from central import attendance as att

    _run(
        db_path,
        lambda conn: att.set_calendar_day(
            conn, day, None if kind == "weekday" else kind, operator=operator, name=name
        ),
    )
    click.echo(f"{day}: {kind}")


@attendance.command("leave")
@click.argument("person_id")
@click.argument("start")
@click.argument("end")
@click.option("--kind", default="leave", show_default=True, help="annual, sick, business …")
@click.option("--note", default="")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def leave_cmd(
    person_id: str, start: str, end: str, kind: str, note: str, operator: str, db_path: DbTarget
) -> None:
    """Record approved leave for PERSON_ID from START to END (ISO times)."""
    from central import attendance as att

    begin, finish = _instant(db_path, start), _instant(db_path, end)
    leave_id = _run(
        db_path,
        lambda conn: att.add_leave(
            conn, person_id, begin, finish, kind=kind, operator=operator, note=note
        ),
    )
    click.echo(f"leave #{leave_id} for {person_id}: {begin:%Y-%m-%d %H:%M} → {finish:%H:%M}")


@attendance.command("punch")
@click.argument("person_id")
@click.argument("at")
@click.option("--reason", required=True, help="why the punch is added (补卡 needs a reason)")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def punch_cmd(person_id: str, at: str, reason: str, operator: str, db_path: DbTarget) -> None:
    """Add a punch by hand (补卡) for PERSON_ID at AT (ISO time)."""
    from central import attendance as att

    when = _instant(db_path, at)
    punch_id = _run(
        db_path,
        lambda conn: att.add_manual_punch(conn, person_id, when, operator=operator, note=reason),
    )
    click.echo(f"{punch_id}: {person_id} at {when:%Y-%m-%d %H:%M %Z}")


@attendance.command("report")
@click.option("--month", "month", callback=_month, required=True, help="e.g. 2026-11")
@click.option("--department", help="a department (with those under it); default everyone")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--xlsx", "xlsx_path", type=click.Path(dir_okay=False, path_type=Path))
@DB_OPTION
def report_cmd(
    month: tuple[int, int],
    department: str | None,
    csv_path: Path | None,
    xlsx_path: Path | None,
    db_path: DbTarget,
) -> None:
    """A month per person and in total: days, late/early, absences, hours, overtime."""
    from central import attendance as att

    report, tz = _run(
        db_path,
        lambda conn: (att.month_report(conn, *month, department), att.zone(conn)),
    )
    if csv_path:
        csv_path.write_bytes(att.report_csv(report))
        click.echo(f"wrote {csv_path}")
    if xlsx_path:
        xlsx_path.write_bytes(att.report_xlsx(report, tz))
        click.echo(f"wrote {xlsx_path}")
    if csv_path or xlsx_path:
        return
    head = f"{'person':<12} {'name':<10} {'days':>4} {'abs':>3} {'late':>9} {'early':>9}"
    click.echo(f"{head} {'miss':>4} {'hours':>7} {'OT wd/rest/hol h':>18}")
    for person in [*report.people, None]:
        row = att.summary_row(
            person.member if person else None, person.summary if person else report.total
        )
        click.echo(
            f"{row[0]!s:<12} {row[1]!s:<10} {row[5]!s:>4} {row[6]!s:>3}"
            f" {f'{row[8]}/{row[9]}m':>9} {f'{row[10]}/{row[11]}m':>9} {row[13]!s:>4}"
            f" {row[14]!s:>7} {f'{row[15]}/{row[16]}/{row[17]}':>18}"
        )


@click.group()
def dept() -> None:
    """The organisation: departments in a tree."""


@dept.command("put")
@click.argument("dept_id")
@click.argument("name")
@click.option("--parent", help="the parent department's id")
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def dept_put(dept_id: str, name: str, parent: str | None, operator: str, db_path: DbTarget) -> None:
    """Create, rename or move a department."""
    from central import attendance as att

    _run(db_path, lambda conn: att.put_department(conn, dept_id, name, parent, operator=operator))
    click.echo(f"department {dept_id} ({name})" + (f" under {parent}" if parent else ""))


@dept.command("import")
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operator", default=who, show_default="login user")
@DB_OPTION
def dept_import(csv_file: Path, operator: str, db_path: DbTarget) -> None:
    """Load a department tree (CSV: id,name,parent); all or nothing, audited."""
    from central import attendance as att

    data = csv_file.read_bytes()
    count = _run(db_path, lambda conn: att.import_departments(conn, data, operator=operator))
    click.echo(f"{count} departments written from {csv_file}")


@dept.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="default: stdout")
@DB_OPTION
def dept_export(out: Path | None, db_path: DbTarget) -> None:
    """The department tree as CSV (id,name,parent)."""
    from central import attendance as att

    data = _run(db_path, att.export_departments)
    if out is None:
        click.echo(data.decode("utf-8-sig"), nl=False)
    else:
        out.write_bytes(data)
        click.echo(f"wrote {out}")


@dept.command("people")
@click.option("--department", help="a department (with those under it); default everyone")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="default: stdout")
@DB_OPTION
def dept_people(department: str | None, out: Path | None, db_path: DbTarget) -> None:
    """Export people as CSV with the columns `import members` reads back (person_id,
    number, name, kind, department, card_uid: the live card)."""
    import csv
    import io

    from central import attendance as att

    def rows(conn: Any) -> list[list[str]]:
        cards: dict[str, list[str]] = {}
        for uid, person in conn.execute(
            "SELECT key, json_extract(data, '$.person_id') FROM master"
            " WHERE scope = '' AND entity = 'card'"
            " AND json_extract(data, '$.status') IN ('active', 'frozen', 'lost')"
        ):
            cards.setdefault(person, []).append(uid)
        kinds = dict(
            conn.execute(
                "SELECT key, coalesce(json_extract(data, '$.kind'), 'member') FROM master"
                " WHERE scope = '' AND entity = 'person'"
            ).fetchall()
        )
        return [
            [m.person_id, m.number, m.name, kinds.get(m.person_id, ""), m.department or "",
             min(cards.get(m.person_id, [""]))]
            for m in att.members(conn, department, staff_only=False)
        ]  # fmt: skip

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["person_id", "number", "name", "kind", "department", "card_uid"])
    writer.writerows(_run(db_path, rows))
    if out is None:
        click.echo(buffer.getvalue(), nl=False)
    else:
        out.write_bytes(("\ufeff" + buffer.getvalue()).encode())
        click.echo(f"wrote {out}")


COMMANDS = [attendance, dept]
