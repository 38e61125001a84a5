"""Card lifecycle: issue, report lost, unlost, reissue, freeze, unfreeze (cancel: see
:mod:`central.core.cancel`).

Design (where the issue leaves room):

- **One live card per person.** A card is a key to the person's account and tickets, which
  belong to the person. Issuing a second live card is refused ``person_has_card``;
  replacing a card is a *reissue*, which moves nothing: the new card opens the same
  account, so balance and tickets "carry over" without a single ledger entry.
- **Deposit (押金) is its own purse** (``deposit_fen`` in the ledger), outside cash and
  subsidy, so no terminal ever spends it and no balance shown for spending includes it. A
  person's deposit purse covers the card type's deposit; issuing or reissuing takes only
  the difference (a ``deposit`` entry), and only a cancel pays it back.
- **Retired UIDs.** A ``replaced`` card, or a ``cancelled`` one still on the blacklist
  (the card was not handed back), is never bound again: ``card_retired``. A card handed
  back at a cancel (``recycle``) or cleared for reuse at an unlost is ``cancelled`` and
  *off* the blacklist: it is in stock, and may be issued to anyone.
- **Liability time.** A loss is effective from the report (or the branch's report time for
  an intent made offline); re-listing a lost card as replaced or cancelled keeps that time.
"""

from __future__ import annotations

from datetime import datetime

from central.core.effects import Accepted, MasterWrite, Posting, PutAccount, PutCard, Rejected
from central.core.request import (
    Request,
    audit,
    balance_summary,
    blacklist_since,
    card_and_holder,
    card_summary,
    check_payment,
    entry_id,
    listing,
    reject,
    utc,
    with_status,
)
from central.core.state import LIVE, CardType, Holder, State
from edge_agent.core.model import Card, CardStatus
from protocol.messages import (
    CardUid,
    Name,
    PayRef,
    RechargeMethod,
    Text,
    UtcTime,
)

Result = Accepted | Rejected


class IssueCard(Request, frozen=True, kw_only=True, tag="card.issue"):
    """Bind ``card_uid`` to ``person_id`` (发卡), taking the card type's deposit."""

    card_uid: CardUid
    person_id: Name
    card_type: Name | None = None
    valid_to: UtcTime | None = None
    deposit_method: RechargeMethod = "cash"
    deposit_pay_ref: PayRef | None = None


class ReportLost(Request, frozen=True, kw_only=True, tag="card.report_lost"):
    """挂失: the card is lost from ``reported_at`` (default: now; never later than now)."""

    card_uid: CardUid
    reported_at: UtcTime | None = None


class Unlost(Request, frozen=True, kw_only=True, tag="card.unlost"):
    """解挂: a lost card found — back to its holder, or (``clear_for_reuse``) into stock."""

    card_uid: CardUid
    clear_for_reuse: bool = False


class Reissue(Request, frozen=True, kw_only=True, tag="card.reissue"):
    """补卡: ``new_card_uid`` replaces ``card_uid`` for the same person."""

    card_uid: CardUid
    new_card_uid: CardUid
    card_type: Name | None = None
    deposit_method: RechargeMethod = "cash"
    deposit_pay_ref: PayRef | None = None


class FreezeCard(Request, frozen=True, kw_only=True, tag="card.freeze"):
    """冻结: the card is refused everywhere until unfrozen."""

    card_uid: CardUid
    reason: Text = ""


class UnfreezeCard(Request, frozen=True, kw_only=True, tag="card.unfreeze"):
    """解冻: a frozen card is active again."""

    card_uid: CardUid


CardRequest = IssueCard | ReportLost | Unlost | Reissue | FreezeCard | UnfreezeCard


def _free_uid(request: Request, uid: str, state: State) -> Rejected | None:
    """Whether ``uid`` may be bound: unknown, or in stock (cancelled and off the list)."""
    card = state.cards.get(uid)
    if card is not None and card.status in LIVE:
        return reject(
            request, "card_already_bound", f"card {uid} is already bound to {card.person_id}"
        )
    if uid in state.blacklist or (card is not None and card.status is not CardStatus.CANCELLED):
        return reject(request, "card_retired", f"card {uid} is retired and cannot be bound again")
    return None


def _card_type(request: Request, state: State, name: str | None) -> CardType | Rejected:
    wanted = name or state.policy.default_card_type
    card_type = state.card_types.get(wanted)
    if card_type is None:
        return reject(request, "card_type_unknown", f"no card type {wanted!r}")
    return card_type


def _deposit_due(holder: Holder, card_type: CardType) -> int:
    """What the deposit purse lacks for ``card_type`` (a deposit already held is reused)."""
    return max(0, card_type.deposit_fen - holder.balance.deposit_fen)


def issue_card(request: IssueCard, state: State, now: datetime) -> Result:
    """发卡. Refused: ``person_unknown``, ``card_type_unknown``, ``card_already_bound`` (a
    live card of anyone), ``card_retired``, ``person_has_card``, ``expiry_invalid``,
    ``pay_ref_required`` / ``pay_ref_used`` for the deposit payment."""
    holder = state.holders.get(request.person_id)
    if holder is None:
        return reject(request, "person_unknown", f"no person {request.person_id}")
    card_type = _card_type(request, state, request.card_type)
    if isinstance(card_type, Rejected):
        return card_type
    refused = _free_uid(request, request.card_uid, state)
    if refused is not None:
        return refused
    if holder.live_cards:
        held = holder.live_cards[0].uid
        return reject(
            request,
            "person_has_card",
            f"{request.person_id} already holds card {held}; replace it with a reissue",
        )
    if request.valid_to is not None and request.valid_to <= now:
        return reject(request, "expiry_invalid", "the card would expire before it is issued")
    due = _deposit_due(holder, card_type)
    if due:
        refused = check_payment(request, state, request.deposit_method, request.deposit_pay_ref)
        if refused is not None:
            return refused
    card = Card(
        uid=request.card_uid,
        person_id=request.person_id,
        card_type=card_type.name,
        valid_to=None if request.valid_to is None else utc(request.valid_to),
    )
    master: list[MasterWrite] = [PutCard(card=card)]
    if holder.account is None:
        master.append(PutAccount(account=holder.master_account()))
    postings = (
        [
            Posting(
                entry_id=entry_id(request),
                person_id=request.person_id,
                kind="deposit",
                at=utc(now),
                deposit_fen=due,
                card_uid=request.card_uid,
                method=request.deposit_method,
                pay_ref=request.deposit_pay_ref,
            )
        ]
        if due
        else []
    )
    return Accepted(
        request_id=request.request_id,
        master=tuple(master),
        postings=tuple(postings),
        audit=audit(
            request,
            f"card:{request.card_uid}",
            now,
            card_summary(state.cards.get(request.card_uid)),
            {**card_summary(card), "deposit_fen": holder.balance.deposit_fen + due},
        ),
    )


def report_lost(request: ReportLost, state: State, now: datetime) -> Result:
    """挂失: status lost, blacklisted ``lost`` from the report time. Refused:
    ``card_unknown``, ``card_not_active`` (already lost, frozen, cancelled or replaced)."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, _ = found
    if card.status is not CardStatus.ACTIVE:
        return reject(request, "card_not_active", f"card {card.uid} is {card.status}")
    # A report made at a branch while offline counts from when it was made (liability),
    # but never from the future: a fast branch clock must not delay the loss.
    effective = min(request.reported_at or now, now)
    lost = with_status(card, CardStatus.LOST)
    return Accepted(
        request_id=request.request_id,
        master=(PutCard(card=lost),),
        blacklist=(listing("add", card.uid, "lost", effective),),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            card_summary(card),
            {**card_summary(lost), "effective_at": utc(effective).isoformat()},
        ),
    )


def unlost(request: Unlost, state: State, now: datetime) -> Result:
    """解挂: a lost card back to active and off the blacklist; or, ``clear_for_reuse``,
    unbound into stock (``cancelled``, off the list) while the person keeps the account.
    Refused: ``card_unknown``, ``card_not_lost``."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, _ = found
    if card.status is not CardStatus.LOST:
        return reject(request, "card_not_lost", f"card {card.uid} is {card.status}, not lost")
    status = CardStatus.CANCELLED if request.clear_for_reuse else CardStatus.ACTIVE
    after = with_status(card, status)
    return Accepted(
        request_id=request.request_id,
        master=(PutCard(card=after),),
        blacklist=(listing("remove", card.uid, "restored", now),),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            card_summary(card),
            {**card_summary(after), "in_stock": request.clear_for_reuse},
        ),
    )


def reissue(request: Reissue, state: State, now: datetime) -> Result:
    """补卡: the new card is bound to the same person; the old one is ``replaced`` and
    blacklisted ``replaced`` (from its loss time if it was lost). Account and tickets stay
    with the person. The reissue fee comes from cash; a higher deposit of the new card type
    is topped up. Refused: ``card_unknown``, ``card_not_active`` (old card neither active
    nor lost), ``same_card``, ``card_already_bound``, ``card_retired``,
    ``card_type_unknown``, ``insufficient_balance`` (fee), ``pay_ref_*`` (deposit)."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    old, holder = found
    if old.status not in {CardStatus.ACTIVE, CardStatus.LOST}:
        return reject(
            request,
            "card_not_active",
            f"card {old.uid} is {old.status}; only an active or "
            "lost card is reissued (unfreeze a frozen one first)",
        )
    if request.new_card_uid == old.uid:
        return reject(request, "same_card", "the new card is the old card")
    refused = _free_uid(request, request.new_card_uid, state)
    if refused is not None:
        return refused
    card_type = _card_type(request, state, request.card_type or old.card_type)
    if isinstance(card_type, Rejected):
        return card_type
    fee = state.policy.reissue_fee_fen
    if fee > max(0, holder.balance.cash_fen):
        return reject(
            request,
            "insufficient_balance",
            f"the reissue fee is {fee} fen; the cash purse holds {holder.balance.cash_fen}",
        )
    due = _deposit_due(holder, card_type)
    if due:
        refused = check_payment(request, state, request.deposit_method, request.deposit_pay_ref)
        if refused is not None:
            return refused
    replaced = with_status(old, CardStatus.REPLACED)
    new = Card(
        uid=request.new_card_uid,
        person_id=old.person_id,
        card_type=card_type.name,
        valid_to=old.valid_to,
    )
    postings: list[Posting] = []
    if fee:
        postings.append(
            Posting(
                entry_id=entry_id(request),
                person_id=old.person_id,
                kind="fee",
                at=utc(now),
                cash_fen=-fee,
                card_uid=new.uid,
            )
        )
    if due:
        postings.append(
            Posting(
                entry_id=entry_id(request),
                person_id=old.person_id,
                kind="deposit",
                at=utc(now),
                deposit_fen=due,
                card_uid=new.uid,
                method=request.deposit_method,
                pay_ref=request.deposit_pay_ref,
            )
        )
    return Accepted(
        request_id=request.request_id,
        master=(PutCard(card=replaced), PutCard(card=new)),
        postings=tuple(postings),
        blacklist=(listing("add", old.uid, "replaced", blacklist_since(state, old.uid, now)),),
        audit=audit(
            request,
            f"card:{old.uid}",
            now,
            {**card_summary(old), **balance_summary(holder.balance)},
            {
                **card_summary(replaced),
                "new_card_uid": new.uid,
                **balance_summary(holder.balance.plus(cash_fen=-fee, deposit_fen=due)),
            },
        ),
    )


def freeze_card(request: FreezeCard, state: State, now: datetime) -> Result:
    """冻结: status frozen, blacklisted ``frozen`` from now. Refused: ``card_unknown``,
    ``card_not_active``."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, _ = found
    if card.status is not CardStatus.ACTIVE:
        return reject(request, "card_not_active", f"card {card.uid} is {card.status}")
    frozen = with_status(card, CardStatus.FROZEN)
    return Accepted(
        request_id=request.request_id,
        master=(PutCard(card=frozen),),
        blacklist=(listing("add", card.uid, "frozen", now),),
        audit=audit(
            request,
            f"card:{card.uid}",
            now,
            card_summary(card),
            card_summary(frozen),
            note=request.reason,
        ),
    )


def unfreeze_card(request: UnfreezeCard, state: State, now: datetime) -> Result:
    """解冻: a frozen card active again and off the blacklist. Refused: ``card_unknown``,
    ``card_not_frozen``."""
    found = card_and_holder(request, request.card_uid, state)
    if isinstance(found, Rejected):
        return found
    card, _ = found
    if card.status is not CardStatus.FROZEN:
        return reject(request, "card_not_frozen", f"card {card.uid} is {card.status}, not frozen")
    active = with_status(card, CardStatus.ACTIVE)
    return Accepted(
        request_id=request.request_id,
        master=(PutCard(card=active),),
        blacklist=(listing("remove", card.uid, "restored", now),),
        audit=audit(request, f"card:{card.uid}", now, card_summary(card), card_summary(active)),
    )
