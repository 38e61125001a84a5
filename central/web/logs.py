"""Remote log tail over HTTP: a site's live log as Server-Sent Events, and its page.

- ``GET /api/v1/sites/{site}/logs?level=info&since=10m&grep=TEXT&follow=1`` — for
  ``onecard-central logs`` and scripts: ``Authorization: Bearer <token>``, roles admin and
  technician. Errors are the API's JSON errors (400, 401, 403, 404, 503).
- ``POST /api/v1/sites/{site}/log-level`` ``{"level": "debug", "duration_s": 1800}`` —
  the site's daemon logs at that level for that long, then reverts by itself (202
  ``{"command_id"}``; audited as ``logs.level``). Same token and roles.
- ``GET /sites/{site}/logs`` — the dashboard page (a small EventSource viewer, ``logs.js``)
  and ``GET /sites/{site}/logs/stream`` — the same stream for it, by session cookie.

The stream is ``text/event-stream``; its events:

- ``line``: one log line, JSON ``{"at", "level", "event", "logger", "fields"}`` (``at`` in
  UTC; redacted at the edge). A ``logger: "logtail"`` line is the edge's
  ``N lines suppressed`` marker.
- ``caught_up``: the lines of ``since`` have all been sent; what follows is live. Without
  ``follow`` (``follow=0``) the stream ends here.
- ``notice``: ``{"text"}`` — batches lost, the viewer too slow, HQ not on the broker.
- ``end``: ``{"reason"}`` — the tail is over (``ttl``, ``stopped``, ``shutdown``; without
  ``follow``, ``no_answer`` when the site sent nothing within ``NO_ANSWER_S``).

A comment line every ``KEEPALIVE_S`` keeps proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from central import queries
from central.api import in_front
from central.logtail import LEVELS, TAIL_ROLES, TailError, TailHub, Viewer
from central.store import Store
from central.web.page import EVERYONE, Page, PageContext
from edge_agent.logs import LogQueryError, parse_since
from protocol.topics import is_valid_site_id

KEEPALIVE_S = 15.0
#: Without ``follow``, the stream ends (``no_answer``) if the site has not sent its replay
#: by then (it is offline, or too old to tail).
NO_ANSWER_S = 15.0
#: Longest ``since`` (the edge keeps its last 2,000 lines anyway).
MAX_SINCE_S = 86400
MAX_GREP = 200
API_PATH = "/api/v1/sites/{site}/logs"
LEVEL_PATH = "/api/v1/sites/{site}/log-level"
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


class QueryError(ValueError):
    """A query parameter of the stream cannot be used."""


@dataclass(frozen=True)
class TailQuery:
    """What a viewer asks for."""

    level: str
    since_s: int
    grep: str | None
    follow: bool


def parse_query(params: dict[str, str], now: datetime | None = None) -> TailQuery:
    """``level``, ``since`` (``30s``, ``10m``, ``2h``, seconds, or a time), ``grep``,
    ``follow`` (``1``/``0``) — or :class:`QueryError` naming the parameter."""
    level = params.get("level", "info").lower() or "info"
    if level == "warn":
        level = "warning"
    if level not in LEVELS:
        raise QueryError(f"level {level!r}: use one of {', '.join(LEVELS)}")
    since_s = 0
    raw_since = params.get("since", "").strip()
    if raw_since:
        if raw_since.isascii() and raw_since.isdigit():
            if len(raw_since) > 9:
                raise QueryError(f"since must be within the last {MAX_SINCE_S // 3600} h")
            since_s = int(raw_since)
        else:
            now = now or datetime.now(UTC)
            try:
                since_s = int((now - parse_since(raw_since, now)).total_seconds())
            except LogQueryError as exc:
                raise QueryError(str(exc).replace("--since", "since")) from None
        if not 0 <= since_s <= MAX_SINCE_S:
            raise QueryError(f"since must be within the last {MAX_SINCE_S // 3600} h")
    grep = params.get("grep") or None
    if grep is not None and len(grep) > MAX_GREP:
        raise QueryError(f"grep is longer than {MAX_GREP} characters")
    follow = params.get("follow", "1").lower() not in {"0", "false", "no"}
    return TailQuery(level, since_s, grep, follow)


def sse(kind: str, data: object) -> bytes:
    """One Server-Sent Event."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {text}\n\n".encode()


async def event_stream(hub: TailHub, viewer: Viewer, *, follow: bool) -> AsyncIterator[bytes]:
    """The viewer's events as SSE, until the tail ends (or ``caught_up`` without
    ``follow``); the viewer leaves when the client goes away, too."""
    reason = "closed"
    # Without follow, a site that never answers must not leave the caller waiting.
    give_up = None if follow else time.monotonic() + NO_ANSWER_S
    try:
        yield f": tail of {viewer.site}\nretry: 5000\n\n".encode()
        while True:
            wait = KEEPALIVE_S if give_up is None else min(KEEPALIVE_S, give_up - time.monotonic())
            if wait <= 0:
                reason = "no_answer"
                yield sse("end", {"reason": reason})
                return
            getter = asyncio.ensure_future(viewer.queue.get())
            try:
                done, _ = await asyncio.wait({getter}, timeout=wait)
            finally:
                getter.cancel()
            if not done:
                yield b": keep-alive\n\n"
                continue
            event = getter.result()
            yield sse(event.kind, event.data)
            if event.kind == "end":
                reason = str(event.data.get("reason", "ended"))
                return
            if event.kind == "caught_up" and not follow:
                reason = "caught_up"
                give_up = None
                yield sse("end", {"reason": "caught_up"})
                return
    finally:
        hub.leave(viewer, reason)


async def _start(
    hub: TailHub | None,
    site: str,
    query: TailQuery,
    *,
    user: str,
    role: str,
    ip: str | None,
) -> StreamingResponse:
    """Join the site's tail and answer with its stream (errors raised as
    PermissionError / TailError for the caller to word)."""
    if hub is None:
        raise TailError("remote log tail needs `onecard-central serve` (with the broker)")
    viewer = await hub.join(
        site,
        user=user,
        role=role,
        ip=ip,
        level=query.level,
        grep=query.grep,
        since_s=query.since_s,
    )
    return StreamingResponse(
        event_stream(hub, viewer, follow=query.follow),
        media_type="text/event-stream",
        headers=_SSE_HEADERS,
    )


# --- the API route (bearer token) -----------------------------------------------------------------


def json_error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def identify_token(store: Store, request: Request) -> tuple[str, str] | JSONResponse:
    """(name, role) of the request's bearer token, or the 401 to answer."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return json_error(401, "unauthenticated", "send Authorization: Bearer <token>")
    found = await store.run(lambda conn: queries.token_identity(conn, token.strip()))
    if found is None:
        return json_error(401, "unauthenticated", "unknown or revoked token")
    return found


def _tail_error(exc: TailError) -> JSONResponse:
    text = str(exc)
    if text.startswith("no site"):
        return json_error(404, "not_found", text)
    if text.startswith(("level", "duration")):
        return json_error(400, "invalid_request", text)
    return json_error(503, "unavailable", text)


class LevelChange(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /api/v1/sites/{site}/log-level``."""

    level: str
    duration_s: int = 1800


def api_routes(store: Store, hub: TailHub | None) -> list[Route]:
    """``GET /api/v1/sites/{site}/logs`` (the stream) and ``POST
    /api/v1/sites/{site}/log-level`` (``{"level", "duration_s"}``: a temporary level the
    site reverts by itself; 202 ``{"command_id"}``)."""

    async def logs(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        name, role = who
        site = request.path_params["site"]
        if not is_valid_site_id(site):
            return json_error(404, "not_found", f"no site {site}")
        try:
            query = parse_query(dict(request.query_params))
            return await _start(
                hub,
                site,
                query,
                user=name,
                role=role,
                ip=request.client.host if request.client else None,
            )
        except QueryError as exc:
            return json_error(400, "invalid_request", str(exc))
        except PermissionError as exc:
            return json_error(403, "forbidden", str(exc))
        except TailError as exc:
            return _tail_error(exc)

    async def log_level(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        name, role = who
        if role not in TAIL_ROLES:  # who may, before anything about the request itself
            return json_error(403, "forbidden", f"the {role} role may not change log levels")
        site = request.path_params["site"]
        if not is_valid_site_id(site):
            return json_error(404, "not_found", f"no site {site}")
        body = await request.body()
        if len(body) > 4096:
            return json_error(413, "too_large", "the body is over 4096 bytes")
        try:
            change = msgspec.json.decode(body, type=LevelChange)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, "invalid_request", str(exc))
        if hub is None:
            return json_error(503, "unavailable", "log levels need `onecard-central serve`")
        try:
            command_id = await hub.set_level(
                site,
                change.level,
                change.duration_s,
                user=name,
                role=role,
                ip=request.client.host if request.client else None,
            )
        except PermissionError as exc:
            return json_error(403, "forbidden", str(exc))
        except TailError as exc:
            return _tail_error(exc)
        return JSONResponse({"command_id": command_id}, status_code=202)

    return [
        Route(API_PATH, logs, methods=["GET"]),
        Route(LEVEL_PATH, log_level, methods=["POST"]),
    ]


def with_logs_api(api: ASGIApp, store: Store, hub: TailHub | None) -> Starlette:
    """``api`` with the log stream route in front of it."""
    return in_front(api_routes(store, hub), api)


# --- the dashboard page and its stream (session cookie) ------------------------------------------


def pages(hub: TailHub | None) -> list[Page]:
    """The dashboard's log page and its stream, for :data:`central.web.app.PAGES`."""

    async def show(ctx: PageContext) -> Response:
        site = ctx.request.path_params["site"]
        if not is_valid_site_id(site):
            return ctx.error(404, ctx.t("error.404.title"), ctx.t("error.404.text"))
        return ctx.render(
            "logs.html",
            title=ctx.t("logs.title", site=site),
            site=site,
            levels=list(LEVELS),
            stream_url=f"/sites/{site}/logs/stream",
        )

    async def stream(ctx: PageContext) -> Response:
        user = ctx.user
        site = ctx.request.path_params["site"]
        if user is None or not is_valid_site_id(site):  # the page wrapper signs people in
            return ctx.error(404, ctx.t("error.404.title"), ctx.t("error.404.text"))
        try:
            query = parse_query(dict(ctx.request.query_params))
            return await _start(hub, site, query, user=user.username, role=user.role, ip=ctx.ip)
        except QueryError as exc:
            return ctx.error(400, ctx.t("error.400.title"), str(exc))
        except PermissionError:
            role = ctx.t(f"role.{user.role}")
            return ctx.error(403, ctx.t("error.403.title"), ctx.t("error.403.role", role=role))
        except TailError as exc:
            return ctx.error(503, ctx.t("logs.unavailable"), str(exc))

    return [
        Page("/sites/{site}/logs", show, TAIL_ROLES),
        # Everyone signed in reaches the handler, so a refused tail is audited there.
        Page("/sites/{site}/logs/stream", stream, EVERYONE),
    ]
