"""Alerts: what central's rules raised (a site offline, terminals down, records unsynced for
an hour …), most severe first, with who acknowledged each and when it resolved. Admins,
operators and technicians acknowledge an open alert (someone is on it); alerts resolve by
themselves when their condition clears. Everyone else reads.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from starlette.responses import Response

from central import alerts, queries
from central.core.alerts import SEVERITIES
from central.web import i18n
from central.web.page import SOURCE, PageContext

#: Who may acknowledge an alert.
ACK_ALERTS = frozenset({"admin", "operator", "technician"})
VIEWS = ("active", "resolved", "all")
MAX_NOTE = 500
LIMIT = 200


def kind_label(ctx: PageContext, kind: str) -> str:
    """A kind in words when we have them, else as stored."""
    key = f"alerts.kind.{kind}"
    return ctx.t(key) if key in i18n.MESSAGES["en"] else kind


def decorate(ctx: PageContext, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add what the templates show: the kind in words, the detail as pairs."""
    for row in rows:
        row["kind_label"] = kind_label(ctx, row["kind"])
        row["lines"] = [(str(k), "—" if v is None else str(v)) for k, v in row["detail"].items()]
    return rows


async def show(ctx: PageContext) -> Response:
    """GET /alerts?view=active|resolved|all"""
    return await _page(ctx)


async def acknowledge(ctx: PageContext) -> Response:
    """POST /alerts/{alert_id}/acknowledge (note optional)."""
    raw_id = ctx.request.path_params["alert_id"]
    if not raw_id.isdigit():
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("alerts.not_found", id=raw_id))
    alert_id = int(raw_id)
    note = ctx.form_value("note", MAX_NOTE).strip()
    operator = ctx.user.username if ctx.user else ""
    role, ip, at = ctx.caller.role, ctx.caller.ip, ctx.now_ms

    def change(conn: sqlite3.Connection) -> tuple[str, str] | None:
        try:
            alerts.acknowledge(
                conn,
                alert_id,
                operator=operator,
                source=SOURCE,
                at_ms=at,
                note=note,
                role=role,
                ip=ip,
            )
        except queries.NotFoundError:
            return ("not_found", ctx.t("alerts.not_found", id=alert_id))
        except queries.ConflictError as exc:
            return ("conflict", str(exc))
        return None

    problem = await ctx.web.store.run(change)
    if problem is None:
        return await _page(ctx, done=ctx.t("alerts.done", id=alert_id))
    return await _page(ctx, refused=problem, status=404 if problem[0] == "not_found" else 409)


async def _page(
    ctx: PageContext,
    *,
    done: str | None = None,
    refused: tuple[str, str] | None = None,
    status: int = 200,
) -> Response:
    view = ctx.request.query_params.get("view", "active")
    view = view if view in VIEWS else "active"

    def load(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, int]]:
        rows = alerts.alert_list(
            conn,
            active=view == "active",
            state="resolved" if view == "resolved" else None,
            limit=LIMIT,
        )
        return rows, alerts.active_counts(conn)

    rows, counts = await ctx.web.store.run(load)
    role = ctx.user.role if ctx.user else None
    return ctx.render(
        "alerts.html",
        status=status,
        title=ctx.t("alerts.title"),
        rows=decorate(ctx, rows),
        counts=counts,
        severities=SEVERITIES,
        view=view,
        views=VIEWS,
        may_ack=role in ACK_ALERTS,
        done=done,
        refused=refused,
        max_note=MAX_NOTE,
    )


#: Alerts listed on the overview (the rest are a click away).
OVERVIEW_LIMIT = 10


async def overview_block(ctx: PageContext) -> dict[str, Any]:
    """The overview's alerts block: counts per severity and the most severe alerts."""

    def load(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], dict[str, int]]:
        return alerts.alert_list(conn, active=True, limit=OVERVIEW_LIMIT), alerts.active_counts(
            conn
        )

    rows, counts = await ctx.web.store.run(load)
    return {
        "rows": decorate(ctx, rows),
        "counts": counts,
        "severities": SEVERITIES,
        "total": sum(counts.values()),
    }
