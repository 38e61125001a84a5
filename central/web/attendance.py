"""Attendance on the dashboard: a department's (or everyone's) month — days, late and early,
absences, missing punches, hours, overtime by level — with CSV and XLSX downloads, and one
person's month day by day, where a manual punch (补卡) is added with its reason.

Reports are computed when asked for (:mod:`central.attendance`), so a punch a site delivers
late, a manual punch or a corrected roster shows at once. Times are shown in the attendance
zone. Reading: admins, operators, finance and auditors; manual punches: admins and operators.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime
from typing import Any

from starlette.responses import Response

from central import attendance as att
from central.core.attendance import summarise
from central.web.page import PageContext


def _month(ctx: PageContext) -> tuple[int, int] | None:
    raw = ctx.request.query_params.get("month", "")
    if not raw:
        today = datetime.now(ctx.zone).date()
        return today.year, today.month
    try:
        year, month = (int(p) for p in raw.split("-"))
        date(year, month, 1)
    except ValueError:
        return None
    return year, month


async def report(ctx: PageContext) -> Response:
    """GET /attendance?month=YYYY-MM&department=ID (or ``day=YYYY-MM-DD``: that day)"""
    month = _month(ctx)
    department = ctx.request.query_params.get("department") or None
    if ctx.request.query_params.get("day"):
        return await _day(ctx, department)
    if month is None:
        return ctx.error(400, ctx.t("error.400.title"), ctx.t("attendance.bad_month"))

    def load(conn: sqlite3.Connection) -> tuple[att.MonthReport, list[tuple[str, str]]] | None:
        depts = conn.execute("SELECT id, name FROM departments ORDER BY id").fetchall()
        try:
            return att.month_report(conn, *month, department), depts
        except att.AttendanceError:
            return None

    found = await ctx.web.store.run(load)
    if found is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("attendance.no_department"))
    data, departments = found
    return ctx.render(
        "attendance.html",
        title=ctx.t("attendance.title"),
        report=data,
        rows=[(p.member, att.summary_row(p.member, p.summary)) for p in data.people],
        total=att.summary_row(None, data.total),
        departments=departments,
        month=f"{month[0]}-{month[1]:02d}",
        department=department or "",
    )


async def _day(ctx: PageContext, department: str | None) -> Response:
    """One day for the department: everyone's status, in, out, minutes."""
    try:
        day = date.fromisoformat(ctx.request.query_params["day"])
    except ValueError:
        return ctx.error(400, ctx.t("error.400.title"), ctx.t("attendance.bad_day"))

    def load(conn: sqlite3.Connection) -> dict[str, Any] | None:
        try:
            people = att.members(conn, department)
        except att.AttendanceError:
            return None
        rules = att.load_rules(conn)
        rows = [(m, att.person_days(conn, m, [day], rules)[0]) for m in people]
        depts = conn.execute("SELECT id, name FROM departments ORDER BY id").fetchall()
        return {"rows": rows, "departments": depts, "zone": rules.zone}

    found = await ctx.web.store.run(load)
    if found is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("attendance.no_department"))
    zone = found["zone"]
    return ctx.render(
        "attendance_day.html",
        title=ctx.t("attendance.title"),
        day=day.isoformat(),
        month=f"{day.year}-{day.month:02d}",
        department=department or "",
        rows=found["rows"],
        departments=found["departments"],
        local=lambda at: "" if at is None else at.astimezone(zone).strftime("%H:%M"),
    )


async def download(ctx: PageContext) -> Response:
    """GET /attendance.csv and /attendance.xlsx (same query as the page)."""
    month = _month(ctx)
    department = ctx.request.query_params.get("department") or None
    if month is None:
        return ctx.error(400, ctx.t("error.400.title"), ctx.t("attendance.bad_month"))
    xlsx = ctx.request.url.path.endswith(".xlsx")

    def build(conn: sqlite3.Connection) -> bytes | None:
        try:
            data = att.month_report(conn, *month, department)
        except att.AttendanceError:
            return None
        return att.report_xlsx(data, att.zone(conn)) if xlsx else att.report_csv(data)

    body = await ctx.web.store.run(build)
    if body is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("attendance.no_department"))
    name = f"attendance-{month[0]}-{month[1]:02d}{'-' + department if department else ''}"
    media = (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
        if xlsx
        else "text/csv; charset=utf-8"
    )
    suffix = "xlsx" if xlsx else "csv"
    return Response(
        body,
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'},
    )


async def person(ctx: PageContext) -> Response:
    """GET /attendance/people/{person_id}?month=YYYY-MM"""
    return await _person_page(ctx)


async def punch(ctx: PageContext) -> Response:
    """POST /attendance/people/{person_id}/punch: a manual punch (补卡) with its reason."""
    person_id = ctx.request.path_params["person_id"]
    when = ctx.form_value("at", 20)
    reason = ctx.form_value("reason", 200).strip()
    if ctx.form_value("confirm", 5) != "yes":
        return await _person_page(ctx, refused=ctx.t("people.not_confirmed"), status=400)
    try:
        local = datetime.fromisoformat(when)
    except ValueError:
        return await _person_page(ctx, refused=ctx.t("attendance.bad_time"), status=400)
    operator = ctx.user.username if ctx.user else ""

    def add(conn: sqlite3.Connection) -> str:
        at = local.replace(tzinfo=att.zone(conn)) if local.tzinfo is None else local
        return att.add_manual_punch(
            conn, person_id, at.astimezone(UTC), operator=operator, note=reason, source="hq:web"
        )

    try:
        await ctx.web.store.run(add)
    except att.AttendanceError as exc:
        return await _person_page(ctx, refused=str(exc), status=400)
    return await _person_page(ctx, done=ctx.t("attendance.punch_added"))


LEAVE_KINDS = ("annual", "sick", "personal", "business", "other")


async def leave(ctx: PageContext) -> Response:
    """POST /attendance/people/{person_id}/leave: approved leave from … to … (local times)."""
    person_id = ctx.request.path_params["person_id"]
    kind = ctx.form_value("kind", 20)
    note = ctx.form_value("note", 200).strip()
    if ctx.form_value("confirm", 5) != "yes":
        return await _person_page(ctx, refused=ctx.t("people.not_confirmed"), status=400)
    if kind not in LEAVE_KINDS:
        return await _person_page(ctx, refused=ctx.t("people.op_invalid"), status=400)
    try:
        start = datetime.fromisoformat(ctx.form_value("start", 20))
        end = datetime.fromisoformat(ctx.form_value("end", 20))
    except ValueError:
        return await _person_page(ctx, refused=ctx.t("attendance.bad_time"), status=400)
    operator = ctx.user.username if ctx.user else ""

    def add(conn: sqlite3.Connection) -> int:
        zone = att.zone(conn)
        begin, finish = (t.replace(tzinfo=zone) if t.tzinfo is None else t for t in (start, end))
        return att.add_leave(
            conn,
            person_id,
            begin.astimezone(UTC),
            finish.astimezone(UTC),
            kind=kind,
            operator=operator,
            note=note,
            source="hq:web",
        )

    try:
        await ctx.web.store.run(add)
    except att.AttendanceError as exc:
        return await _person_page(ctx, refused=str(exc), status=400)
    return await _person_page(ctx, done=ctx.t("attendance.leave_added"))


async def _person_page(
    ctx: PageContext, *, done: str | None = None, refused: str | None = None, status: int = 200
) -> Response:
    person_id = ctx.request.path_params["person_id"]
    month = _month(ctx) or (datetime.now(ctx.zone).year, datetime.now(ctx.zone).month)

    def load(conn: sqlite3.Connection) -> dict[str, Any] | None:
        member = next(
            (m for m in att.members(conn, None, staff_only=False) if m.person_id == person_id), None
        )
        if member is None:
            return None
        days = att.person_days(conn, member, att.month_days(*month))
        return {
            "member": member,
            "days": days,
            "summary": summarise(days),
            "zone": att.zone(conn),
        }

    found = await ctx.web.store.run(load)
    if found is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("people.not_found", id=person_id))
    role = ctx.user.role if ctx.user else None
    zone = found["zone"]
    return ctx.render(
        "attendance_person.html",
        status=status,
        title=found["member"].name,
        month=f"{month[0]}-{month[1]:02d}",
        local=lambda at: "" if at is None else at.astimezone(zone).strftime("%H:%M"),
        may_correct=role in {"admin", "operator"},
        leave_kinds=LEAVE_KINDS,
        done=done,
        refused=refused,
        **found,
    )
