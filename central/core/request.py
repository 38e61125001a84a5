"""The envelope every operation request shares, and helpers the operations share.

A request is a msgspec Struct tagged by ``op`` (``"card.issue"``, ``"money.recharge"`` …) so
the API decodes any of them from JSON in one step, with the field constraints below checked
at the boundary. The operations re-check every amount themselves: a Struct built in code
skips msgspec's constraints, and a pure function must not trust its caller for money.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from central.core.effects import AuditEntry, ReasonCode, Rejected, Scalar
from central.core.state import Balance, BlacklistEntry, Holder, PaymentUse, State
from edge_agent.core.model import Card, CardStatus
from protocol.messages import BlacklistChange, RechargeMethod, RecordId

#: A client-supplied idempotency key; an edge intent uses its record id.
RequestId = RecordId
#: Where a request came from: ``hq:web``, ``hq:cli``, ``hq:import``, ``site:SZ-FUTIAN``.
Source = Annotated[
    str,
    Meta(pattern=r"^(?:hq:[a-z][a-z0-9_-]{0,31}|site:[A-Z0-9](?:[A-Z0-9]|-(?!-)){0,30}[A-Z0-9])\Z"),
]
#: Why a card is on (or came off) the blacklist.
ListReason = Literal["lost", "cancelled", "replaced", "frozen", "fraud", "restored"]
#: An operator's user id.
Operator = Annotated[str, Meta(min_length=1, max_length=64)]


class Request(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="op"):
    """Base of every operation request: who asks, from where, under which idempotency key.

    The same ``request_id`` with the same content is the same operation (answered with its
    first result); with other content it is refused ``request_id_reused``.
    """

    request_id: RequestId
    operator: Operator
    source: Source


def op_name(request: Request) -> str:
    """The request's ``op`` tag, which is also the audit log's ``action``."""
    return str(type(request).__struct_config__.tag)


def entry_id(request: Request, person_id: str | None = None) -> str:
    """The ledger key of the request's entries (per person for a batch)."""
    base = f"op:{request.request_id}"
    return base if person_id is None else f"{base}:{person_id}"


def utc(at: datetime) -> datetime:
    """``at`` as UTC (blacklist and ledger times are UTC on the wire)."""
    return at.astimezone(UTC)


def reject(request: Request, code: ReasonCode, message: str) -> Rejected:
    """A refusal of ``request``."""
    return Rejected(request_id=request.request_id, reason_code=code, message=message)


def audit(  # noqa: PLR0917 - the fields of one audit line
    request: Request,
    target: str,
    now: datetime,
    before: dict[str, Scalar],
    after: dict[str, Scalar],
    note: str = "",
) -> AuditEntry:
    """The audit line of an accepted ``request``."""
    return AuditEntry(
        request_id=request.request_id,
        operator=request.operator,
        source=request.source,
        action=op_name(request),
        target=target,
        at=utc(now),
        before=before,
        after=after,
        note=note,
    )


def card_summary(card: Card | None) -> dict[str, Scalar]:
    """A card's state for an audit line."""
    if card is None:
        return {"status": None}
    return {"status": str(card.status), "person_id": card.person_id, "card_type": card.card_type}


def balance_summary(balance: Balance) -> dict[str, Scalar]:
    """Purses for an audit line."""
    return {
        "cash_fen": balance.cash_fen,
        "subsidy_fen": balance.subsidy_fen,
        "deposit_fen": balance.deposit_fen,
    }


def blacklist_since(state: State, uid: str, default: datetime) -> datetime:
    """When ``uid`` joined the blacklist, or ``default`` if it is not on it.

    Re-listing a card under a new reason (lost → replaced, lost → cancelled) keeps the first
    effective time: that is the liability boundary, and a later reason must not move it.
    """
    entry: BlacklistEntry | None = state.blacklist.get(uid)
    return utc(entry.effective_at) if entry is not None else utc(default)


def check_payment(
    request: Request, state: State, method: RechargeMethod, pay_ref: str | None
) -> Rejected | None:
    """Money coming in from outside: bank and online payments need their reference, and a
    reference is credited once, whichever way (kiosk commit, HQ recharge) it came first."""
    if method != "cash" and pay_ref is None:
        return reject(request, "pay_ref_required", f"a {method} payment needs its reference")
    if pay_ref is not None:
        used: PaymentUse | None = state.payments.get(pay_ref)
        if used is not None:
            return reject(
                request,
                "pay_ref_used",
                f"payment {pay_ref} was already credited ({used.amount_fen} fen to "
                f"{used.person_id}, entry {used.entry_id})",
            )
    return None


def card_and_holder(request: Request, uid: str, state: State) -> tuple[Card, Holder] | Rejected:
    """The card ``uid`` names and its holder; ``card_unknown`` (or ``person_unknown`` for a
    card whose person is missing) otherwise."""
    card = state.cards.get(uid)
    if card is None:
        return reject(request, "card_unknown", f"no card {uid}")
    holder = state.holders.get(card.person_id)
    if holder is None:
        return reject(
            request, "person_unknown", f"card {uid} names unknown person {card.person_id}"
        )
    return card, holder


def with_status(card: Card, status: CardStatus) -> Card:
    """``card`` with another status (everything else kept)."""
    return Card(
        uid=card.uid,
        person_id=card.person_id,
        status=status,
        valid_from=card.valid_from,
        valid_to=card.valid_to,
        card_type=card.card_type,
    )


def listing(
    op: Literal["add", "remove"], uid: str, reason: ListReason, at: datetime
) -> BlacklistChange:
    """A blacklist change effective from ``at`` (as UTC)."""
    return BlacklistChange(op=op, card_uid=uid, reason=reason, effective_at=utc(at))
