"""Every card and money operation behind one pure entry point: :func:`decide`.

The shell's loop, for any request (from the API, the CLI, or an edge intent via
:func:`central.core.intents.intent_request`), in **one transaction**:

1. look up the stored result of ``request.request_id``; if there is one, answer with
   :func:`central.core.idempotency.replay` and stop;
2. load a :class:`~central.core.state.State` holding what :func:`state_keys` names (plus
   the holders of those cards, their cards and those cards' blacklist rows);
3. ``result = decide(request, state, now)``;
4. if accepted: write ``master``, append ``postings`` (balances are their sums), append
   one blacklist delta of ``blacklist``, write ``audit``; if rejected, audit the refusal;
5. store the result under the request id (:func:`central.core.idempotency.remember`).

Decode a request from JSON with ``msgspec.json.decode(body, type=AnyRequest)``: the ``op``
field picks the type and the field constraints are checked there.
"""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from central.core.cancel import CancelCard, cancel_card
from central.core.cards import (
    FreezeCard,
    IssueCard,
    Reissue,
    ReportLost,
    UnfreezeCard,
    Unlost,
    freeze_card,
    issue_card,
    reissue,
    report_lost,
    unfreeze_card,
    unlost,
)
from central.core.effects import Accepted, Rejected
from central.core.money import (
    CorrectPurchase,
    Recharge,
    RefundPurchase,
    SetLimits,
    correct_purchase,
    recharge,
    refund_purchase,
    set_limits,
)
from central.core.state import State
from central.core.subsidy import ExpireSubsidy, GrantSubsidy, expire_subsidy, grant_subsidy
from central.core.tickets import SellTicket, sell_ticket

AnyRequest = (
    IssueCard
    | ReportLost
    | Unlost
    | Reissue
    | CancelCard
    | FreezeCard
    | UnfreezeCard
    | Recharge
    | CorrectPurchase
    | RefundPurchase
    | SetLimits
    | SellTicket
    | GrantSubsidy
    | ExpireSubsidy
)
Result = Accepted | Rejected


def decide(request: AnyRequest, state: State, now: datetime) -> Result:
    """The result of ``request`` against ``state`` at ``now`` (UTC-aware). Pure: the same
    arguments always give the same result, and nothing is written."""
    match request:
        case IssueCard():
            return issue_card(request, state, now)
        case ReportLost():
            return report_lost(request, state, now)
        case Unlost():
            return unlost(request, state, now)
        case Reissue():
            return reissue(request, state, now)
        case CancelCard():
            return cancel_card(request, state, now)
        case FreezeCard():
            return freeze_card(request, state, now)
        case UnfreezeCard():
            return unfreeze_card(request, state, now)
        case Recharge():
            return recharge(request, state, now)
        case CorrectPurchase():
            return correct_purchase(request, state, now)
        case RefundPurchase():
            return refund_purchase(request, state, now)
        case SetLimits():
            return set_limits(request, state, now)
        case SellTicket():
            return sell_ticket(request, state, now)
        case GrantSubsidy():
            return grant_subsidy(request, state, now)
        case ExpireSubsidy():
            return expire_subsidy(request, state, now)


class StateKeys(Struct, frozen=True, kw_only=True):
    """What the caller must load into a :class:`State` for one request.

    Besides these: the holder (:class:`~central.core.state.Holder`) of every card loaded,
    with all of that holder's cards, and the blacklist rows of all those cards.
    """

    card_uids: tuple[str, ...] = ()
    person_ids: tuple[str, ...] = ()
    original_ids: tuple[str, ...] = ()
    pay_refs: tuple[str, ...] = ()
    ticket_ids: tuple[str, ...] = ()


def state_keys(request: AnyRequest) -> StateKeys:
    """The keys ``request`` names, for the caller to load."""
    match request:
        case IssueCard():
            return StateKeys(
                card_uids=(request.card_uid,),
                person_ids=(request.person_id,),
                pay_refs=_refs(request.deposit_pay_ref),
            )
        case Reissue():
            return StateKeys(
                card_uids=(request.card_uid, request.new_card_uid),
                pay_refs=_refs(request.deposit_pay_ref),
            )
        case Recharge():
            return StateKeys(card_uids=(request.card_uid,), pay_refs=_refs(request.pay_ref))
        case CorrectPurchase() | RefundPurchase():
            # The holder to load is the original's person_id.
            return StateKeys(original_ids=(request.original_id,))
        case SellTicket():
            return StateKeys(card_uids=(request.card_uid,), ticket_ids=(request.ticket_id,))
        case GrantSubsidy() | ExpireSubsidy():
            return StateKeys(person_ids=tuple(request.person_ids))
        case ReportLost() | Unlost() | CancelCard() | FreezeCard() | UnfreezeCard() | SetLimits():
            return StateKeys(card_uids=(request.card_uid,))


def _refs(pay_ref: str | None) -> tuple[str, ...]:
    return () if pay_ref is None else (pay_ref,)
