"""Card intents from edges: a branch desk's card operation, possibly made offline.

An edge may act on a card while cut off (issue at the desk, take a loss report) but only
central writes master data (brief, invariant 4): the edge submits a ``card.intent``
record, and central decides it exactly like the same operation made at HQ — same checks,
same effects, same reason codes. A refusal (say ``card_already_bound``: HQ bound that UID
to someone else first) is stored and audited like any other; the edge converges on the
feed, which carries central's truth about the card.

The intent's record id is the request id, so a resent record is answered with its first
result; the source is ``site:{site}``; the branch operator is the operator.
"""

from __future__ import annotations

from datetime import datetime

from central.core.cancel import CancelCard
from central.core.cards import (
    CardRequest,
    FreezeCard,
    IssueCard,
    Reissue,
    ReportLost,
    UnfreezeCard,
    Unlost,
)
from central.core.effects import Accepted, Rejected
from central.core.operations import StateKeys, decide, state_keys
from central.core.state import State
from protocol.messages import CardIntent

Result = Accepted | Rejected


def intent_request(intent: CardIntent) -> CardRequest | CancelCard:
    """The operation an intent asks for.

    - ``issue`` takes the policy's default card type and its deposit (the intent names
      neither; the desk charges what HQ configured);
    - ``report_lost`` counts from the intent's ``at`` — when the member reported it at the
      branch — not from when central heard, because that instant decides liability;
    - ``cancel`` never recycles: the card stays blacklisted, the safe choice when nobody at
      HQ has seen the card handed back.
    """
    uid = intent.card_uid
    if uid is None:  # CardIntent refuses this when decoded; guard direct construction
        raise ValueError("a card intent needs `card_uid`")
    rid, who, src = intent.id, intent.operator, f"site:{intent.site}"
    match intent.action:
        case "issue":
            if intent.person_id is None:
                raise ValueError("issuing a card needs `person_id`")
            return IssueCard(
                request_id=rid, operator=who, source=src, card_uid=uid, person_id=intent.person_id
            )
        case "report_lost":
            return ReportLost(
                request_id=rid, operator=who, source=src, card_uid=uid, reported_at=intent.at
            )
        case "unlost":
            return Unlost(request_id=rid, operator=who, source=src, card_uid=uid)
        case "reissue":
            if intent.new_card_uid is None:
                raise ValueError("a reissue needs `new_card_uid`")
            return Reissue(
                request_id=rid,
                operator=who,
                source=src,
                card_uid=uid,
                new_card_uid=intent.new_card_uid,
            )
        case "cancel":
            return CancelCard(request_id=rid, operator=who, source=src, card_uid=uid)
        case "freeze":
            return FreezeCard(
                request_id=rid, operator=who, source=src, card_uid=uid, reason=intent.reason
            )
        case "unfreeze":
            return UnfreezeCard(request_id=rid, operator=who, source=src, card_uid=uid)


def intent_keys(intent: CardIntent) -> StateKeys:
    """What to load for ``intent`` (see :func:`central.core.operations.state_keys`)."""
    return state_keys(intent_request(intent))


def decide_intent(intent: CardIntent, state: State, now: datetime) -> Result:
    """Accept or reject a branch's card intent. Beyond the operation's own reasons:
    ``person_mismatch`` when the intent names a person who does not hold the card (the
    branch acted on a card that central has since given to someone else)."""
    request = intent_request(intent)
    if intent.action != "issue" and intent.person_id is not None:
        card = state.cards.get(request.card_uid)
        if card is not None and card.person_id != intent.person_id:
            return Rejected(
                request_id=request.request_id,
                reason_code="person_mismatch",
                message=f"card {card.uid} belongs to {card.person_id}, not {intent.person_id}",
            )
    return decide(request, state, now)
