"""The person page's other desk operations — issue a card (发卡), cancel a card and close the
account (退卡), correct a purchase (消费更正), spending limits, a subsidy for this person,
sell a count or period ticket — each a small form described here once, rendered by one
template macro and posted to ``POST /people/{person_id}/op/{op}``.

Like the recharge form: a request id (and a ticket id) made when the form was drawn, a
required "I have checked" box, amounts typed in yuan, dates read in the dashboard's zone,
and :func:`central.operations.execute` deciding; a refusal shows its reason code and text.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from starlette.responses import Response

from central.core.amounts import AmountError, format_yuan, parse_yuan
from central.core.cancel import CancelCard
from central.core.cards import IssueCard
from central.core.money import CorrectPurchase, SetLimits
from central.core.subsidy import GrantSubsidy
from central.core.tickets import SellTicket
from central.web.page import PageContext

#: The most any amount typed here may be (¥1,000,000.00).
MAX_FEN = 100_000_000
METHODS = ("cash", "bank", "online")

Kind = Literal["text", "uid", "yuan", "yuan_opt", "bool", "int_opt", "from", "until", "choice"]


@dataclass(frozen=True)
class Field:
    """One input: form ``name`` → request field ``target``, read as ``kind``."""

    name: str
    target: str
    kind: Kind = "text"
    required: bool = True
    #: choice: the values; the special "cards" / "purchases" lists come from the page.
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpForm:
    """One operation's form."""

    op: str
    request: type[Any]
    fields: tuple[Field, ...]
    #: Filled from the page, not typed: the person (``person_id``/``person_ids``), a ticket id.
    implicit: tuple[str, ...] = ()
    #: When the page offers it: always, or only to a person with a card / a purchase / no
    #: live card (one card per person: a second is a reissue).
    offered: Literal["always", "cards", "purchases", "no_live_card"] = "always"


OPS: dict[str, OpForm] = {
    form.op: form
    for form in (
        OpForm(
            "card.issue",
            IssueCard,
            (
                Field("new_card_uid", "card_uid", "uid"),
                Field("card_type", "card_type", required=False),
                Field("deposit_method", "deposit_method", "choice", choices=METHODS),
                Field("deposit_pay_ref", "deposit_pay_ref", required=False),
            ),
            implicit=("person_id",),
            offered="no_live_card",
        ),
        OpForm(
            "card.cancel",
            CancelCard,
            (
                Field("card_uid", "card_uid", "choice", choices=("cards",)),
                Field("recycle", "recycle", "bool", required=False),
                Field("payout_method", "payout_method", "choice", choices=METHODS),
            ),
            offered="cards",
        ),
        OpForm(
            "money.correct",
            CorrectPurchase,
            (
                Field("original_id", "original_id", "choice", choices=("purchases",)),
                Field("corrected_amount", "corrected_amount_fen", "yuan"),
                Field("reason", "reason"),
            ),
            offered="purchases",
        ),
        OpForm(
            "limits.set",
            SetLimits,
            (
                Field("card_uid", "card_uid", "choice", choices=("cards",)),
                Field("txn_limit", "txn_limit_fen", "yuan_opt", required=False),
                Field("daily_limit", "daily_limit_fen", "yuan_opt", required=False),
            ),
            offered="cards",
        ),
        OpForm(
            "subsidy.grant",
            GrantSubsidy,
            (
                Field("subsidy_amount", "amount_fen", "yuan"),
                Field("expires", "expires_at", "until", required=False),
                Field("mode", "mode", "choice", choices=("add", "reset")),
            ),
            implicit=("person_ids",),
        ),
        OpForm(
            "ticket.sell",
            SellTicket,
            (
                Field("card_uid", "card_uid", "choice", choices=("cards",)),
                Field("ticket_kind", "kind", "choice", choices=("count", "period")),
                Field("service", "service"),
                Field("price", "price_fen", "yuan"),
                Field("uses", "uses", "int_opt", required=False),
                Field("valid_from", "valid_from", "from", required=False),
                Field("valid_to", "valid_to", "until", required=False),
            ),
            implicit=("ticket_id",),
            offered="cards",
        ),
    )
}


def form_ids() -> dict[str, dict[str, str]]:
    """Fresh hidden ids for each form drawn: its request id (and a ticket's id)."""
    return {
        op: {
            "request_id": f"web-{secrets.token_hex(12)}",
            "ticket_id": f"T-{secrets.token_hex(6).upper()}",
        }
        for op in OPS
    }


class _InvalidFieldError(ValueError):
    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code


async def run(ctx: PageContext) -> Response:
    """POST /people/{person_id}/op/{op}"""
    from central.web import people  # noqa: PLC0415 - people renders the page we answer with

    person_id, op = ctx.request.path_params["person_id"], ctx.request.path_params["op"]
    spec = OPS.get(op)
    names = [f.name for f in spec.fields] if spec else []
    kept = people.form_values(ctx, *names, "request_id", "ticket_id")
    kept["op"] = op
    problem = people.unconfirmed(ctx) or people.missing_id(ctx, kept["request_id"])
    if problem is None and spec is None:
        problem = ("op_invalid", ctx.t("people.op_invalid"))
    fields: dict[str, Any] = {"op": op}
    if problem is None and spec is not None:
        try:
            fields.update(_read(ctx, spec, kept, person_id))
        except _InvalidFieldError as exc:
            problem = (exc.code, str(exc))
    if problem is not None or spec is None:
        return await people.person_page(ctx, person_id, refused=problem, kept=kept, status=400)
    return await people.run_request(ctx, person_id, spec.request, fields, kept)


def _read(ctx: PageContext, spec: OpForm, kept: dict[str, str], person_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for implicit in spec.implicit:
        if implicit == "person_id":
            out["person_id"] = person_id
        elif implicit == "person_ids":
            out["person_ids"] = [person_id]
        elif implicit == "ticket_id":
            if not kept["ticket_id"]:
                raise _InvalidFieldError("invalid_request", ctx.t("people.stale_form"))
            out["ticket_id"] = kept["ticket_id"]
    for field in spec.fields:
        raw = kept[field.name]
        if field.kind == "bool":
            out[field.target] = raw == "yes"
            continue
        if not raw:
            if field.required:
                label = ctx.t(f"people.f.{field.name}")
                raise _InvalidFieldError("missing", ctx.t("people.field_missing", field=label))
            if field.kind == "yuan_opt":
                out[field.target] = None  # no limit
            continue
        out[field.target] = _value(ctx, field, raw)
    return out


def _value(ctx: PageContext, field: Field, raw: str) -> Any:
    if field.kind in ("yuan", "yuan_opt"):
        try:
            return parse_yuan(raw, cap=MAX_FEN)
        except AmountError as exc:
            text = ctx.t(f"people.{exc.code}", cap=format_yuan(MAX_FEN))
            raise _InvalidFieldError(exc.code, text) from None
    if field.kind == "uid":
        return raw.upper()
    if field.kind == "int_opt":
        if not raw.isdigit():
            label = ctx.t(f"people.f.{field.name}")
            raise _InvalidFieldError("invalid_request", ctx.t("people.not_a_number", field=label))
        return int(raw)
    if field.kind in ("from", "until"):
        try:
            day = date.fromisoformat(raw)
        except ValueError:
            text = ctx.t("people.not_a_date", value=raw)
            raise _InvalidFieldError("invalid_request", text) from None
        # a day typed at HQ: from its first instant, or until the end of it, in HQ's zone
        at = datetime.combine(day, time(0), tzinfo=ctx.zone)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=ctx.zone)
        chosen = at if field.kind == "from" else end - timedelta(seconds=1)
        return chosen.astimezone(UTC)
    listed = field.choices not in (("cards",), ("purchases",))
    if field.kind == "choice" and listed and raw not in field.choices:
        raise _InvalidFieldError("invalid_request", ctx.t("people.op_invalid"))
    return raw
