"""Upgrades on the dashboard and the API: every rollout with its progress, one rollout's
stages, sites (state, step detail, the version each runs) and log, and the controls —
pause, resume, abort, retry failed sites (docs/upgrade.md). Rollouts are started with
``onecard-central rollout start`` (it needs the release store and the URL sites download
from); everything after that can be done here.

- Pages: ``GET /rollouts``, ``GET /rollouts/{rollout_id}``, ``POST
  /rollouts/{rollout_id}/{action}`` (form: ``note``, ``sites``, ``confirm``).
- API (bearer token): ``GET /api/v1/rollouts``, ``GET /api/v1/rollouts/{rollout_id}``, ``POST
  /api/v1/rollouts/{rollout_id}/{action}`` with ``{"note": "…"}`` or ``{"sites": […]}``.

Admins and technicians control rollouts; auditors read them. Every control is audited.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central.core.effects import AuditEntry
from central.core.rollout import (
    FAILURES,
    Abort,
    Pause,
    Resume,
    Retry,
    Rollout,
    RolloutError,
    counts,
)
from central.operations import write_audit
from central.rollouts import history, list_rollouts, load, transact
from central.web.logs import identify_token, json_error
from central.web.page import PageContext

if TYPE_CHECKING:
    from central.store import Store

#: Who may pause, resume, abort and retry.
CONTROL = frozenset({"admin", "technician"})
#: Who may look.
READ = frozenset({"admin", "technician", "auditor"})
ACTIONS = ("pause", "resume", "abort", "retry")
LOG_LINES = 100


class ControlRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/rollouts/{id}/{action}``."""

    note: str = ""
    sites: list[str] = []


def summary(rollout: Rollout) -> dict[str, Any]:
    """A rollout in one row."""
    tally = counts(rollout)
    return {
        "id": rollout.id,
        "version": rollout.version,
        "status": rollout.status,
        "pause_reason": rollout.pause_reason,
        "created_at": rollout.created_at.isoformat(),
        "created_by": rollout.created_by,
        "sites": len(rollout.sites),
        "counts": {state: n for state, n in tally.items() if n},
    }


def control(
    conn: sqlite3.Connection,
    rollout_id: str,
    action: str,
    *,
    operator: str,
    role: str | None,
    ip: str | None,
    source: str,
    note: str = "",
    sites: tuple[str, ...] = (),
) -> Rollout:
    """Apply an operator's action; audited. :class:`RolloutError` when it does not apply."""
    at = datetime.now(UTC)
    if action == "pause":
        event: Any = Pause(at=at, operator=operator, note=note[:500])
    elif action == "resume":
        event = Resume(at=at, operator=operator)
    elif action == "abort":
        event = Abort(at=at, operator=operator, note=note[:500])
    elif action == "retry":
        if not sites:
            raise RolloutError("name the sites to retry")
        event = Retry(at=at, operator=operator, sites=sites)
    else:
        raise RolloutError(f"unknown action {action!r}: use {', '.join(ACTIONS)}")
    before = load(conn, rollout_id)
    after = transact(conn, rollout_id, event).rollout
    write_audit(
        conn,
        AuditEntry(
            request_id=f"rollout.{action}:{rollout_id}:{int(at.timestamp() * 1000)}",
            operator=operator,
            source=source,
            action=f"rollout.{action}",
            target=f"rollout:{rollout_id}",
            at=at,
            before={"status": before.status},
            after={"status": after.status, "sites": ",".join(sites)},
            note=note[:500],
        ),
        role=role,
        ip=ip,
    )
    return after


# --- pages ------------------------------------------------------------------------------------


async def index(ctx: PageContext) -> Response:
    """GET /rollouts"""
    rows = await ctx.web.store.run(lambda conn: [summary(r) for r in list_rollouts(conn)])
    return ctx.render("rollouts.html", title=ctx.t("rollouts.title"), rows=rows)


async def show(ctx: PageContext) -> Response:
    """GET /rollouts/{rollout_id}"""
    return await _detail(ctx, ctx.request.path_params["rollout_id"])


async def act(ctx: PageContext) -> Response:
    """POST /rollouts/{rollout_id}/{action}"""
    rollout_id = ctx.request.path_params["rollout_id"]
    action = ctx.request.path_params["action"]
    if ctx.form_value("confirm", 5) != "yes":
        return await _detail(ctx, rollout_id, refused=ctx.t("people.not_confirmed"), status=400)
    note = ctx.form_value("note", 500).strip()
    sites = tuple(s for s in ctx.form.getlist("sites") if isinstance(s, str)) if ctx.form else ()
    operator = ctx.user.username if ctx.user else ""

    def run(conn: sqlite3.Connection) -> Rollout:
        return control(
            conn,
            rollout_id,
            action,
            operator=operator,
            role=ctx.caller.role,
            ip=ctx.caller.ip,
            source="hq:web",
            note=note,
            sites=sites,
        )

    try:
        await ctx.web.store.run(run)
    except RolloutError as exc:
        return await _detail(ctx, rollout_id, refused=str(exc), status=409)
    return await _detail(ctx, rollout_id, done=ctx.t(f"rollouts.done.{action}"))


async def _detail(
    ctx: PageContext,
    rollout_id: str,
    *,
    done: str | None = None,
    refused: str | None = None,
    status: int = 200,
) -> Response:
    def read(conn: sqlite3.Connection) -> tuple[Rollout, list[dict[str, Any]]] | None:
        try:
            return load(conn, rollout_id), history(conn, rollout_id, LOG_LINES)
        except RolloutError:
            return None

    found = await ctx.web.store.run(read)
    if found is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("rollouts.not_found", id=rollout_id))
    rollout, log = found
    role = ctx.user.role if ctx.user else None
    sites = sorted(rollout.sites.values(), key=lambda s: (s.stage, s.site))
    return ctx.render(
        "rollout.html",
        status=status,
        title=rollout_id,
        rollout=rollout,
        summary=summary(rollout),
        sites=sites,
        failed=[s.site for s in sites if s.state in FAILURES],
        log=log,
        may_control=role in CONTROL,
        done=done,
        refused=refused,
    )


# --- the API ----------------------------------------------------------------------------------


def api_routes(store: Store) -> list[Route]:
    """The API routes (see the module docstring)."""

    async def listing(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        if who[1] not in READ:
            return json_error(403, "forbidden", f"the {who[1]} role may not read rollouts")
        rows = await store.run(lambda conn: [summary(r) for r in list_rollouts(conn)])
        return JSONResponse(rows)

    async def one(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        if who[1] not in READ:
            return json_error(403, "forbidden", f"the {who[1]} role may not read rollouts")
        rollout_id = request.path_params["rollout_id"]

        def read(conn: sqlite3.Connection) -> dict[str, Any] | None:
            try:
                r = load(conn, rollout_id)
            except RolloutError:
                return None
            return {**msgspec.to_builtins(r), "log": history(conn, rollout_id, LOG_LINES)}

        found = await store.run(read)
        if found is None:
            return json_error(404, "not_found", f"no rollout {rollout_id}")
        return JSONResponse(found)

    async def act_api(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        name, role = who
        if role not in CONTROL:
            return json_error(403, "forbidden", f"the {role} role may not control rollouts")
        rollout_id, action = request.path_params["rollout_id"], request.path_params["action"]
        if action not in ACTIONS:
            return json_error(404, "not_found", f"no action {action}: use {', '.join(ACTIONS)}")
        body = await request.body()
        if len(body) > 8192:
            return json_error(413, "too_large", "the body is over 8192 bytes")
        try:
            wanted = msgspec.json.decode(body or b"{}", type=ControlRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, "invalid_request", str(exc))
        ip = request.client.host if request.client else None

        def run(conn: sqlite3.Connection) -> Rollout | None:
            try:
                load(conn, rollout_id)
            except RolloutError:
                return None
            return control(
                conn,
                rollout_id,
                action,
                operator=name,
                role=role,
                ip=ip,
                source="hq:api",
                note=wanted.note,
                sites=tuple(wanted.sites),
            )

        try:
            after = await store.run(run)
        except RolloutError as exc:
            return json_error(409, "conflict", str(exc))
        if after is None:
            return json_error(404, "not_found", f"no rollout {rollout_id}")
        return JSONResponse(summary(after))

    return [
        Route("/api/v1/rollouts", listing, methods=["GET"]),
        Route("/api/v1/rollouts/{rollout_id}", one, methods=["GET"]),
        Route("/api/v1/rollouts/{rollout_id}/{action}", act_api, methods=["POST"]),
    ]
