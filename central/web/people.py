"""People and cards: search by name, staff/member number or card UID; a person's purses,
cards (with blacklist state), tickets and recent ledger entries; and the desk's operations:
recharge, report lost, the other card operations (freeze, unfreeze, found, replace) and a
refund of a purchase.

Every operation goes through :func:`central.operations.execute` under a request id made
when the form was rendered (a hidden field), so a form posted twice — a double click, a
reload — is applied once and answered with its first result. A form carries a required
"I have checked" box: the server refuses it unticked, so nothing happens by a stray click.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any

import msgspec
from starlette.responses import Response

from central import operations, queries
from central.api import OPERATE
from central.core.amounts import AmountError, format_yuan, parse_yuan
from central.core.cards import FreezeCard, Reissue, ReportLost, UnfreezeCard, Unlost
from central.core.effects import Accepted
from central.core.money import Recharge, RefundPurchase
from central.core.operations import AnyRequest
from central.web import people_ops
from central.web.page import SOURCE, PageContext

#: The most one recharge from the dashboard may add (¥1,000,000.00).
MAX_RECHARGE_FEN = 100_000_000
METHODS = ("cash", "bank", "online")
RECENT = 50
#: The card operations of the "card operations" form, and the fields each takes.
CARD_OPS: dict[str, tuple[type[Any], tuple[str, ...]]] = {
    "card.freeze": (FreezeCard, ("freeze_reason",)),
    "card.unfreeze": (UnfreezeCard, ()),
    "card.unlost": (Unlost, ()),
    "card.reissue": (Reissue, ("new_card_uid",)),
}


def new_request_id() -> str:
    """A fresh idempotency key for one rendered form."""
    return f"web-{secrets.token_hex(12)}"


async def search(ctx: PageContext) -> Response:
    """GET /people?q=…"""
    q = ctx.request.query_params.get("q", "").strip()[:100]
    found = await ctx.web.store.run(lambda conn: queries.search_persons(conn, q)) if q else []
    return ctx.render("people.html", title=ctx.t("people.title"), q=q, found=found)


async def show(ctx: PageContext) -> Response:
    """GET /people/{person_id}"""
    return await person_page(ctx, ctx.request.path_params["person_id"])


async def recharge(ctx: PageContext) -> Response:
    """POST /people/{person_id}/recharge: amount (yuan), method, pay ref, card."""
    person_id = ctx.request.path_params["person_id"]
    form = form_values(ctx, "card_uid", "amount", "method", "pay_ref", "request_id")
    problem = unconfirmed(ctx) or missing_id(ctx, form["request_id"])
    if problem is None and form["method"] not in METHODS:
        problem = ("method_invalid", ctx.t("people.method_invalid"))
    amount_fen = 0
    if problem is None:
        try:
            amount_fen = parse_yuan(form["amount"], cap=MAX_RECHARGE_FEN)
        except AmountError as exc:
            problem = (exc.code, ctx.t(f"people.{exc.code}", cap=format_yuan(MAX_RECHARGE_FEN)))
    if problem is not None:
        return await person_page(ctx, person_id, refused=problem, kept=form, status=400)
    fields: dict[str, Any] = {
        "op": "money.recharge",
        "card_uid": form["card_uid"].upper(),
        "amount_fen": amount_fen,
        "method": form["method"],
        "pay_ref": form["pay_ref"] or None,
    }
    return await run_request(ctx, person_id, Recharge, fields, form)


async def report_lost(ctx: PageContext) -> Response:
    """POST /people/{person_id}/report-lost: the card is lost from now."""
    person_id = ctx.request.path_params["person_id"]
    form = form_values(ctx, "card_uid", "request_id")
    problem = unconfirmed(ctx) or missing_id(ctx, form["request_id"])
    if problem is not None:
        return await person_page(ctx, person_id, refused=problem, status=400)
    fields: dict[str, Any] = {"op": "card.report_lost", "card_uid": form["card_uid"].upper()}
    return await run_request(ctx, person_id, ReportLost, fields, {})


async def card_op(ctx: PageContext) -> Response:
    """POST /people/{person_id}/card-op: freeze, unfreeze, found (解挂) or replace (补卡)."""
    person_id = ctx.request.path_params["person_id"]
    form = form_values(ctx, "op", "card_uid", "new_card_uid", "freeze_reason", "request_id")
    problem = unconfirmed(ctx) or missing_id(ctx, form["request_id"])
    if problem is None and form["op"] not in CARD_OPS:
        problem = ("op_invalid", ctx.t("people.op_invalid"))
    if problem is None and form["op"] == "card.reissue" and not form["new_card_uid"]:
        problem = ("new_card_missing", ctx.t("people.new_card_missing"))
    if problem is not None:
        return await person_page(ctx, person_id, refused=problem, kept=form, status=400)
    kind, extra = CARD_OPS[form["op"]]
    fields: dict[str, Any] = {"op": form["op"], "card_uid": form["card_uid"].upper()}
    for name in extra:  # form field -> request field
        value = form[name].upper() if name.endswith("_uid") else form[name]
        fields[name.removeprefix("freeze_")] = value
    return await run_request(ctx, person_id, kind, fields, form)


async def refund(ctx: PageContext) -> Response:
    """POST /people/{person_id}/refund: give back (part of) a purchase."""
    person_id = ctx.request.path_params["person_id"]
    form = form_values(ctx, "original_id", "refund_amount", "refund_reason", "request_id")
    problem = unconfirmed(ctx) or missing_id(ctx, form["request_id"])
    if problem is None and not form["refund_reason"]:
        problem = ("reason_missing", ctx.t("people.reason_missing"))
    amount_fen = 0
    if problem is None:
        try:
            amount_fen = parse_yuan(form["refund_amount"], cap=MAX_RECHARGE_FEN)
        except AmountError as exc:
            problem = (exc.code, ctx.t(f"people.{exc.code}", cap=format_yuan(MAX_RECHARGE_FEN)))
    if problem is not None:
        return await person_page(ctx, person_id, refused=problem, kept=form, status=400)
    fields: dict[str, Any] = {
        "op": "money.refund",
        "original_id": form["original_id"],
        "amount_fen": amount_fen,
        "reason": form["refund_reason"],
    }
    return await run_request(ctx, person_id, RefundPurchase, fields, form)


async def run_request(
    ctx: PageContext,
    person_id: str,
    kind: type[Any],
    fields: dict[str, Any],
    kept: dict[str, str],
) -> Response:
    # The page's roles let no one in without a session; "" would be refused below.
    operator = ctx.user.username if ctx.user else ""
    raw = {
        **fields,
        "request_id": ctx.form_value("request_id", 100),
        "operator": operator,
        "source": SOURCE,
    }
    try:
        request: AnyRequest = msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        problem = ("invalid_request", ctx.t("people.invalid_request", detail=str(exc)))
        return await person_page(ctx, person_id, refused=problem, kept=kept, status=400)
    caller = ctx.caller
    outcome = await ctx.web.store.run(lambda conn: operations.execute(conn, request, caller=caller))
    result = outcome.result
    if isinstance(result, Accepted):
        done = {
            "action": ctx.t(f"people.done.{fields['op']}"),
            "replayed": outcome.replayed,
            "request_id": result.request_id,
        }
        return await person_page(ctx, person_id, done=done)
    refused = (str(result.reason_code), result.message)
    return await person_page(ctx, person_id, refused=refused, kept=kept, status=409)


async def person_page(
    ctx: PageContext,
    person_id: str,
    *,
    done: dict[str, Any] | None = None,
    refused: tuple[str, str] | None = None,
    kept: dict[str, str] | None = None,
    status: int = 200,
) -> Response:
    def load(conn: sqlite3.Connection) -> dict[str, Any] | None:
        try:
            return queries.person_view(conn, person_id, recent=RECENT)
        except queries.NotFoundError:
            return None

    view = await ctx.web.store.run(load)
    if view is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("people.not_found", id=person_id))
    live = [c for c in view["cards"] if c["status"] == "active"]
    role = ctx.user.role if ctx.user else None
    return ctx.render(
        "person.html",
        status=status,
        title=view["person"]["name"],
        view=view,
        live_cards=live,
        may_operate=role in OPERATE,
        methods=METHODS,
        done=done,
        refused=refused,
        kept=kept or {},
        recharge_id=new_request_id(),
        lost_ids={c["uid"]: new_request_id() for c in live},
        card_op_id=new_request_id(),
        card_ops=list(CARD_OPS),
        refund_id=new_request_id(),
        more_ops=people_ops.OPS,
        more_ids=people_ops.form_ids(),
        purchases=[e for e in view["ledger"] if e["kind"] == "purchase" and e["record_id"]],
    )


def form_values(ctx: PageContext, *names: str) -> dict[str, str]:
    return {name: ctx.form_value(name, 100).strip() for name in names}


def unconfirmed(ctx: PageContext) -> tuple[str, str] | None:
    if ctx.form_value("confirm", 10) == "yes":
        return None
    return ("not_confirmed", ctx.t("people.not_confirmed"))


def missing_id(ctx: PageContext, request_id: str) -> tuple[str, str] | None:
    return None if request_id else ("invalid_request", ctx.t("people.stale_form"))
