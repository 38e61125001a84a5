"""Selling count tickets (计次票) and period tickets (期限票).

A ticket belongs to the person (a reissued card uses the same tickets). Its price is a
``ticket_sale`` entry on the cash purse — tickets are bought with the member's own money,
not with subsidy, and never on credit: cash below the price is ``insufficient_balance``
(recharge first; a desk does both as two requests). The ticket row is master data: a count
ticket carries the uses sold, and each use is a ``ticket_use`` entry from a site record,
subtracted when the ticket is rendered for the feed — so remaining uses are a ledger sum too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from central.core.effects import Accepted, Posting, PutTicket, Rejected
from central.core.request import (
    Request,
    audit,
    balance_summary,
    card_and_holder,
    entry_id,
    reject,
    utc,
)
from central.core.state import State
from edge_agent.core.model import CardStatus, Ticket
from protocol.messages import MAX_FEN, CardUid, Name, UtcTime

Result = Accepted | Rejected


class SellTicket(Request, frozen=True, kw_only=True, tag="ticket.sell"):
    """Sell ticket ``ticket_id`` (chosen by the client, so a retry names the same ticket):
    ``uses`` for a count ticket, ``valid_from``/``valid_to`` for a period ticket."""

    card_uid: CardUid
    ticket_id: Name
    kind: Literal["count", "period"]
    service: Name
    price_fen: int
    uses: Annotated[int, Meta(ge=1, le=10000)] | None = None
    valid_from: UtcTime | None = None
    valid_to: UtcTime | None = None


def _ticket_problem(request: SellTicket, now: datetime) -> str | None:
    if request.kind == "count":
        if request.uses is None or request.uses < 1:
            return "a count ticket needs uses ≥ 1"
        return None
    if request.uses is not None:
        return "a period ticket has no uses"
    if request.valid_to is None:
        return "a period ticket needs valid_to"
    start = request.valid_from or now
    if request.valid_to <= start or request.valid_to <= now:
        return "a period ticket must end after it starts and after now"
    return None


def sell_ticket(request: SellTicket, state: State, now: datetime) -> Result:
    """Sell a ticket to the card's holder. Refused: ``card_unknown``, ``card_not_active``,
    ``ticket_exists`` (the id is taken, by anyone), ``ticket_invalid``, ``amount_invalid``
    (negative price), ``insufficient_balance`` (cash below the price)."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, holder = found
    if card.status is not CardStatus.ACTIVE:
        return reject(request, "card_not_active", f"card {card.uid} is {card.status}")
    if request.ticket_id in state.tickets:
        return reject(request, "ticket_exists", f"ticket {request.ticket_id} already exists")
    problem = _ticket_problem(request, now)
    if problem is not None:
        return reject(request, "ticket_invalid", problem)
    if not 0 <= request.price_fen <= MAX_FEN:
        return reject(request, "amount_invalid", f"a price is 0..{MAX_FEN} fen")
    if request.price_fen > max(0, holder.balance.cash_fen):
        return reject(
            request,
            "insufficient_balance",
            f"the ticket costs {request.price_fen} fen; the cash purse holds "
            f"{holder.balance.cash_fen}",
        )
    ticket = Ticket(
        id=request.ticket_id,
        person_id=holder.person.id,
        kind=request.kind,
        service=request.service,
        remaining=request.uses,
        valid_from=None if request.valid_from is None else utc(request.valid_from),
        valid_to=None if request.valid_to is None else utc(request.valid_to),
    )
    postings = (
        (
            Posting(
                entry_id=entry_id(request),
                person_id=holder.person.id,
                kind="ticket_sale",
                at=utc(now),
                cash_fen=-request.price_fen,
                ticket_id=ticket.id,
                card_uid=card.uid,
            ),
        )
        if request.price_fen
        else ()
    )
    return Accepted(
        request_id=request.request_id,
        master=(PutTicket(ticket=ticket),),
        postings=postings,
        audit=audit(
            request,
            f"ticket:{ticket.id}",
            now,
            balance_summary(holder.balance),
            {
                **balance_summary(holder.balance.plus(cash_fen=-request.price_fen)),
                "kind": request.kind,
                "uses": request.uses,
            },
        ),
    )
