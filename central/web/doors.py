"""Remote "open door now" from the dashboard's site page and the API (see
:mod:`central.doors`): admins, operators and technicians; every attempt audited.

- Page: ``POST /sites/{site}/doors/{door}/open`` (form: ``open_s``, ``confirm``), answered
  with the site page and the outcome.
- API: ``POST /api/v1/sites/{site}/doors/{door}/open`` with ``{"open_ms": 5000}`` (bearer
  token) → 200 ``{"status", "detail", "command_id"}`` (``status``: done, failed, rejected,
  unreachable), 404 for an unknown door, 403 for a role that may not, 503 without
  ``onecard-central serve``'s broker link.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from central import master
from central.api import in_front
from central.doors import UnknownDoorError, open_door
from central.web.logs import identify_token, json_error
from central.web.page import PageContext
from protocol.topics import is_valid_site_id

if TYPE_CHECKING:
    from central.service import CentralService
    from central.store import Store

#: Who may open a door from HQ.
DOOR_ROLES = frozenset({"admin", "operator", "technician"})
API_PATH = "/api/v1/sites/{site}/doors/{door}/open"


class OpenRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The body of the API call."""

    open_ms: int = 5000

    def __post_init__(self) -> None:
        if not 500 <= self.open_ms <= 60000:
            raise ValueError("open_ms must be 500 … 60000")


async def open_now(ctx: PageContext) -> Response:
    """POST /sites/{site}/doors/{door}/open from the site page."""
    from central.web import sites  # noqa: PLC0415 - sites renders the page we answer with

    site, door = ctx.request.path_params["site"], ctx.request.path_params["door"]
    seconds = ctx.form_value("open_s", 3)
    if ctx.form_value("confirm", 5) != "yes":
        return await sites.render(ctx, site, door_result=("refused", ctx.t("doors.confirm")))
    if not seconds.isdigit() or not 1 <= int(seconds) <= 60:
        return await sites.render(ctx, site, door_result=("refused", ctx.t("doors.bad_time")))
    service = ctx.web.service
    if service is None:
        return await sites.render(ctx, site, door_result=("refused", ctx.t("doors.no_service")))
    try:
        outcome = await open_door(
            service,
            site=site,
            door_id=door,
            open_ms=int(seconds) * 1000,
            operator=ctx.user.username if ctx.user else "",
            role=ctx.caller.role,
            ip=ctx.caller.ip,
        )
    except UnknownDoorError:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("doors.unknown", door=door))
    text = ctx.t(f"doors.result.{outcome.status}", door=door, detail=outcome.detail)
    kind = "ok" if outcome.status == "done" else "refused"
    return await sites.render(ctx, site, door_result=(kind, text))


def api_routes(store: Store, service: CentralService | None) -> list[Route]:
    """The API route (see the module docstring)."""

    async def open_api(request: Request) -> Response:
        who = await identify_token(store, request)
        if isinstance(who, JSONResponse):
            return who
        name, role = who
        if role not in DOOR_ROLES:
            return json_error(403, "forbidden", f"the {role} role may not open doors")
        site, door = request.path_params["site"], request.path_params["door"]
        if not is_valid_site_id(site):
            return json_error(404, "not_found", f"no site {site}")
        body = await request.body()
        if len(body) > 1024:
            return json_error(413, "too_large", "the body is over 1024 bytes")
        try:
            wanted = msgspec.json.decode(body or b"{}", type=OpenRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, "invalid_request", str(exc))
        known = await store.run(lambda conn: master.get(conn, site, "door", door))
        if known is None:
            return json_error(404, "not_found", f"no door {door} at {site}")
        if service is None:
            return json_error(503, "unavailable", "remote commands need `onecard-central serve`")
        try:
            outcome = await open_door(
                service,
                site=site,
                door_id=door,
                open_ms=wanted.open_ms,
                operator=name,
                role=role,
                ip=request.client.host if request.client else None,
                source="hq:api",
            )
        except UnknownDoorError as exc:
            return json_error(404, "not_found", str(exc))
        result: dict[str, Any] = {
            "status": outcome.status,
            "detail": outcome.detail,
            "command_id": outcome.command_id,
        }
        return JSONResponse(result)

    return [Route(API_PATH, open_api, methods=["POST"])]


def with_doors_api(api: ASGIApp, store: Store, service: CentralService | None) -> Starlette:
    """``api`` with the door route in front of it."""
    return in_front(api_routes(store, service), api)
