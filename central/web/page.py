"""How every dashboard page is served: a :class:`Page` is a path, the roles that may open
it, and an ``async`` handler taking a :class:`PageContext`. The wrapper around it
(:func:`endpoint`) does what no page may forget:

1. the language (``?lang=`` → cookie ``oc_lang`` → ``Accept-Language`` → zh-CN);
2. the session: the cookie's MAC and expiry, then the user (active, same ``session_gen``);
3. CSRF: every request other than GET/HEAD must carry the form field ``csrf`` (or header
   ``X-CSRF-Token``) matching the ``oc_csrf`` cookie and the session — else 403;
4. roles: no session → 303 to ``/login?next=…``; a role not in ``roles`` → a 403 page;
5. the response: the sliding session cookie, the CSRF cookie, security headers.

A new page: write ``async def show(ctx) -> Response`` returning ``ctx.render(…)``, add
its template and its messages, and list it in :data:`central.web.app.PAGES`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from central import finance, users
from central.operations import Caller
from central.store import Store
from central.web import i18n
from central.web.sessions import (
    ANONYMOUS,
    CSRF_COOKIE,
    SESSION_COOKIE,
    BadSessionError,
    Session,
    SessionCodec,
    new_nonce,
    valid_nonce,
)

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
EVERYONE = frozenset(users.ROLES)
#: Form limits: a dashboard form is a few short fields.
MAX_FIELDS, MAX_FIELD_BYTES = 50, 64 * 1024
SAFE_METHODS = frozenset({"GET", "HEAD"})
SOURCE = "hq:web"

_SECURITY_HEADERS = {
    # Our own CSS and JS only: no inline script or style, no framing, forms post here.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """How the dashboard behaves; the defaults suit HQ's LAN."""

    #: Mark cookies ``Secure`` (set when the dashboard is reached over HTTPS).
    secure_cookies: bool = False
    #: A session ends after this long without a request ...
    session_idle: timedelta = timedelta(hours=8)
    #: ... and this long after sign-in, however busy.
    session_lifetime: timedelta = timedelta(hours=24)
    #: The sliding cookie is re-issued at most this often.
    refresh_after: timedelta = timedelta(minutes=1)
    throttle: users.ThrottlePolicy = field(default_factory=users.ThrottlePolicy)
    #: Password checks at once (scrypt: 32 MiB each); more wait their turn.
    concurrent_kdf: int = 4
    #: Rows per page of long lists.
    page_size: int = 50
    #: Unix time in seconds (tests move it).
    clock: Callable[[], float] = time.time


@dataclass
class WebState:
    """Counters of the dashboard: sign-ins, refusals, rejected cookies."""

    stats: dict[str, int] = field(default_factory=dict)

    def count(self, name: str) -> None:
        """Bump a counter."""
        self.stats[name] = self.stats.get(name, 0) + 1


@dataclass
class Web:
    """What every page shares."""

    store: Store
    codec: SessionCodec
    config: WebConfig
    env: jinja2.Environment
    state: WebState
    nav: list[tuple[str, str, frozenset[str]]]
    kdf: asyncio.Semaphore
    #: Central's running service, for commands to sites (a remote door open); None when
    #: the dashboard runs without it (then such pages say so).
    service: Any = None


Handler = Callable[["PageContext"], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    """A page: ``roles`` None means anyone, signed in or not (the sign-in page)."""

    path: str
    handler: Handler
    roles: frozenset[str] | None
    methods: tuple[str, ...] = ("GET",)
    #: The message key of its navigation label (None: not in the navigation).
    nav: str | None = None
    #: Its forms may carry one file of at most this many bytes (0: no files).
    upload_bytes: int = 0


@dataclass
class PageContext:
    """One request as a page sees it."""

    request: Request
    web: Web
    lang: str
    zone: ZoneInfo
    now: float
    user: users.User | None = None
    session: Session | None = None
    form: FormData | None = None
    csrf_nonce: str = ""
    #: Set by a page: start this session / end the current one / new CSRF nonce.
    new_session: Session | None = None
    end_session: bool = False
    new_csrf_nonce: bool = False
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def now_ms(self) -> int:
        """Now, in Unix milliseconds."""
        return int(self.now * 1000)

    @property
    def ip(self) -> str:
        """The client's address."""
        return self.request.client.host if self.request.client else ""

    @property
    def caller(self) -> Caller:
        """Who is asking, for the audit log."""
        return Caller(role=self.user.role if self.user else None, ip=self.ip or None)

    @property
    def csrf(self) -> str:
        """The token this page's forms carry."""
        subject = self.session.subject if self.session and self.user else ANONYMOUS
        return self.web.codec.csrf_token(self.csrf_nonce, subject)

    def t(self, key: str, **values: object) -> str:
        """A message in the reader's language."""
        return i18n.translate(self.lang, key, **values)

    def form_value(self, name: str, limit: int = 200) -> str:
        """A posted form field as text ('' if absent)."""
        value = self.form.get(name) if self.form is not None else None
        return value[:limit] if isinstance(value, str) else ""

    def start_session(self, user: users.User) -> None:
        """Sign ``user`` in: a new session cookie and a new CSRF nonce."""
        now = int(self.now)
        self.new_session = Session(user.id, user.session_gen, now, now)
        self.user, self.session = user, self.new_session
        self.csrf_nonce, self.new_csrf_nonce = new_nonce(), True

    def sign_out(self) -> None:
        """Clear the session cookie (the caller has ended the user's sessions)."""
        self.end_session, self.user, self.session = True, None, None

    def render(self, template: str, *, status: int = 200, **values: Any) -> HTMLResponse:
        """``template`` with the page's common context and ``values``."""
        path = self.request.url.path
        role = self.user.role if self.user else None
        context = {
            "t": self.t,
            "lang": self.lang,
            "user": self.user,
            "csrf": self.csrf,
            "zone": self.zone.key,
            "path": path,
            "nav": [
                {"path": p, "label": self.t(label), "active": p == path}
                for p, label, roles in self.web.nav
                if role in roles
            ],
            "languages": [
                (code, name, self._with_query(lang=code)) for code, name in i18n.LANGUAGES.items()
            ],
            "when": lambda value: i18n.local_time(value, self.zone),
            "ago": lambda seconds: i18n.ago(seconds, self.lang),
            "duration": lambda seconds: i18n.duration(seconds, self.lang),
            "yuan": i18n.yuan,
            **values,
        }
        html = self.web.env.get_template(template).render(context)
        return HTMLResponse(html, status_code=status, headers=self.headers)

    def error(self, status: int, title: str, text: str) -> HTMLResponse:
        """A page saying what went wrong."""
        return self.render("error.html", status=status, title=title, text=text)

    def redirect(self, url: str) -> RedirectResponse:
        """303 to ``url`` (a path of ours)."""
        return RedirectResponse(url, status_code=303, headers=self.headers)

    def url(self, path: str, **query: str | int | None) -> str:
        """``path`` with the non-empty ``query`` values."""
        kept = {k: v for k, v in query.items() if v not in (None, "")}
        return f"{path}?{urlencode(kept)}" if kept else path

    def _with_query(self, **changes: str) -> str:
        query = dict(self.request.query_params)
        query.update(changes)
        return self.url(self.request.url.path, **query)


def safe_next(target: str | None) -> str:
    """A path of ours to go to after sign-in (never another site's URL)."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(ch) < 32 for ch in target)
    ):
        return "/"
    return target


def endpoint(web: Web, page: Page) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint serving ``page`` (see the module docs)."""

    async def serve(request: Request) -> Response:
        ctx = await request_context(web, request)
        try:
            response = await _guarded(web, page, ctx)
        except HTTPException as exc:  # a body that is not a form we read
            web.state.count(f"page_error_{exc.status_code}")
            response = ctx.error(exc.status_code, ctx.t("error.400.title"), ctx.t("error.400.text"))
        finally:
            if ctx.form is not None:
                await ctx.form.close()  # an uploaded file's spool, refused or not
        return finish_response(web, ctx, response)

    return serve


async def _guarded(web: Web, page: Page, ctx: PageContext) -> Response:
    request = ctx.request
    if request.method not in SAFE_METHODS:
        ctx.form = await _read_form(request, page.upload_bytes)
        token = ctx.form_value("csrf", 100) or request.headers.get("x-csrf-token")
        subject = ctx.session.subject if ctx.session and ctx.user else ANONYMOUS
        if ctx.new_csrf_nonce or not web.codec.csrf_ok(ctx.csrf_nonce, subject, token):
            web.state.count("csrf_refused")
            return ctx.error(403, ctx.t("error.403.title"), ctx.t("error.csrf"))
    if page.roles is not None:
        if ctx.user is None:
            web.state.count("page_unauthenticated")
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            expired = request.cookies.get(SESSION_COOKIE) is not None
            return ctx.redirect(
                ctx.url(
                    "/login",
                    next=target if target != "/" else None,
                    m="expired" if expired else None,
                )
            )
        if ctx.user.role not in page.roles:
            web.state.count("page_forbidden")
            role = ctx.t(f"role.{ctx.user.role}")
            return ctx.error(403, ctx.t("error.403.title"), ctx.t("error.403.role", role=role))
    return await page.handler(ctx)


async def request_context(web: Web, request: Request) -> PageContext:
    """The request's language, session, user, HQ's time zone and CSRF nonce."""
    now = web.config.clock()
    asked = i18n.language_of(request.query_params.get("lang"))
    lang = (
        asked
        or i18n.language_of(request.cookies.get(i18n.LANG_COOKIE))
        or i18n.negotiate(request.headers.get("accept-language"))
    )
    session = None
    raw = request.cookies.get(SESSION_COOKIE)
    if raw is not None:
        try:
            session = web.codec.decode(raw, now=int(now))
        except BadSessionError as exc:
            web.state.count(f"session_{exc.problem}")

    def load(conn: Any) -> tuple[users.User | None, str]:
        user = users.user_by_id(conn, session.user_id) if session else None
        return user, finance.clearing_config(conn, None).timezone

    user, zone = await web.store.run(load)
    if session is not None and (user is None or not user.active or user.session_gen != session.gen):
        web.state.count("session_ended")
        user = session = None
    ctx = PageContext(request, web, lang, _zone(zone), now, user=user, session=session)
    nonce = request.cookies.get(CSRF_COOKIE)
    if valid_nonce(nonce):
        ctx.csrf_nonce = str(nonce)
    else:
        ctx.csrf_nonce, ctx.new_csrf_nonce = new_nonce(), True
    return ctx


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # a setting this machine cannot read
        return ZoneInfo("UTC")


def finish_response(web: Web, ctx: PageContext, response: Response) -> Response:
    """Set the cookies the request left to set, and the security headers."""
    config = web.config

    def cookie(name: str, value: str, max_age: int | None) -> None:
        # max_age None deletes the cookie.
        response.set_cookie(
            name,
            value,
            max_age=0 if max_age is None else max_age,
            expires=0 if max_age is None else None,
            path="/",
            secure=config.secure_cookies,
            httponly=True,
            samesite="lax",
        )

    idle = int(config.session_idle.total_seconds())
    session = ctx.session
    if ctx.new_session is not None:
        cookie(SESSION_COOKIE, web.codec.encode(ctx.new_session), idle)
    elif session is not None and ctx.now - session.seen >= config.refresh_after.total_seconds():
        fresh = Session(session.user_id, session.gen, session.issued, int(ctx.now))
        cookie(SESSION_COOKIE, web.codec.encode(fresh), idle)
    elif ctx.end_session or (session is None and SESSION_COOKIE in ctx.request.cookies):
        cookie(SESSION_COOKIE, "", None)
    if ctx.new_csrf_nonce:
        cookie(CSRF_COOKIE, ctx.csrf_nonce, int(config.session_lifetime.total_seconds()))
    if i18n.language_of(ctx.request.query_params.get("lang")):
        cookie(i18n.LANG_COOKIE, ctx.lang, 365 * 86_400)
    for name, value in _SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _read_form(request: Request, upload_bytes: int = 0) -> FormData:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in {"application/x-www-form-urlencoded", "multipart/form-data"}:
        return FormData()
    files = 0
    if upload_bytes and kind == "multipart/form-data":
        # A file part is spooled whatever its size: refuse a body too big before reading it.
        length = request.headers.get("content-length", "")
        if not length.isdigit():
            raise HTTPException(411, "an upload needs its Content-Length")
        if int(length) > upload_bytes + MAX_FIELD_BYTES:
            raise HTTPException(413, "the file is too large")
        files = 1
    try:
        return await request.form(
            max_files=files, max_fields=MAX_FIELDS, max_part_size=MAX_FIELD_BYTES
        )
    except HTTPException:
        raise
    except Exception as exc:  # python-multipart's errors: the body is not a form we accept
        raise HTTPException(400, "the form could not be read") from exc


def templates() -> jinja2.Environment:
    """The dashboard's Jinja environment: autoescaped, strict about undefined names."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
