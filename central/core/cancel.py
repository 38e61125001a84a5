"""退卡/销户: cancelling a card closes its holder's account.

Design (where the issue leaves room):

- Cancelling is about the **account**, which belongs to the person: every live card of the
  person is cancelled, and every purse is brought to zero by explicit entries —
  ``subsidy_forfeit`` (employer money is not paid out), ``fee`` (the configurable cancel
  fee, kept from the deposit first and then from cash, never more than the two hold, so a
  cancel never leaves a debt), ``refund_deposit`` and ``refund_cash`` (what is paid out).
  Their sum is exactly minus what the person held.
- A negative purse (offline overspending not yet settled) is refused ``balance_negative``:
  settle it with a recharge first, so a cancel never forgives a debt silently.
- The card is blacklisted ``cancelled`` — from its loss time if it was lost — unless it was
  handed back (``recycle``): then it goes into stock, off the blacklist, ready to be issued
  again. A lost card cannot be handed back (``card_not_present``).
- Unused tickets are not refunded (they were bought outright); they stay on record.
"""

from __future__ import annotations

from datetime import datetime

from central.core.effects import Accepted, MasterWrite, Posting, PostingKind, PutCard, Rejected
from central.core.request import (
    Request,
    audit,
    balance_summary,
    blacklist_since,
    card_and_holder,
    card_summary,
    entry_id,
    listing,
    reject,
    utc,
    with_status,
)
from central.core.state import LIVE, Balance, Holder, State
from edge_agent.core.model import CardStatus
from protocol.messages import BlacklistChange, CardUid, RechargeMethod

Result = Accepted | Rejected


class CancelCard(Request, frozen=True, kw_only=True, tag="card.cancel"):
    """退卡/销户: close the holder's account; ``recycle`` if the card was handed back;
    ``payout_method`` is how the money was paid out (for the day's clearing)."""

    card_uid: CardUid
    recycle: bool = False
    payout_method: RechargeMethod = "cash"


def cancel_card(request: CancelCard, state: State, now: datetime) -> Result:
    """Close the account of the card's holder. Refused: ``card_unknown``,
    ``card_not_active`` (already cancelled or replaced), ``card_not_present`` (recycling
    a lost card), ``balance_negative``."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, holder = found
    if card.status not in LIVE:
        return reject(request, "card_not_active", f"card {card.uid} is already {card.status}")
    if request.recycle and card.status is CardStatus.LOST:
        return reject(
            request, "card_not_present", f"card {card.uid} is lost; it cannot be recycled"
        )
    balance = holder.balance
    if min(balance.cash_fen, balance.subsidy_fen, balance.deposit_fen) < 0:
        return reject(
            request,
            "balance_negative",
            f"{holder.person.id} owes money (cash {balance.cash_fen}, subsidy "
            f"{balance.subsidy_fen} fen); settle it before cancelling",
        )
    master: list[MasterWrite] = []
    listings: list[BlacklistChange] = []
    for live in holder.live_cards:
        master.append(PutCard(card=with_status(live, CardStatus.CANCELLED)))
        if request.recycle and live.uid == card.uid:
            if live.uid in state.blacklist:
                listings.append(listing("remove", live.uid, "restored", now))
        else:
            since = blacklist_since(state, live.uid, now)
            listings.append(listing("add", live.uid, "cancelled", since))
    postings = close_account(request, holder, state.policy.cancel_fee_fen, now)
    paid_out = -sum(
        p.cash_fen + p.deposit_fen for p in postings if p.kind in {"refund_cash", "refund_deposit"}
    )
    return Accepted(
        request_id=request.request_id,
        master=tuple(master),
        postings=postings,
        blacklist=tuple(listings),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            {**card_summary(card), **balance_summary(balance)},
            {
                **card_summary(with_status(card, CardStatus.CANCELLED)),
                **balance_summary(Balance()),
                "recycled": request.recycle,
                "paid_out_fen": paid_out,
            },
        ),
    )


def close_account(
    request: CancelCard, holder: Holder, fee_fen: int, now: datetime
) -> tuple[Posting, ...]:
    """The entries that bring a non-negative account to zero: forfeit, fee, payouts."""
    balance = holder.balance
    fee = min(max(0, fee_fen), balance.cash_fen + balance.deposit_fen)
    # The deposit exists to cover what the card costs the operator, so the fee comes from
    # it first; only the rest reduces the cash paid out.
    fee_deposit = min(fee, balance.deposit_fen)
    fee_cash = fee - fee_deposit

    def entry(kind: PostingKind, cash: int = 0, subsidy: int = 0, deposit: int = 0) -> Posting:
        return Posting(
            entry_id=entry_id(request),
            person_id=holder.person.id,
            kind=kind,
            at=utc(now),
            cash_fen=cash,
            subsidy_fen=subsidy,
            deposit_fen=deposit,
            card_uid=request.card_uid,
            method=request.payout_method if kind.startswith("refund") else None,
        )

    out: list[Posting] = []
    if balance.subsidy_fen:
        out.append(entry("subsidy_forfeit", subsidy=-balance.subsidy_fen))
    if fee:
        out.append(entry("fee", cash=-fee_cash, deposit=-fee_deposit))
    if balance.deposit_fen - fee_deposit:
        out.append(entry("refund_deposit", deposit=-(balance.deposit_fen - fee_deposit)))
    if balance.cash_fen - fee_cash:
        out.append(entry("refund_cash", cash=-(balance.cash_fen - fee_cash)))
    return tuple(out)
