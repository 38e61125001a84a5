"""Money at a desk or at HQ: recharge, purchase correction, purchase refund, limits.

Design (where the issue leaves room):

- **Recharge** is idempotent twice over: by request id (a retried click) and by payment
  reference (the same bank payment seen by a kiosk commit, a statement import and an
  operator): a reference already credited anywhere is refused ``pay_ref_used``. Bank and
  online recharges must carry their reference; cash may. A frozen card may be recharged —
  that is how an overspent, frozen account is settled.
- **Correction (消费更正)** states what the purchase *should* have cost
  (``corrected_amount_fen``), and credits the difference from what it costs now — the
  original minus everything already given back (earlier corrections and refunds, from HQ
  or from site records). So a second correction accounts for the first instead of
  stacking on it, and the total given back can never exceed the original. A correction
  never charges more (that is a new sale). Refused: ``correction_exceeds_original`` (above
  the original), ``already_corrected`` (earlier adjustments already brought it to or below
  that amount), ``amount_invalid`` (equal to the original: nothing to correct).
- **Refund** of a purchase (goods returned) gives back ``amount_fen`` of what the purchase
  still costs; more is ``refund_exceeds_original``.
- Given-back money returns to the purses **cash first, then subsidy**: a sale spends
  subsidy first, so a smaller correct price would have taken less cash — this restores the
  purses as the right price would have left them. (Subsidy given back after a reset
  expires at the next reset like any other subsidy.)
- The credit goes to the person who was charged, whatever has happened to their card
  since (lost, replaced, cancelled): the money is theirs.
"""

from __future__ import annotations

from datetime import datetime

from central.core.effects import Accepted, Posting, PutAccount, Rejected
from central.core.request import (
    Request,
    audit,
    balance_summary,
    card_and_holder,
    check_payment,
    entry_id,
    reject,
    utc,
)
from central.core.state import Balance, OriginalPurchase, State
from edge_agent.core.model import Account, CardStatus
from protocol.messages import MAX_FEN, CardUid, PayRef, RechargeMethod, RecordId, Text

Result = Accepted | Rejected


class Recharge(Request, frozen=True, kw_only=True, tag="money.recharge"):
    """充值 at HQ or a branch desk into the card holder's cash purse."""

    card_uid: CardUid
    amount_fen: int
    method: RechargeMethod
    pay_ref: PayRef | None = None


class CorrectPurchase(Request, frozen=True, kw_only=True, tag="money.correct"):
    """消费更正: purchase ``original_id`` should have cost ``corrected_amount_fen``."""

    original_id: RecordId
    corrected_amount_fen: int
    reason: Text


class RefundPurchase(Request, frozen=True, kw_only=True, tag="money.refund"):
    """退款: give back ``amount_fen`` of purchase ``original_id`` (goods returned)."""

    original_id: RecordId
    amount_fen: int
    reason: Text


class SetLimits(Request, frozen=True, kw_only=True, tag="limits.set"):
    """Per-card spending limits (on the holder's account, which the card opens); None
    removes a limit."""

    card_uid: CardUid
    txn_limit_fen: int | None = None
    daily_limit_fen: int | None = None


MoneyRequest = Recharge | CorrectPurchase | RefundPurchase | SetLimits

#: A lost card's account is still its holder's: money may go in at a desk (say, to pay a
#: reissue fee), never out — the card itself stays on the blacklist.
_RECHARGEABLE = frozenset({CardStatus.ACTIVE, CardStatus.FROZEN, CardStatus.LOST})


def recharge(request: Recharge, state: State, now: datetime) -> Result:
    """Credit the cash purse (a lost card's too). Refused: ``card_unknown``,
    ``card_not_active`` (cancelled, replaced), ``amount_invalid`` (not positive, or over
    the policy cap), ``pay_ref_required``, ``pay_ref_used``."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, holder = found
    if card.status not in _RECHARGEABLE:
        return reject(request, "card_not_active", f"card {card.uid} is {card.status}")
    cap = min(state.policy.recharge_cap_fen, MAX_FEN)
    if not 0 < request.amount_fen <= cap:
        return reject(
            request, "amount_invalid", f"a recharge is 1..{cap} fen, not {request.amount_fen}"
        )
    refused = check_payment(request, state, request.method, request.pay_ref)
    if refused is not None:
        return refused
    posting = Posting(
        entry_id=entry_id(request),
        person_id=holder.person.id,
        kind="recharge",
        at=utc(now),
        cash_fen=request.amount_fen,
        card_uid=card.uid,
        method=request.method,
        pay_ref=request.pay_ref,
    )
    return Accepted(
        request_id=request.request_id,
        postings=(posting,),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            balance_summary(holder.balance),
            {
                **balance_summary(holder.balance.plus(cash_fen=request.amount_fen)),
                "method": request.method,
                "pay_ref": request.pay_ref,
            },
        ),
    )


def _original(
    request: CorrectPurchase | RefundPurchase, state: State
) -> OriginalPurchase | Rejected:
    original = state.originals.get(request.original_id)
    if original is None:
        return reject(request, "original_not_found", f"no purchase {request.original_id}")
    if not original.approved:
        return reject(
            request, "original_not_approved", f"purchase {original.record_id} was declined"
        )
    if not request.reason.strip():
        return reject(request, "reason_required", "say why the purchase is adjusted")
    return original


def give_back(original: OriginalPurchase, amount_fen: int) -> Balance:
    """How ``amount_fen`` (≤ what the purchase still costs) returns to the purses: cash
    first, up to the cash the purchase still holds, the rest to subsidy."""
    cash_left = original.cash_fen - sum(a.cash_fen for a in original.adjustments)
    cash = min(amount_fen, max(0, cash_left))
    return Balance(cash_fen=cash, subsidy_fen=amount_fen - cash)


def _credit(
    request: CorrectPurchase | RefundPurchase,
    original: OriginalPurchase,
    amount_fen: int,
    state: State,
    now: datetime,
) -> Accepted:
    back = give_back(original, amount_fen)
    holder = state.holders.get(original.person_id)
    posting = Posting(
        entry_id=entry_id(request),
        person_id=original.person_id,
        kind="correction" if isinstance(request, CorrectPurchase) else "refund",
        at=utc(now),
        cash_fen=back.cash_fen,
        subsidy_fen=back.subsidy_fen,
        ref=original.record_id,
    )
    before: dict[str, str | int | bool | None] = {
        "purchase_fen": original.amount_fen,
        "costs_fen": original.remaining_fen,
    }
    after: dict[str, str | int | bool | None] = {
        "purchase_fen": original.amount_fen,
        "costs_fen": original.remaining_fen - amount_fen,
        "given_back_fen": amount_fen,
    }
    if holder is not None:
        before |= balance_summary(holder.balance)
        after |= balance_summary(
            holder.balance.plus(cash_fen=back.cash_fen, subsidy_fen=back.subsidy_fen)
        )
    return Accepted(
        request_id=request.request_id,
        postings=(posting,),
        audit=audit(
            request, f"purchase:{original.record_id}", now, before, after, note=request.reason
        ),
    )


def correct_purchase(request: CorrectPurchase, state: State, now: datetime) -> Result:
    """消费更正 to ``corrected_amount_fen``. Refused: ``original_not_found``,
    ``original_not_approved``, ``reason_required``, ``amount_invalid`` (negative, or equal
    to the original), ``correction_exceeds_original``, ``already_corrected``."""
    original = _original(request, state)
    if isinstance(original, Rejected):
        return original
    target = request.corrected_amount_fen
    if target < 0:
        return reject(request, "amount_invalid", f"a purchase cannot cost {target} fen")
    if target > original.amount_fen:
        return reject(
            request,
            "correction_exceeds_original",
            f"{target} fen is more than the original {original.amount_fen}; "
            "charge the difference as a new sale",
        )
    if target >= original.remaining_fen:
        if original.remaining_fen == original.amount_fen:
            return reject(request, "amount_invalid", f"the purchase already costs {target} fen")
        return reject(
            request,
            "already_corrected",
            f"earlier corrections and refunds already brought it to {original.remaining_fen} fen",
        )
    return _credit(request, original, original.remaining_fen - target, state, now)


def refund_purchase(request: RefundPurchase, state: State, now: datetime) -> Result:
    """Give back part or all of a purchase. Refused: ``original_not_found``,
    ``original_not_approved``, ``reason_required``, ``amount_invalid`` (not positive),
    ``refund_exceeds_original`` (more than it still costs)."""
    original = _original(request, state)
    if isinstance(original, Rejected):
        return original
    if request.amount_fen <= 0:
        return reject(request, "amount_invalid", f"a refund is positive, not {request.amount_fen}")
    if request.amount_fen > original.remaining_fen:
        return reject(
            request,
            "refund_exceeds_original",
            f"purchase {original.record_id} still costs {original.remaining_fen} fen; "
            f"{request.amount_fen} is more",
        )
    return _credit(request, original, request.amount_fen, state, now)


def set_limits(request: SetLimits, state: State, now: datetime) -> Result:
    """Set the per-purchase and per-day limits. Refused: ``card_unknown``,
    ``card_not_active`` (cancelled or replaced), ``amount_invalid`` (negative, or a
    purchase limit above the daily one)."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, holder = found
    if card.status in {CardStatus.CANCELLED, CardStatus.REPLACED}:
        return reject(request, "card_not_active", f"card {card.uid} is {card.status}")
    txn, daily = request.txn_limit_fen, request.daily_limit_fen
    if any(x is not None and not 0 <= x <= MAX_FEN for x in (txn, daily)):
        return reject(request, "amount_invalid", "limits are 0..MAX_FEN fen")
    if txn is not None and daily is not None and txn > daily:
        return reject(request, "amount_invalid", "the per-purchase limit exceeds the daily one")
    old = holder.master_account()
    new = PutAccount(
        account=Account(
            person_id=old.person_id,
            subsidy_expires_at=old.subsidy_expires_at,
            txn_limit_fen=txn,
            daily_limit_fen=daily,
        )
    )
    return Accepted(
        request_id=request.request_id,
        master=(new,),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            {"txn_limit_fen": old.txn_limit_fen, "daily_limit_fen": old.daily_limit_fen},
            {"txn_limit_fen": txn, "daily_limit_fen": daily},
        ),
    )
