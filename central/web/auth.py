"""Signing in and out.

A sign-in is counted as a failure before the password is checked
(:func:`central.users.begin_login`), checked off the event loop (scrypt, a few at a time),
then settled and audited (:func:`central.users.finish_login`). An unknown username costs
the same scrypt as a known one, and every refusal reads the same: wrong username or
password. A locked subject gets 429 without its password being looked at.
"""

from __future__ import annotations

import asyncio
import math

from starlette.responses import Response

from central import users
from central.web.page import SOURCE, PageContext, safe_next

#: The notes the sign-in page shows for ``?m=…`` (anything else is ignored).
_NOTES = {"expired": "login.expired", "signed_out": "login.signed_out"}


async def login_form(ctx: PageContext) -> Response:
    """GET /login: the form (or straight on, when signed in already)."""
    target = safe_next(ctx.request.query_params.get("next"))
    if ctx.user is not None:
        return ctx.redirect(target)
    note = _NOTES.get(ctx.request.query_params.get("m", ""))
    return _form(ctx, target, note=ctx.t(note) if note else None)


async def login(ctx: PageContext) -> Response:
    """POST /login: check the password; on success a new session and on to ``next``."""
    web = ctx.web
    target = safe_next(ctx.form_value("next", 2000))
    username = ctx.form_value("username")
    password = ctx.form_value("password", users.MAX_PASSWORD + 1)
    policy = web.config.throttle
    attempt = await web.store.run(
        lambda conn: users.begin_login(
            conn, username, ctx.ip, at_ms=ctx.now_ms, policy=policy, source=SOURCE
        )
    )
    if attempt.locked_until_ms:
        web.state.count("login_throttled")
        wait_s = max(1, math.ceil((attempt.locked_until_ms - attempt.at_ms) / 1000))
        ctx.headers["Retry-After"] = str(wait_s)
        error = ctx.t("login.throttled", minutes=math.ceil(wait_s / 60))
        return _form(ctx, target, username=attempt.username, error=error, status=429)
    async with web.kdf:
        matches, new_hash = await asyncio.to_thread(_check, password, attempt.password_hash)
    user = await web.store.run(
        lambda conn: users.finish_login(
            conn,
            attempt,
            password_ok=matches and attempt.password_hash is not None,
            new_hash=new_hash,
            policy=policy,
            source=SOURCE,
        )
    )
    if user is None:
        web.state.count("login_failed")
        error = ctx.t("login.failed")
        return _form(ctx, target, username=attempt.username, error=error, status=401)
    web.state.count("login_ok")
    ctx.start_session(user)
    return ctx.redirect(target)


async def logout(ctx: PageContext) -> Response:
    """POST /logout: end every session of the user (their cookies die) and clear ours."""
    user = ctx.user
    if user is not None:
        caller = ctx.caller
        await ctx.web.store.run(
            lambda conn: users.end_sessions(conn, user.id, source=SOURCE, caller=caller)
        )
    ctx.sign_out()
    return ctx.redirect("/login?m=signed_out")


def _check(password: str, stored: str | None) -> tuple[bool, str | None]:
    # On a worker thread: scrypt releases the GIL.
    if stored is None:
        users.verify_password(password, users.dummy_hash())
        return False, None
    if not users.verify_password(password, stored):
        return False, None
    return True, users.hash_password(password) if users.needs_rehash(stored) else None


def _form(
    ctx: PageContext,
    target: str,
    *,
    username: str = "",
    error: str | None = None,
    note: str | None = None,
    status: int = 200,
) -> Response:
    return ctx.render(
        "login.html",
        status=status,
        next=target,
        username=username,
        error=error,
        note=note,
        title=ctx.t("login.title"),
    )
