"""HQ's JSON API, ``/api/v1/…`` (Starlette), served by ``onecard-central serve --http``.

Every call carries ``Authorization: Bearer <token>`` (``onecard-central token add``); the
token's name is the operator and its role decides what it may do. Operations are one
endpoint, ``POST /api/v1/operations``, whose JSON body is any operation request tagged by
``op`` (``card.issue``, ``money.recharge`` …, see ``docs/operations.md``); the operator and
source (``hq:api``) come from the token, never from the body. The answer is the operation's
result: 200 ``{"outcome": "accepted", …}`` or 422 ``{"outcome": "rejected", "reason_code"
…}``; a retry with the same ``request_id`` gets the same answer and the header
``Idempotent-Replayed: true``. An operation that changed the blacklist says which version
in the header ``Blacklist-Version``.

Errors are JSON ``{"error": {"code", "message"}}`` with 400 (bad JSON or fields), 401
(no or unknown token), 403 (role), 404, 405 (method; with ``Allow``), 409 (state conflict),
413 (body too large); each is counted in ``app.state.stats``. The OpenAPI document of all
this is ``GET /api/v1/openapi.json`` (:mod:`central.openapi`; see ``docs/api.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from central import finance, imports, operations, queries
from central.core.clearing import DayReport, settlement_csv
from central.core.clearing import to_csv as clearing_csv
from central.core.clearing import to_json as clearing_json
from central.core.effects import Accepted
from central.core.members import report_json
from central.core.operations import AnyRequest
from central.core.reconcile import StatementError
from central.core.state import CardType
from central.store import Store

#: Largest request body accepted (a member file or statement goes through the CLI if larger).
MAX_BODY = 8 * 1024 * 1024
#: Who may run operations, read people, …
OPERATE = frozenset({"admin", "operator"})
READ_PEOPLE = frozenset({"admin", "operator", "finance", "auditor"})
READ_AUDIT = frozenset({"admin", "auditor"})
FINANCE = frozenset({"admin", "finance"})
READ_FINANCE = frozenset({"admin", "finance", "auditor"})
HANDLE_ANOMALIES = frozenset({"admin", "operator", "finance"})
ADMIN = frozenset({"admin"})
ANYONE = frozenset(queries.ROLES)
#: The longest grace a reconciliation may give a prepared recharge (a week).
MAX_GRACE_MINUTES = 7 * 24 * 60
#: Integer query parameters must fit SQLite's signed 64-bit INTEGER.
_INT64 = 2**63 - 1
#: The business days the API clears and settles (no record is older than the Unix epoch).
FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(9999, 12, 30)
#: The values of the enumerated query parameters.
_OUTCOMES = ("accepted", "rejected")
_STATES = ("open", "acknowledged", "resolved")
_FORMATS = ("json", "csv")
_FLAGS = ("0", "1", "false", "true", "no", "yes")

_request_decoder = msgspec.json.Decoder(AnyRequest)


class ApiError(Exception):
    """An error answered as JSON."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Identity:
    """The caller behind a token."""

    name: str
    role: str
    ip: str | None


@dataclass
class ApiState:
    """Counters of the API (bad input is counted, by error code)."""

    stats: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + 1


T = TypeVar("T")
Handler = Callable[[Request, Identity], Awaitable[Response]]


def create_app(store: Store, *, state: ApiState | None = None) -> Starlette:
    """The API over ``store``."""
    api = _Endpoints(store, state or ApiState())
    guarded = api.guarded
    routes = [
        Route("/api/v1/operations", guarded(OPERATE, api.run_operation), methods=["POST"]),
        Route("/api/v1/persons", guarded(READ_PEOPLE, api.search), methods=["GET"]),
        Route("/api/v1/persons/{person_id}", guarded(READ_PEOPLE, api.person), methods=["GET"]),
        Route("/api/v1/cards/{uid}", guarded(READ_PEOPLE, api.card), methods=["GET"]),
        Route("/api/v1/audit", guarded(READ_AUDIT, api.audit), methods=["GET"]),
        Route("/api/v1/anomalies", guarded(READ_PEOPLE, api.anomaly_list), methods=["GET"]),
        Route(
            "/api/v1/anomalies/{anomaly_id}",
            guarded(HANDLE_ANOMALIES, api.anomaly_update),
            methods=["POST"],
        ),
        Route("/api/v1/imports/members", guarded(OPERATE, api.import_members), methods=["POST"]),
        Route("/api/v1/clearing", guarded(READ_FINANCE, api.clearing), methods=["GET"]),
        Route("/api/v1/settlement", guarded(READ_FINANCE, api.settlement), methods=["GET"]),
        Route("/api/v1/reconciliations", guarded(FINANCE, api.reconciliation), methods=["POST"]),
        Route("/api/v1/settings", guarded(READ_PEOPLE, api.settings_get), methods=["GET"]),
        Route("/api/v1/settings", guarded(ADMIN, api.settings_put), methods=["PUT"]),
        Route("/api/v1/openapi.json", guarded(ANYONE, api.openapi), methods=["GET"]),
    ]
    app = Starlette(routes=routes, exception_handlers=ERROR_HANDLERS)
    app.state.api = api.state
    return app


@dataclass
class _Endpoints:
    store: Store
    state: ApiState

    def guarded(
        self, roles: frozenset[str], handler: Handler
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind authentication and a role check; errors answered as JSON."""

        async def endpoint(request: Request) -> Response:
            try:
                who = await _authenticate(self.store, request)
                _allow(who, roles, request)
                _refuse_nul(request)
                return await handler(request, who)
            except ApiError as exc:
                self.state.count(f"api_error_{exc.code}")
                return _error(exc.status, exc.code, exc.message)

        return endpoint

    async def run_operation(self, request: Request, who: Identity) -> Response:
        body = await _body(request)
        try:
            fields = msgspec.json.decode(body, type=dict[str, Any])
        except msgspec.DecodeError as exc:
            raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None
        except RecursionError:
            raise ApiError(400, "bad_json", "the body is nested too deeply") from None
        if _has_nul(fields):
            raise ApiError(400, "invalid_request", _NUL)
        fields.update(operator=who.name, source="hq:api")
        try:
            op: AnyRequest = _request_decoder.decode(msgspec.json.encode(fields))
        except msgspec.ValidationError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        except RecursionError:
            raise ApiError(400, "invalid_request", "the body is nested too deeply") from None
        caller = operations.Caller(role=who.role, ip=who.ip)
        outcome = await self.store.run(lambda conn: operations.execute(conn, op, caller=caller))
        result = outcome.result
        accepted = isinstance(result, Accepted)
        self.state.count("operations_" + ("accepted" if accepted else "rejected"))
        headers = {"Idempotent-Replayed": "true"} if outcome.replayed else {}
        if outcome.blacklist_version is not None:
            headers["Blacklist-Version"] = str(outcome.blacklist_version)
        return Response(
            msgspec.json.encode(result),
            status_code=200 if accepted else 422,
            media_type="application/json",
            headers=headers,
        )

    async def search(self, request: Request, _who: Identity) -> Response:
        q = request.query_params.get("q", "")
        limit = _int(request, "limit", 50)
        found = await self.store.run(lambda conn: queries.search_persons(conn, q, limit=limit))
        return JSONResponse({"persons": found})

    async def person(self, request: Request, _who: Identity) -> Response:
        pid = request.path_params["person_id"]
        return JSONResponse(await _found(self.store.run(lambda c: queries.person_view(c, pid))))

    async def card(self, request: Request, _who: Identity) -> Response:
        uid = request.path_params["uid"]
        return JSONResponse(await _found(self.store.run(lambda c: queries.card_view(c, uid))))

    async def audit(self, request: Request, _who: Identity) -> Response:
        p = request.query_params
        before_id, limit = _int(request, "before_id", None), _int(request, "limit", 100)
        rows = await self.store.run(
            lambda conn: queries.audit_log(
                conn,
                operator=p.get("operator"),
                action=p.get("action"),
                target=p.get("target"),
                outcome=_choice(request, "outcome", _OUTCOMES, None),
                before_id=before_id,
                limit=limit,
            )
        )
        return JSONResponse({"audit": rows})

    async def anomaly_list(self, request: Request, _who: Identity) -> Response:
        p = request.query_params
        limit = _int(request, "limit", 100)
        state = _choice(request, "state", _STATES, None)
        rows = await self.store.run(
            lambda conn: queries.anomalies(
                conn, state=state, kind=p.get("kind"), site=p.get("site"), limit=limit
            )
        )
        return JSONResponse({"anomalies": rows})

    async def anomaly_update(self, request: Request, who: Identity) -> Response:
        change = _decode(await _body(request), _AnomalyChange)
        aid = _path_int(request, "anomaly_id")
        row = await _found(
            self.store.run(
                lambda conn: queries.set_anomaly_state(
                    conn,
                    aid,
                    change.state,
                    operator=who.name,
                    source="hq:api",
                    note=change.note,
                    role=who.role,
                    ip=who.ip,
                )
            )
        )
        return JSONResponse(row)

    async def import_members(self, request: Request, who: Identity) -> Response:
        """The body is the file's bytes; ``?filename=…&batch=…&dry_run=1&timezone=…``.
        200 with the report when applied (or a clean dry run), 422 when the file has
        errors (nothing imported)."""
        data = await _body(request)
        p = request.query_params
        dry_run = _flag(request, "dry_run")
        try:
            plan = await self.store.run(
                lambda conn: imports.import_members(
                    conn,
                    data,
                    p.get("filename", "upload"),
                    operator=who.name,
                    batch_id=p.get("batch"),
                    dry_run=dry_run,
                    timezone=p.get("timezone", "Asia/Shanghai"),
                )
            )
        except (ValueError, KeyError) as exc:  # bad batch id or time zone
            raise ApiError(400, "invalid_request", str(exc)) from None
        body = {"applied": plan.ok and not dry_run, **msgspec.json.decode(report_json(plan))}
        return JSONResponse(body, status_code=200 if plan.ok else 422)

    async def clearing(self, request: Request, _who: Identity) -> Response:
        """``?day=YYYY-MM-DD[&site=S|&site=HQ][&format=csv]``: the day's reports (every
        site and HQ by default), cleared now (a new revision if late records arrived)."""
        day = _date(request, "day")
        as_csv = _choice(request, "format", _FORMATS, "json") == "csv"
        site = request.query_params.get("site")

        def run(conn: Any) -> list[DayReport]:
            if site == "HQ":
                return [finance.clear(conn, None, day)]
            if site:
                return [finance.clear(conn, site, day)]
            return finance.clear_all(conn, day)

        reports = await self.store.run(run)
        if as_csv:
            return _csv(clearing_csv(reports), f"clearing-{day}.csv")
        return Response(
            b"[" + b",".join(clearing_json(r) for r in reports) + b"]",
            media_type="application/json",
        )

    async def settlement(self, request: Request, _who: Identity) -> Response:
        """``?from=…&to=…[&format=csv]``: HQ's settlement list over those days."""
        first, last = _date(request, "from"), _date(request, "to")
        as_csv = _choice(request, "format", _FORMATS, "json") == "csv"
        if last < first or (last - first).days > 92:
            raise ApiError(400, "invalid_request", "from..to must be 1 to 93 days")
        result = await self.store.run(lambda conn: finance.settlement(conn, first, last))
        if as_csv:
            return _csv(settlement_csv(result), f"settlement-{first}-{last}.csv")
        return Response(msgspec.json.encode(result), media_type="application/json")

    async def reconciliation(self, request: Request, who: Identity) -> Response:
        """The body is the statement file; ``?filename=…&apply=1&grace_minutes=30``."""
        data = await _body(request)
        p = request.query_params
        apply = _flag(request, "apply")
        grace = timedelta(minutes=_int(request, "grace_minutes", 30, low=0, high=MAX_GRACE_MINUTES))
        try:
            run = await self.store.run(
                lambda conn: finance.reconcile_statement(
                    conn,
                    data,
                    p.get("filename", "statement.csv"),
                    operator=who.name,
                    source="hq:api",
                    apply=apply,
                    grace=grace,
                    timezone=p.get("timezone", "Asia/Shanghai"),
                )
            )
        except StatementError as exc:
            raise ApiError(400, "invalid_statement", str(exc)) from None
        return Response(msgspec.json.encode(run), media_type="application/json")

    async def openapi(self, _request: Request, _who: Identity) -> Response:
        """The OpenAPI document of this API."""
        from central import openapi  # noqa: PLC0415 - central.openapi imports this module

        return Response(openapi.document_json(), media_type="application/json")

    async def settings_get(self, _request: Request, _who: Identity) -> Response:
        def read(conn: Any) -> dict[str, Any]:
            return {
                "policy": msgspec.to_builtins(operations.load_policy(conn)),
                "card_types": [
                    msgspec.to_builtins(t) for t in operations.load_card_types(conn).values()
                ],
            }

        return JSONResponse(await self.store.run(read))

    async def settings_put(self, request: Request, who: Identity) -> Response:
        new = _decode(await _body(request), _Settings)
        changes = new.policy
        try:
            await self.store.run(
                lambda conn: operations.change_settings(
                    conn,
                    policy=None if changes is None else operations.merged_policy(conn, changes),
                    card_types=new.card_types,
                    operator=who.name,
                    source="hq:api",
                    role=who.role,
                    ip=who.ip,
                )
            )
        except ValueError as exc:
            raise ApiError(400, "invalid_request", str(exc)) from None
        return await self.settings_get(request, who)


def _allow(who: Identity, roles: frozenset[str], request: Request) -> None:
    if who.role not in roles:
        raise ApiError(403, "forbidden", f"role {who.role} may not {request.method} this")


def _decode(body: bytes, kind: type[T]) -> T:
    try:
        value = msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None
    except RecursionError:
        raise ApiError(400, "invalid_request", "the body is nested too deeply") from None
    if _has_nul(msgspec.to_builtins(value)):
        raise ApiError(400, "invalid_request", _NUL)
    return value


_NUL = "text must not contain a NUL character"


def _refuse_nul(request: Request) -> None:
    """A NUL character in the path or query names nothing central stores (PostgreSQL's text
    cannot hold one; SQLite's could): refused here, as any other malformed input."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise ApiError(404, "not_found", f"no {name} with a NUL character")
    for name, value in request.query_params.multi_items():
        if "\x00" in value:
            raise ApiError(400, "invalid_request", f"{name}: {_NUL}")


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class _AnomalyChange(msgspec.Struct, forbid_unknown_fields=True):
    state: queries.AnomalyState
    note: str = ""


class _Settings(msgspec.Struct, forbid_unknown_fields=True):
    #: Only the fields to change (the others keep their values).
    policy: dict[str, Any] | None = None
    card_types: list[CardType] | None = None


async def _authenticate(store: Store, request: Request) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthenticated", "send Authorization: Bearer <token>")
    found = await store.run(lambda conn: queries.token_identity(conn, token.strip()))
    if found is None:
        raise ApiError(401, "unauthenticated", "unknown or revoked token")
    name, role = found
    return Identity(name=name, role=role, ip=request.client.host if request.client else None)


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(413, "too_large", f"the body is over {MAX_BODY} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "too_large", f"the body is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _found(pending: Awaitable[Any]) -> Any:
    try:
        return await pending
    except queries.NotFoundError as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except queries.ConflictError as exc:
        raise ApiError(409, "conflict", str(exc)) from None


def _int(
    request: Request, name: str, default: int | None, *, low: int = -_INT64, high: int = _INT64
) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an integer") from None
    if not low <= value <= high:
        span = "a 64-bit integer" if (low, high) == (-_INT64, _INT64) else f"from {low} to {high}"
        raise ApiError(400, "invalid_request", f"{name} must be {span}")
    return value


def _choice(request: Request, name: str, choices: tuple[str, ...], default: str | None) -> Any:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise ApiError(400, "invalid_request", f"{name} must be one of {', '.join(choices)}")
    return raw


def _flag(request: Request, name: str) -> bool:
    return _choice(request, name, _FLAGS, "0") in {"1", "true", "yes"}


def _date(request: Request, name: str) -> date:
    raw = request.query_params.get(name)
    try:
        day = date.fromisoformat(raw or "")
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be a date YYYY-MM-DD") from None
    if not FIRST_DAY <= day <= LAST_DAY:  # a day's window in any zone must stay in range
        raise ApiError(400, "invalid_request", f"{name} must be from {FIRST_DAY} to {LAST_DAY}")
    return day


def _csv(data: bytes, filename: str) -> Response:
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(404, "not_found", f"no {name} {raw}") from None
    if not -_INT64 <= value <= _INT64:  # no row has it (and SQLite could not look it up)
        raise ApiError(404, "not_found", f"no {name} {raw}")
    return value


async def _no_route(request: Request, exc: Exception) -> Response:
    """An unknown path (404) or method (405), answered in the API's error shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    counters = getattr(request.app.state, "api", None)
    if isinstance(counters, ApiState):
        counters.count("api_error_" + ("method_not_allowed" if status == 405 else "not_found"))
    if status == 405:
        # Every method of the path (one path may have a Route per method).
        path = request.scope["path"]
        allowed = {
            method
            for route in request.app.router.routes
            if isinstance(route, Route) and route.path_regex.fullmatch(path)
            for method in route.methods or ()
        }
        response = _error(405, "method_not_allowed", f"{request.method} is not allowed here")
        response.headers["Allow"] = ", ".join(sorted(allowed))
        return response
    return _error(404, "not_found", f"no API route {request.url.path}")


#: Starlette's own 404 and 405 in the API's error shape (for any app serving /api/…).
ERROR_HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    404: _no_route,
    405: _no_route,
}


def in_front(routes: list[Route], api: Any) -> Starlette:
    """An app answering ``routes`` itself and passing every other request to ``api``
    unchanged (not through a ``Mount``, whose pattern would not match a path holding an
    encoded newline: the API must answer that one, with its own error)."""
    app = Starlette(routes=routes, exception_handlers=ERROR_HANDLERS)
    app.router.default = api
    return app


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


class ApiServer(uvicorn.Server):
    """uvicorn, minus its signal handling: ``onecard-central serve`` owns SIGTERM/SIGINT and
    stops the API and the MQTT service together (``should_exit``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signals to the caller."""
        yield

    @property
    def port(self) -> int:
        """The port it listens on (useful with port 0)."""
        return int(self.servers[0].sockets[0].getsockname()[1])


def api_server(
    store: Store,
    host: str,
    port: int,
    *,
    app: Callable[..., Awaitable[None]] | None = None,
    tls: tuple[Path, Path] | None = None,
) -> ApiServer:
    """A server on ``host:port`` (run it with ``await server.serve()``) for the API, or for
    ``app`` (the dashboard, which carries the API too); HTTPS with ``tls`` = (certificate,
    key) files."""
    config = uvicorn.Config(
        app or create_app(store),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        server_header=False,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    return ApiServer(config)
