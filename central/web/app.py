"""The HQ dashboard (server-rendered pages) and how it is served next to the JSON API.

``create_web_app(store, secret_key=…)`` is the Starlette app of the pages;
:class:`Dashboard` sends ``/api/…`` to the API app and everything else to the pages;
:func:`dashboard_server` is the uvicorn server ``onecard-central serve --http`` runs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from central.api import (
    FINANCE,
    HANDLE_ANOMALIES,
    OPERATE,
    READ_AUDIT,
    READ_FINANCE,
    READ_PEOPLE,
    ApiServer,
    api_server,
    create_app,
    in_front,
)
from central.logtail import TailHub
from central.store import Store
from central.web import (
    access,
    anomalies,
    attendance,
    audit,
    auth,
    blacklist,
    clearing,
    doors,
    overview,
    people,
    people_ops,
    reconciliation,
    rollouts,
    sites,
)
from central.web import alerts as alert_pages
from central.web import logs as log_tail
from central.web.doors import DOOR_ROLES, with_doors_api
from central.web.live import Live
from central.web.page import (
    EVERYONE,
    STATIC,
    Page,
    Web,
    WebConfig,
    WebState,
    endpoint,
    finish_response,
    request_context,
    templates,
)
from central.web.sessions import SessionCodec

if TYPE_CHECKING:
    from central.service import CentralService

#: Every page, in navigation order. A new page is one line here.
PAGES: list[Page] = [
    Page("/", overview.show, EVERYONE, nav="nav.overview"),
    Page("/live/overview", overview.stream, EVERYONE),
    Page("/sites/{site}", sites.show, EVERYONE),
    Page("/sites/{site}/doors/{door}/open", doors.open_now, DOOR_ROLES, methods=("POST",)),
    Page("/attendance", attendance.report, READ_PEOPLE, nav="nav.attendance"),
    Page("/attendance.csv", attendance.download, READ_PEOPLE),
    Page("/attendance.xlsx", attendance.download, READ_PEOPLE),
    Page("/attendance/people/{person_id}", attendance.person, READ_PEOPLE),
    Page("/attendance/people/{person_id}/punch", attendance.punch, OPERATE, methods=("POST",)),
    Page("/attendance/people/{person_id}/leave", attendance.leave, OPERATE, methods=("POST",)),
    Page("/access", access.page, access.READ, nav="nav.access"),
    Page("/access/{action}", access.change, access.CHANGE, methods=("POST",)),
    Page("/rollouts", rollouts.index, rollouts.READ, nav="nav.rollouts"),
    Page("/rollouts/{rollout_id}", rollouts.show, rollouts.READ),
    Page("/rollouts/{rollout_id}/{action}", rollouts.act, rollouts.CONTROL, methods=("POST",)),
    Page("/live/sites/{site}", sites.stream, EVERYONE),
    Page("/people", people.search, READ_PEOPLE, nav="nav.people"),
    Page("/people/{person_id}", people.show, READ_PEOPLE),
    Page("/people/{person_id}/recharge", people.recharge, OPERATE, methods=("POST",)),
    Page("/people/{person_id}/report-lost", people.report_lost, OPERATE, methods=("POST",)),
    Page("/people/{person_id}/card-op", people.card_op, OPERATE, methods=("POST",)),
    Page("/people/{person_id}/refund", people.refund, OPERATE, methods=("POST",)),
    Page("/people/{person_id}/op/{op}", people_ops.run, OPERATE, methods=("POST",)),
    Page("/blacklist", blacklist.show, READ_PEOPLE, nav="nav.blacklist"),
    Page("/anomalies", anomalies.show, READ_PEOPLE, nav="nav.anomalies"),
    Page(
        "/anomalies/{anomaly_id}/acknowledge",
        anomalies.acknowledge,
        HANDLE_ANOMALIES,
        methods=("POST",),
    ),
    Page("/anomalies/{anomaly_id}/resolve", anomalies.resolve, HANDLE_ANOMALIES, methods=("POST",)),
    Page("/alerts", alert_pages.show, EVERYONE, nav="nav.alerts"),
    Page(
        "/alerts/{alert_id}/acknowledge",
        alert_pages.acknowledge,
        alert_pages.ACK_ALERTS,
        methods=("POST",),
    ),
    Page("/clearing", clearing.show, READ_FINANCE, nav="nav.clearing"),
    Page("/clearing.csv", clearing.csv, READ_FINANCE),
    Page("/reconciliation", reconciliation.show, READ_FINANCE, nav="nav.reconciliation"),
    Page(
        "/reconciliation",
        reconciliation.upload,
        FINANCE,
        methods=("POST",),
        upload_bytes=reconciliation.MAX_STATEMENT_BYTES,
    ),
    Page("/audit", audit.show, READ_AUDIT, nav="nav.audit"),
    Page("/login", auth.login_form, None),
    Page("/login", auth.login, None, methods=("POST",)),
    Page("/logout", auth.logout, EVERYONE, methods=("POST",)),
]


def create_web_app(
    store: Store,
    *,
    secret_key: bytes,
    config: WebConfig | None = None,
    state: WebState | None = None,
    pages: list[Page] | None = None,
    service: CentralService | None = None,
) -> Starlette:
    """The dashboard's pages over ``store``; cookies signed with ``secret_key`` (≥ 16
    bytes: ``central.users.web_key(conn)``). Counters in ``app.state.web.stats``."""
    config = config or WebConfig()
    chosen = PAGES if pages is None else pages
    web = Web(
        store=store,
        codec=SessionCodec(
            secret_key,
            idle_s=int(config.session_idle.total_seconds()),
            lifetime_s=int(config.session_lifetime.total_seconds()),
        ),
        config=config,
        env=templates(),
        state=state or WebState(),
        nav=[(p.path, p.nav, p.roles or EVERYONE) for p in chosen if p.nav],
        kdf=asyncio.Semaphore(config.concurrent_kdf),
        service=service,
    )
    routes: list[BaseRoute] = [
        Route(p.path, endpoint(web, p), methods=list(p.methods)) for p in chosen
    ]
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))

    async def not_found(request: Request, exc: Exception) -> Response:
        ctx = await request_context(web, request)
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        page = ctx.error(status, ctx.t("error.404.title"), ctx.t("error.404.text"))
        return finish_response(web, ctx, page)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.web = web.state
    app.state.live = Live()
    return app


@dataclass
class Dashboard:
    """One ASGI app: ``/api/…`` to the JSON API, ``/metrics`` to Prometheus (if given), the
    rest to the pages."""

    web: ASGIApp
    api: ASGIApp
    metrics: ASGIApp | None = None
    #: ``/releases/…``: release files for edges (``central.artifacts.artifact_app``).
    artifacts: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch by path."""
        path = scope.get("path", "")
        if self.artifacts is not None and scope["type"] == "http" and path.startswith("/releases/"):
            await self.artifacts(scope, receive, send)
            return
        if self.metrics is not None and scope["type"] == "http" and path == "/metrics":
            await self.metrics(scope, receive, send)
            return
        to_api = scope["type"] != "lifespan" and (path == "/api" or path.startswith("/api/"))
        await (self.api if to_api else self.web)(scope, receive, send)


def dashboard_server(
    store: Store,
    host: str,
    port: int,
    *,
    secret_key: bytes,
    config: WebConfig | None = None,
    metrics: ASGIApp | None = None,
    logtail: TailHub | None = None,
    artifacts: ASGIApp | None = None,
    service: CentralService | None = None,
    tls: tuple[Path, Path] | None = None,
) -> ApiServer:
    """A server for the dashboard and the API on ``host:port`` (``await server.serve()``);
    ``metrics``: the app answering ``/metrics`` (``central.metrics.metrics_endpoint``);
    ``logtail``: the remote log tails (without it, their pages answer 503); ``service``:
    central's service, for commands to sites (without it, a remote door open says so)."""
    pages = create_web_app(
        store,
        secret_key=secret_key,
        config=config,
        pages=PAGES + log_tail.pages(logtail),
        service=service,
    )
    api = in_front(
        rollouts.api_routes(store),
        with_doors_api(log_tail.with_logs_api(create_app(store), store, logtail), store, service),
    )
    app = Dashboard(web=pages, api=api, metrics=metrics, artifacts=artifacts)
    server = api_server(store, host, port, app=app, tls=tls)
    # uvicorn waits for open responses before it exits: live streams end when it stops.
    pages.state.live.stopping = lambda: server.should_exit
    return server
