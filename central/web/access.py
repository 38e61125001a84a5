"""Access administration on the dashboard: a site's door groups (anti-passback, fail mode),
doors, weekly time zones, holidays and access levels; who holds each level — granted to a
department (and everyone under it) or to a person — with grant and revoke forms. Door groups,
zones and levels are defined with ``onecard-central access …`` (docs/attendance.md); grants,
the everyday work, are made here too. Every change goes to the sites through the feed and
into the audit log. Reading: admins, operators, auditors; changing: admins and operators.
"""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, time, timedelta
from typing import Any

import msgspec
from starlette.responses import Response

from central import access as acc
from central.attendance import AttendanceError
from central.web.page import PageContext
from edge_agent.core.model import AccessGrant

READ = frozenset({"admin", "operator", "auditor"})
CHANGE = frozenset({"admin", "operator"})


def _site_data(conn: sqlite3.Connection, site: str) -> dict[str, Any]:
    def rows(entity: str) -> list[dict[str, Any]]:
        return [
            msgspec.json.decode(data)
            for (data,) in conn.execute(
                "SELECT data FROM master WHERE scope = ? AND entity = ? ORDER BY key",
                (site, entity),
            )
        ]

    return {
        "groups": rows("door_group"),
        "doors": rows("door"),
        "zones": rows("time_zone"),
        "holidays": rows("holiday"),
        "levels": rows("access_level"),
    }


def _spans(intervals: list[list[int]]) -> str:
    return ", ".join(f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}" for a, b in intervals)


async def show(ctx: PageContext, *, done: str | None = None, refused: str | None = None,
               status: int = 200) -> Response:  # fmt: skip
    """GET /access?site=SITE"""
    site = ctx.request.query_params.get("site", "")

    def load(conn: sqlite3.Connection) -> dict[str, Any]:
        sites = [r[0] for r in conn.execute("SELECT id FROM sites WHERE removed = 0 ORDER BY id")]
        chosen = site if site in sites else (sites[0] if sites else "")
        dept_grants = conn.execute(
            "SELECT g.department, coalesce(d.name, ''), g.level_id, g.valid_from, g.valid_to"
            " FROM access_dept_grants g LEFT JOIN departments d ON d.id = g.department"
            " ORDER BY g.department, g.level_id"
        ).fetchall()
        own = conn.execute(
            "SELECT count(*) FROM master m WHERE m.scope = '' AND m.entity = 'access_grant'"
            " AND NOT EXISTS (SELECT 1 FROM access_derived d WHERE d.person_id ="
            " json_extract(m.data, '$.person_id') AND d.level_id ="
            " json_extract(m.data, '$.access_level_id'))"
        ).fetchone()[0]
        departments = conn.execute("SELECT id, name FROM departments ORDER BY id").fetchall()
        levels = sorted({r[0] for r in conn.execute(
            "SELECT key FROM master WHERE entity = 'access_level'")})  # fmt: skip
        return {
            "sites": sites,
            "site": chosen,
            "data": _site_data(conn, chosen) if chosen else None,
            "dept_grants": dept_grants,
            "own_grants": own,
            "departments": departments,
            "all_levels": levels,
        }

    values = await ctx.web.store.run(load)
    role = ctx.user.role if ctx.user else None
    person = ctx.request.query_params.get("person", "").strip()
    person_grants = (
        await ctx.web.store.run(lambda conn: acc.grants_of(conn, person)) if person else None
    )
    return ctx.render(
        "access.html",
        status=status,
        title=ctx.t("access.title"),
        spans=_spans,
        weekdays=range(7),
        may_change=role in CHANGE,
        person=person,
        person_grants=person_grants,
        done=done,
        refused=refused,
        **values,
    )


def _until(ctx: PageContext, raw: str) -> datetime | None:
    if not raw:
        return None
    day = date.fromisoformat(raw)  # ValueError: the caller words it
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=ctx.zone) - timedelta(
        seconds=1
    )


async def change(ctx: PageContext) -> Response:
    """POST /access/{action}: grant-dept, revoke-dept, grant, revoke."""
    action = ctx.request.path_params["action"]
    if ctx.form_value("confirm", 5) != "yes":
        return await show(ctx, refused=ctx.t("people.not_confirmed"), status=400)
    level = ctx.form_value("level", 64).strip()
    department = ctx.form_value("department", 64).strip()
    person = ctx.form_value("person", 64).strip()
    operator = ctx.user.username if ctx.user else ""
    try:
        until = _until(ctx, ctx.form_value("valid_to", 10))
    except ValueError:
        return await show(ctx, refused=ctx.t("people.not_a_date", value="valid_to"), status=400)

    def run(conn: sqlite3.Connection) -> str:
        if action == "grant-dept":
            n = acc.grant_department(
                conn, department, level, valid_to=until, operator=operator, source="hq:web"
            )
            return ctx.t("access.done.grant_dept", n=n)
        if action == "revoke-dept":
            n = acc.revoke_department(conn, department, level, operator=operator, source="hq:web")
            return ctx.t("access.done.revoke_dept", n=n)
        if action == "grant":
            value = AccessGrant(person_id=person, access_level_id=level, valid_to=until)
            acc.grant(conn, value, operator=operator, source="hq:web")
            return ctx.t("access.done.grant")
        if action == "revoke":
            acc.revoke(conn, person, level, operator=operator, source="hq:web")
            return ctx.t("access.done.revoke")
        raise acc.AccessError(f"unknown action {action}")

    try:
        text = await ctx.web.store.run(run)
    except (acc.AccessError, AttendanceError) as exc:
        return await show(ctx, refused=str(exc), status=409)
    return await show(ctx, done=text)


async def page(ctx: PageContext) -> Response:
    """The page handler (``show`` takes the outcome of a change as keywords)."""
    return await show(ctx)
