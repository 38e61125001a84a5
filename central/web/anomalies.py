"""Anomalies: what central flagged (negative balances, skewed clocks, seq gaps, cards let
in although listed …), newest first, filtered by state, kind and site; and the two things
HQ does with one — acknowledge it (someone is on it) and resolve it (with a note saying
how). Resolved is final: a second try is answered with the conflict's message.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from starlette.responses import Response

from central import queries
from central.api import HANDLE_ANOMALIES
from central.web import i18n
from central.web.page import SOURCE, PageContext

STATES: tuple[queries.AnomalyState, ...] = ("open", "acknowledged", "resolved")
#: The most a note may hold.
MAX_NOTE = 500
LIMIT = 200


def _choices(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
    kinds = [r[0] for r in conn.execute("SELECT DISTINCT kind FROM anomalies ORDER BY kind")]
    sites = [r[0] for r in conn.execute("SELECT id FROM sites ORDER BY id")]
    return kinds, sites


def kind_label(ctx: PageContext, kind: str) -> str:
    """A kind in words when we have them, else as stored."""
    key = f"anomalies.kind.{kind}"
    return ctx.t(key) if key in i18n.MESSAGES["en"] else kind


def detail_lines(detail: Any) -> list[tuple[str, str]]:
    """An anomaly's detail as (name, value) pairs, in a stable order."""
    if not isinstance(detail, dict):
        return [("", str(detail))] if detail not in (None, "") else []
    return [(str(k), _text(v)) for k, v in sorted(detail.items())]


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={_text(v)}" for k, v in sorted(value.items()))
    return "—" if value is None else str(value)


async def show(ctx: PageContext) -> Response:
    """GET /anomalies?state=…&kind=…&site=…"""
    return await _page(ctx)


async def acknowledge(ctx: PageContext) -> Response:
    """POST /anomalies/{anomaly_id}/acknowledge: someone is on it (note optional)."""
    return await _act(ctx, "acknowledged")


async def resolve(ctx: PageContext) -> Response:
    """POST /anomalies/{anomaly_id}/resolve: done, with a note saying how (required)."""
    return await _act(ctx, "resolved")


async def _act(ctx: PageContext, state: queries.AnomalyState) -> Response:
    raw_id = ctx.request.path_params["anomaly_id"]
    note = ctx.form_value("note", MAX_NOTE).strip()
    if not raw_id.isdigit():
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("anomalies.not_found", id=raw_id))
    anomaly_id = int(raw_id)
    if state == "resolved" and not note:
        refused = ("note_required", ctx.t("anomalies.note_required"))
        return await _page(ctx, refused=refused, status=400)
    operator = ctx.user.username if ctx.user else ""
    role, ip = ctx.caller.role, ctx.caller.ip

    def change(conn: sqlite3.Connection) -> tuple[str, str] | None:
        try:
            queries.set_anomaly_state(
                conn,
                anomaly_id,
                state,
                operator=operator,
                source=SOURCE,
                note=note,
                role=role,
                ip=ip,
            )
        except queries.NotFoundError:
            return ("not_found", ctx.t("anomalies.not_found", id=anomaly_id))
        except queries.ConflictError as exc:
            return ("conflict", str(exc))
        return None

    problem = await ctx.web.store.run(change)
    if problem is None:
        done = ctx.t(f"anomalies.done.{state}", id=anomaly_id)
        return await _page(ctx, done=done)
    return await _page(ctx, refused=problem, status=404 if problem[0] == "not_found" else 409)


async def _page(
    ctx: PageContext,
    *,
    done: str | None = None,
    refused: tuple[str, str] | None = None,
    status: int = 200,
) -> Response:
    p = ctx.request.query_params
    state = p.get("state", "")
    chosen = {
        "state": state if state in STATES else "",
        "kind": p.get("kind", "").strip()[:64],
        "site": p.get("site", "").strip()[:64],
    }

    def load(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        rows = queries.anomalies(
            conn,
            state=chosen["state"] or None,
            kind=chosen["kind"] or None,
            site=chosen["site"] or None,
            limit=LIMIT,
        )
        return (rows, *_choices(conn))

    rows, kinds, sites = await ctx.web.store.run(load)
    for row in rows:
        row["kind_label"] = kind_label(ctx, row["kind"])
        row["lines"] = detail_lines(row["detail"])
    role = ctx.user.role if ctx.user else None
    return ctx.render(
        "anomalies.html",
        status=status,
        title=ctx.t("anomalies.title"),
        rows=rows,
        chosen=chosen,
        filtered=any(chosen.values()),
        states=STATES,
        kinds=[(k, kind_label(ctx, k)) for k in kinds],
        sites=sites,
        may_act=role in HANDLE_ANOMALIES,
        done=done,
        refused=refused,
        back=ctx.url("/anomalies", **chosen),
        query=ctx.request.url.query,
        max_note=MAX_NOTE,
    )
