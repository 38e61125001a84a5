"""Cancelling (退卡/销户): every purse to zero by explicit entries, the card retired or
recycled, and every refusal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from central_core_support import (
    NOW,
    UID_A,
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
from central.core.effects import Rejected
from central.core.operations import decide
from central.core.state import Policy
from edge_agent.core.model import CardStatus

LOST, FROZEN = CardStatus.LOST, CardStatus.FROZEN
CANCELLED, REPLACED = CardStatus.CANCELLED, CardStatus.REPLACED


def refused(result: object) -> str:
    assert isinstance(result, Rejected), result
    return result.reason_code


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_pays_out_cash_and_deposit_minus_the_fee_and_forfeits_subsidy() -> None:
    state = world(
        holder("P1", cash=10000, subsidy=700, deposit=2000, cards=(card(),)),
        policy=Policy(cancel_fee_fen=500),
    )
    result = decide(req(CancelCard, card_uid=UID_A), state, NOW)
    entries = posted(result)
    assert entries["subsidy_forfeit"].subsidy_fen == -700
    assert (entries["fee"].deposit_fen, entries["fee"].cash_fen) == (-500, 0)
    assert entries["refund_deposit"].deposit_fen == -1500
    assert entries["refund_cash"].cash_fen == -10000
    assert cards_written(result)[UID_A].status is CANCELLED
    assert accepted(result).blacklist[0].reason == "cancelled"
    assert accepted(result).audit.after["paid_out_fen"] == 11500


def test_a_fee_bigger_than_the_deposit_takes_cash_and_never_more_than_there_is() -> None:
    state = world(
        holder("P1", cash=300, deposit=100, cards=(card(),)), policy=Policy(cancel_fee_fen=1000)
    )
    entries = posted(decide(req(CancelCard, card_uid=UID_A), state, NOW))
    assert (entries["fee"].deposit_fen, entries["fee"].cash_fen) == (-100, -300)
    assert "refund_cash" not in entries and "refund_deposit" not in entries


def test_a_recycled_card_goes_back_to_stock_off_the_blacklist() -> None:
    state = world(holder("P1", cards=(card(status=FROZEN),)), blacklist=(listed(UID_A, "frozen"),))
    result = decide(req(CancelCard, card_uid=UID_A, recycle=True), state, NOW)
    assert cards_written(result)[UID_A].status is CANCELLED
    (change,) = accepted(result).blacklist
    assert (change.op, change.reason) == ("remove", "restored")


def test_cancelling_a_lost_card_keeps_its_loss_time_on_the_list() -> None:
    lost_at = NOW - timedelta(days=1)
    state = world(holder("P1", cards=(card(status=LOST),)), blacklist=(listed(UID_A, at=lost_at),))
    (change,) = accepted(decide(req(CancelCard, card_uid=UID_A), state, NOW)).blacklist
    assert (change.reason, change.effective_at) == ("cancelled", lost_at)


@pytest.mark.parametrize(
    ("status", "purses", "recycle", "code"),
    [
        (CANCELLED, {}, False, "card_not_active"),
        (REPLACED, {}, False, "card_not_active"),
        (LOST, {}, True, "card_not_present"),
        (CardStatus.ACTIVE, {"cash": -1200}, False, "balance_negative"),
        (CardStatus.ACTIVE, {"subsidy": -1}, False, "balance_negative"),
    ],
)
def test_cancel_refusals(
    status: CardStatus, purses: dict[str, int], recycle: bool, code: str
) -> None:
    state = world(holder("P1", cards=(card(status=status),), **purses))
    assert refused(decide(req(CancelCard, card_uid=UID_A, recycle=recycle), state, NOW)) == code


def test_cancel_closes_the_account_for_every_live_card_of_the_person() -> None:
    old = card("04B2C3D4", status=REPLACED)
    state = world(holder("P1", cash=100, cards=(old, card())))
    result = accepted(decide(req(CancelCard, card_uid=UID_A), state, NOW))
    assert set(cards_written(result)) == {UID_A}  # the replaced card is already retired
    assert accepted(result).audit.target == f"card:{UID_A}"  # refusals name the card too
