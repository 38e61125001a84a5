"""Card lifecycle operations: what each accepts, what it writes, and every refusal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from central_core_support import (
    NOW,
    UID_A,
    UID_B,
    UID_C,
    accepted,
    card,
    cards_written,
    holder,
    listed,
    posted,
    req,
    world,
)

from central.core.cancel import CancelCard
from central.core.cards import (
    FreezeCard,
    IssueCard,
    Reissue,
    ReportLost,
    UnfreezeCard,
    Unlost,
)
from central.core.effects import PutAccount, Rejected
from central.core.operations import decide
from central.core.state import PaymentUse, Policy
from edge_agent.core.model import CardStatus, Ticket

LOST, FROZEN = CardStatus.LOST, CardStatus.FROZEN
CANCELLED, REPLACED = CardStatus.CANCELLED, CardStatus.REPLACED


def refused(result: object) -> str:
    assert isinstance(result, Rejected), result
    return result.reason_code


# -- issue ----------------------------------------------------------------------------------


def test_issue_binds_the_card_and_takes_the_card_types_deposit_into_the_deposit_purse() -> None:
    state = world(holder("P1", no_account=True))
    result = decide(req(IssueCard, card_uid=UID_A, person_id="P1", card_type="vip"), state, NOW)
    assert cards_written(result)[UID_A].person_id == "P1"
    assert cards_written(result)[UID_A].status is CardStatus.ACTIVE
    deposit = posted(result)["deposit"]
    assert (deposit.deposit_fen, deposit.cash_fen, deposit.subsidy_fen) == (5000, 0, 0)
    assert deposit.entry_id == "op:r-1" and deposit.method == "cash"
    # A person without an account row gets one (limits live there; purses are ledger sums).
    assert any(isinstance(w, PutAccount) for w in accepted(result).master)
    audit = accepted(result).audit
    assert (audit.action, audit.target, audit.operator) == (
        "card.issue",
        "card:04A1B2C3",
        "op-zhang",
    )
    assert audit.after["deposit_fen"] == 5000


def test_issue_reuses_a_deposit_already_held_and_takes_only_the_difference() -> None:
    state = world(holder("P1", deposit=2000))
    result = decide(req(IssueCard, card_uid=UID_A, person_id="P1", card_type="vip"), state, NOW)
    assert posted(result)["deposit"].deposit_fen == 3000
    same = decide(req(IssueCard, card_uid=UID_A, person_id="P1"), state, NOW)
    assert accepted(same).postings == ()


def test_issue_may_bind_a_card_from_stock() -> None:
    stock = card(UID_A, "P9", CANCELLED)
    state = world(holder("P1"), cards=(stock,))
    result = decide(req(IssueCard, card_uid=UID_A, person_id="P1"), state, NOW)
    assert cards_written(result)[UID_A].person_id == "P1"


@pytest.mark.parametrize(
    ("setup", "fields", "code"),
    [
        ("no person", {}, "person_unknown"),
        ("", {"card_type": "gold"}, "card_type_unknown"),
        ("bound to P2", {}, "card_already_bound"),
        ("cancelled and listed", {}, "card_retired"),
        ("replaced", {}, "card_retired"),
        ("P1 holds a card", {"card_uid": UID_B}, "person_has_card"),
        ("", {"valid_to": NOW}, "expiry_invalid"),
        ("", {"deposit_method": "bank"}, "pay_ref_required"),
        ("", {"deposit_method": "bank", "deposit_pay_ref": "BANK-1"}, "pay_ref_used"),
    ],
)
def test_issue_refusals(setup: str, fields: dict[str, object], code: str) -> None:
    p1 = holder("P1", cards=(card(UID_C, "P1"),) if setup == "P1 holds a card" else ())
    others = {
        "bound to P2": (card(UID_A, "P2"),),
        "cancelled and listed": (card(UID_A, "P2", CANCELLED),),
        "replaced": (card(UID_A, "P2", REPLACED),),
    }.get(setup, ())
    state = world(
        *([] if setup == "no person" else [p1]),
        cards=others,
        blacklist=(listed(UID_A, "cancelled"),) if setup == "cancelled and listed" else (),
        payments=(
            PaymentUse(pay_ref="BANK-1", person_id="P2", amount_fen=1, entry_id="x", at=NOW),
        ),
    )
    request = req(IssueCard, **{"card_uid": UID_A, "person_id": "P1", **fields})
    assert refused(decide(request, state, NOW)) == code


# -- report lost / unlost -------------------------------------------------------------------


def test_report_lost_marks_the_card_lost_and_lists_it_from_the_report_time() -> None:
    state = world(holder("P1", cards=(card(),)))
    result = decide(req(ReportLost, card_uid=UID_A), state, NOW)
    assert cards_written(result)[UID_A].status is LOST
    (change,) = accepted(result).blacklist
    assert (change.op, change.reason, change.effective_at) == ("add", "lost", NOW)


def test_a_branch_report_counts_from_when_it_was_made_but_never_from_the_future() -> None:
    state = world(holder("P1", cards=(card(),)))
    earlier = NOW - timedelta(minutes=20)
    result = decide(req(ReportLost, card_uid=UID_A, reported_at=earlier), state, NOW)
    assert accepted(result).blacklist[0].effective_at == earlier
    ahead = decide(
        req(ReportLost, card_uid=UID_A, reported_at=NOW + timedelta(hours=1)), state, NOW
    )
    assert accepted(ahead).blacklist[0].effective_at == NOW


@pytest.mark.parametrize("status", [LOST, FROZEN, CANCELLED, REPLACED])
def test_only_an_active_card_is_reported_lost(status: CardStatus) -> None:
    state = world(holder("P1", cards=(card(status=status),)))
    assert refused(decide(req(ReportLost, card_uid=UID_A), state, NOW)) == "card_not_active"


def test_an_unknown_card_is_refused_by_every_card_operation() -> None:
    state = world(holder("P1"))
    for cls, extra in [
        (ReportLost, {}),
        (Unlost, {}),
        (Reissue, {"new_card_uid": UID_B}),
        (CancelCard, {}),
        (FreezeCard, {}),
        (UnfreezeCard, {}),
    ]:
        assert refused(decide(req(cls, card_uid=UID_A, **extra), state, NOW)) == "card_unknown"


def test_unlost_gives_the_card_back_and_takes_it_off_the_list() -> None:
    state = world(holder("P1", cards=(card(status=LOST),)), blacklist=(listed(UID_A),))
    result = decide(req(Unlost, card_uid=UID_A), state, NOW)
    assert cards_written(result)[UID_A].status is CardStatus.ACTIVE
    (change,) = accepted(result).blacklist
    assert (change.op, change.reason) == ("remove", "restored")


def test_unlost_cleared_for_reuse_puts_the_card_in_stock_and_the_person_keeps_the_money() -> None:
    state = world(holder("P1", cash=500, cards=(card(status=LOST),)), blacklist=(listed(UID_A),))
    result = decide(req(Unlost, card_uid=UID_A, clear_for_reuse=True), state, NOW)
    assert cards_written(result)[UID_A].status is CANCELLED
    assert accepted(result).blacklist[0].op == "remove"
    assert accepted(result).postings == ()


def test_unlost_of_a_card_that_is_not_lost_is_refused() -> None:
    state = world(holder("P1", cards=(card(),)))
    assert refused(decide(req(Unlost, card_uid=UID_A), state, NOW)) == "card_not_lost"


# -- reissue --------------------------------------------------------------------------------


def test_reissue_binds_the_new_card_and_retires_the_old_from_its_loss_time() -> None:
    lost_at = NOW - timedelta(minutes=20)
    ticket = Ticket(id="T1", person_id="P1", kind="count", service="swim", remaining=8)
    p1 = holder(
        "P1", cash=20000, subsidy=300, deposit=2000, cards=(card(status=LOST),), tickets=(ticket,)
    )
    state = world(p1, blacklist=(listed(UID_A, at=lost_at),))
    result = decide(req(Reissue, card_uid=UID_A, new_card_uid=UID_B), state, NOW)
    written = cards_written(result)
    assert written[UID_A].status is REPLACED
    assert written[UID_B].status is CardStatus.ACTIVE and written[UID_B].person_id == "P1"
    (change,) = accepted(result).blacklist
    assert (change.op, change.reason, change.effective_at) == ("add", "replaced", lost_at)
    # Account and tickets belong to the person: nothing moves, nothing is re-written.
    assert accepted(result).postings == ()
    assert all(w.entity == "card" for w in accepted(result).master)


def test_reissue_takes_the_fee_from_cash_and_tops_up_a_bigger_deposit() -> None:
    state = world(
        holder("P1", cash=1000, deposit=2000, cards=(card(),)), policy=Policy(reissue_fee_fen=500)
    )
    result = decide(req(Reissue, card_uid=UID_A, new_card_uid=UID_B, card_type="vip"), state, NOW)
    assert posted(result)["fee"].cash_fen == -500
    assert posted(result)["deposit"].deposit_fen == 3000
    # An active old card is listed from now.
    assert accepted(result).blacklist[0].effective_at == NOW


@pytest.mark.parametrize(
    ("old", "new", "extra", "code"),
    [
        (FROZEN, None, {}, "card_not_active"),
        (CANCELLED, None, {}, "card_not_active"),
        (REPLACED, None, {}, "card_not_active"),
        (LOST, "same", {}, "same_card"),
        (LOST, "bound", {}, "card_already_bound"),
        (LOST, "replaced", {}, "card_retired"),
        (LOST, None, {"card_type": "gold"}, "card_type_unknown"),
        (LOST, None, {"card_type": "vip", "deposit_method": "online"}, "pay_ref_required"),
    ],
)
def test_reissue_refusals(
    old: CardStatus, new: str | None, extra: dict[str, object], code: str
) -> None:
    uid = UID_A if new == "same" else UID_B
    others = {"bound": (card(UID_B, "P2"),), "replaced": (card(UID_B, "P2", REPLACED),)}
    state = world(holder("P1", cards=(card(status=old),)), cards=others.get(new or "", ()))
    request = req(Reissue, card_uid=UID_A, new_card_uid=uid, **extra)
    assert refused(decide(request, state, NOW)) == code


def test_reissue_with_too_little_cash_for_the_fee_is_refused() -> None:
    state = world(holder("P1", cash=499, cards=(card(),)), policy=Policy(reissue_fee_fen=500))
    result = decide(req(Reissue, card_uid=UID_A, new_card_uid=UID_B), state, NOW)
    assert refused(result) == "insufficient_balance"


# -- freeze / unfreeze ----------------------------------------------------------------------


def test_freeze_lists_the_card_and_unfreeze_restores_it() -> None:
    state = world(holder("P1", cards=(card(),)))
    frozen = decide(req(FreezeCard, card_uid=UID_A, reason="balance -¥12"), state, NOW)
    assert cards_written(frozen)[UID_A].status is FROZEN
    assert accepted(frozen).blacklist[0].reason == "frozen"
    assert accepted(frozen).audit.note == "balance -¥12"
    state = world(holder("P1", cards=(card(status=FROZEN),)), blacklist=(listed(UID_A, "frozen"),))
    thawed = decide(req(UnfreezeCard, card_uid=UID_A), state, NOW)
    assert cards_written(thawed)[UID_A].status is CardStatus.ACTIVE
    assert (accepted(thawed).blacklist[0].op, accepted(thawed).blacklist[0].reason) == (
        "remove",
        "restored",
    )


def test_freeze_needs_an_active_card_and_unfreeze_a_frozen_one() -> None:
    lost = world(holder("P1", cards=(card(status=LOST),)))
    assert refused(decide(req(FreezeCard, card_uid=UID_A), lost, NOW)) == "card_not_active"
    assert refused(decide(req(UnfreezeCard, card_uid=UID_A), lost, NOW)) == "card_not_frozen"


def test_a_card_whose_person_is_missing_is_refused_person_unknown() -> None:
    state = world(cards=(card(UID_A, "P7"),))
    assert refused(decide(req(FreezeCard, card_uid=UID_A), state, NOW)) == "person_unknown"
