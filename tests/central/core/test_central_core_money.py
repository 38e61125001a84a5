"""Recharge, purchase correction and refund, limits, ticket sales: accepts and refusals."""

from __future__ import annotations

from datetime import timedelta

import pytest
from central_core_support import (
    NOW,
    UID_A,
    accepted,
    card,
    holder,
    posted,
    purchase,
    req,
    world,
)
from msgspec.structs import replace

from central.core.effects import PutAccount, PutTicket, Rejected
from central.core.money import CorrectPurchase, Recharge, RefundPurchase, SetLimits, give_back
from central.core.operations import decide
from central.core.state import Adjustment, OriginalPurchase, PaymentUse, Policy
from central.core.tickets import SellTicket
from edge_agent.core.model import Account, CardStatus, Ticket


def refused(result: object) -> str:
    assert isinstance(result, Rejected), result
    return result.reason_code


# -- recharge -------------------------------------------------------------------------------


def test_a_bank_recharge_credits_cash_with_its_method_and_reference() -> None:
    state = world(holder("P1", cash=100, cards=(card(),)))
    request = req(Recharge, card_uid=UID_A, amount_fen=20000, method="bank", pay_ref="B-77")
    entry = posted(decide(request, state, NOW))["recharge"]
    assert (entry.cash_fen, entry.subsidy_fen, entry.deposit_fen) == (20000, 0, 0)
    assert (entry.method, entry.pay_ref, entry.person_id) == ("bank", "B-77", "P1")
    audit = accepted(decide(request, state, NOW)).audit
    assert (audit.before["cash_fen"], audit.after["cash_fen"]) == (100, 20100)


def test_a_lost_card_can_be_recharged_at_a_desk_to_pay_for_its_reissue() -> None:
    state = world(holder("P1", cash=800, cards=(card(status=CardStatus.LOST),)))
    request = req(Recharge, card_uid=UID_A, amount_fen=5000, method="cash")
    assert posted(decide(request, state, NOW))["recharge"].cash_fen == 5000


def test_a_frozen_card_can_be_recharged_to_settle_its_debt() -> None:
    state = world(holder("P1", cash=-1200, cards=(card(status=CardStatus.FROZEN),)))
    request = req(Recharge, card_uid=UID_A, amount_fen=1200, method="cash")
    assert posted(decide(request, state, NOW))["recharge"].cash_fen == 1200


@pytest.mark.parametrize(
    ("status", "fields", "code"),
    [
        (CardStatus.REPLACED, {}, "card_not_active"),
        (CardStatus.CANCELLED, {}, "card_not_active"),
        (CardStatus.ACTIVE, {"amount_fen": 0}, "amount_invalid"),
        (CardStatus.ACTIVE, {"amount_fen": -5}, "amount_invalid"),
        (CardStatus.ACTIVE, {"amount_fen": 1_000_001}, "amount_invalid"),
        (CardStatus.ACTIVE, {"method": "online"}, "pay_ref_required"),
        (CardStatus.ACTIVE, {"pay_ref": "B-77"}, "pay_ref_used"),
    ],
)
def test_recharge_refusals(status: CardStatus, fields: dict[str, object], code: str) -> None:
    used = PaymentUse(pay_ref="B-77", person_id="P1", amount_fen=20000, entry_id="K-1", at=NOW)
    state = world(holder("P1", cards=(card(status=status),)), payments=(used,))
    request = req(Recharge, **{"card_uid": UID_A, "amount_fen": 500, "method": "cash", **fields})
    assert refused(decide(request, state, NOW)) == code


def test_the_recharge_cap_is_policy() -> None:
    state = world(holder("P1", cards=(card(),)), policy=Policy(recharge_cap_fen=10000))
    request = req(Recharge, card_uid=UID_A, amount_fen=10001, method="cash")
    assert refused(decide(request, state, NOW)) == "amount_invalid"


def test_recharge_of_an_unknown_card_is_refused() -> None:
    request = req(Recharge, card_uid=UID_A, amount_fen=100, method="cash")
    assert refused(decide(request, world(), NOW)) == "card_unknown"


# -- correction -----------------------------------------------------------------------------


def test_a_38_yuan_sale_corrected_to_3_80_returns_34_20_cash_first() -> None:
    """Thursday: ¥38 keyed instead of ¥3.80 (¥8 subsidy + ¥30 cash)."""
    state = world(holder("P1", cards=(card(),)), originals=(purchase(),))
    request = req(CorrectPurchase, original_id="SZ-1-7", corrected_amount_fen=380, reason="typo")
    result = decide(request, state, NOW)
    entry = posted(result)["correction"]
    assert entry.cash_fen + entry.subsidy_fen == 3420
    # Subsidy is spent first, so at ¥3.80 the sale would have taken no cash at all.
    assert (entry.cash_fen, entry.subsidy_fen) == (3000, 420)
    assert entry.ref == "SZ-1-7"
    audit = accepted(result).audit
    assert (audit.target, audit.operator, audit.note) == ("purchase:SZ-1-7", "op-zhang", "typo")
    assert audit.after["given_back_fen"] == 3420


def test_a_second_correction_accounts_for_the_first() -> None:
    first = Adjustment(ref="op:r-0", cash_fen=3000, subsidy_fen=420)
    original = replace(purchase(), adjustments=(first,))
    state = world(holder("P1"), originals=(original,))
    lower = req(CorrectPurchase, original_id="SZ-1-7", corrected_amount_fen=300, reason="again")
    entry = posted(decide(lower, state, NOW))["correction"]
    assert (entry.cash_fen, entry.subsidy_fen) == (0, 80)
    higher = req(CorrectPurchase, original_id="SZ-1-7", corrected_amount_fen=1000, reason="x")
    assert refused(decide(higher, state, NOW)) == "already_corrected"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"original_id": "SZ-1-8"}, "original_not_found"),
        ({"corrected_amount_fen": 3801}, "correction_exceeds_original"),
        ({"corrected_amount_fen": 3800}, "amount_invalid"),
        ({"corrected_amount_fen": -1}, "amount_invalid"),
        ({"reason": "  "}, "reason_required"),
    ],
)
def test_correction_refusals(fields: dict[str, object], code: str) -> None:
    state = world(holder("P1"), originals=(purchase(),))
    request = req(
        CorrectPurchase,
        **{"original_id": "SZ-1-7", "corrected_amount_fen": 380, "reason": "typo", **fields},
    )
    assert refused(decide(request, state, NOW)) == code


def test_a_declined_sale_cannot_be_corrected_or_refunded() -> None:
    declined = OriginalPurchase(
        record_id="SZ-1-9",
        person_id="P1",
        site="SZ-FUTIAN",
        at=NOW,
        approved=False,
        amount_fen=900,
        cash_fen=0,
        subsidy_fen=0,
    )
    state = world(holder("P1"), originals=(declined,))
    fix = req(CorrectPurchase, original_id="SZ-1-9", corrected_amount_fen=0, reason="x")
    back = req(RefundPurchase, original_id="SZ-1-9", amount_fen=900, reason="x")
    assert refused(decide(fix, state, NOW)) == "original_not_approved"
    assert refused(decide(back, state, NOW)) == "original_not_approved"


def test_the_credit_goes_to_who_was_charged_even_after_their_card_was_replaced() -> None:
    state = world(holder("P1", cards=(card(status=CardStatus.REPLACED),)), originals=(purchase(),))
    request = req(RefundPurchase, original_id="SZ-1-7", amount_fen=3800, reason="returned")
    entry = posted(decide(request, state, NOW))["refund"]
    assert (entry.person_id, entry.cash_fen, entry.subsidy_fen) == ("P1", 3000, 800)


# -- refund ---------------------------------------------------------------------------------


def test_a_refund_gives_back_part_of_what_the_purchase_still_costs() -> None:
    state = world(holder("P1"), originals=(purchase(),))
    entry = posted(
        decide(req(RefundPurchase, original_id="SZ-1-7", amount_fen=500, reason="r"), state, NOW)
    )["refund"]
    assert (entry.cash_fen, entry.subsidy_fen, entry.ref) == (500, 0, "SZ-1-7")


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"original_id": "nope"}, "original_not_found"),
        ({"amount_fen": 0}, "amount_invalid"),
        ({"amount_fen": 3801}, "refund_exceeds_original"),
        ({"reason": ""}, "reason_required"),
    ],
)
def test_refund_refusals(fields: dict[str, object], code: str) -> None:
    state = world(holder("P1"), originals=(purchase(),))
    request = req(
        RefundPurchase, **{"original_id": "SZ-1-7", "amount_fen": 100, "reason": "r", **fields}
    )
    assert refused(decide(request, state, NOW)) == code


def test_give_back_copes_with_site_corrections_that_credited_more_cash_than_was_spent() -> None:
    # A site Correction credits cash only; the cash part can be "over-returned".
    original = replace(purchase(), adjustments=(Adjustment(ref="SZ-1-8", cash_fen=3500),))
    back = give_back(original, original.remaining_fen)
    assert (back.cash_fen, back.subsidy_fen) == (0, 300)


# -- limits ---------------------------------------------------------------------------------


def test_limits_are_written_to_the_account_master_row_with_zero_purses() -> None:
    expiry = NOW + timedelta(days=3)
    account = Account(person_id="P1", subsidy_expires_at=expiry, txn_limit_fen=100)
    state = world(holder("P1", cash=900, account=account, cards=(card(),)))
    request = req(SetLimits, card_uid=UID_A, txn_limit_fen=2000, daily_limit_fen=5000)
    result = accepted(decide(request, state, NOW))
    (write,) = result.master
    assert isinstance(write, PutAccount)
    assert write.account == Account(
        person_id="P1", subsidy_expires_at=expiry, txn_limit_fen=2000, daily_limit_fen=5000
    )
    assert (result.audit.before["txn_limit_fen"], result.audit.after["txn_limit_fen"]) == (
        100,
        2000,
    )


@pytest.mark.parametrize(
    ("status", "txn", "daily", "code"),
    [
        (CardStatus.CANCELLED, 1, 2, "card_not_active"),
        (CardStatus.ACTIVE, -1, None, "amount_invalid"),
        (CardStatus.ACTIVE, 3000, 2000, "amount_invalid"),
    ],
)
def test_limits_refusals(status: CardStatus, txn: int | None, daily: int | None, code: str) -> None:
    state = world(holder("P1", cards=(card(status=status),)))
    request = req(SetLimits, card_uid=UID_A, txn_limit_fen=txn, daily_limit_fen=daily)
    assert refused(decide(request, state, NOW)) == code


# -- tickets --------------------------------------------------------------------------------


def sale(**fields: object) -> SellTicket:
    base: dict[str, object] = {
        "card_uid": UID_A,
        "ticket_id": "T-SWIM-1",
        "kind": "count",
        "service": "swim",
        "price_fen": 30000,
        "uses": 10,
    }
    return req(SellTicket, **(base | fields))


def test_a_count_ticket_is_sold_from_cash_and_written_for_the_person() -> None:
    result = decide(sale(), world(holder("P1", cash=30000, cards=(card(),))), NOW)
    entry = posted(result)["ticket_sale"]
    assert (entry.cash_fen, entry.ticket_id, entry.ticket_uses) == (-30000, "T-SWIM-1", 0)
    (write,) = accepted(result).master
    assert isinstance(write, PutTicket)
    assert (write.ticket.person_id, write.ticket.remaining) == ("P1", 10)


def test_a_period_ticket_carries_its_validity() -> None:
    end = NOW + timedelta(days=30)
    request = sale(kind="period", uses=None, valid_to=end, price_fen=0)
    result = accepted(decide(request, world(holder("P1", cards=(card(),))), NOW))
    assert result.postings == ()  # a free pass moves no money
    (write,) = result.master
    assert isinstance(write, PutTicket)
    assert (write.ticket.kind, write.ticket.valid_to, write.ticket.remaining) == (
        "period",
        end,
        None,
    )


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"price_fen": 30001}, "insufficient_balance"),
        ({"price_fen": -1}, "amount_invalid"),
        ({"uses": None}, "ticket_invalid"),
        ({"kind": "period"}, "ticket_invalid"),
        ({"kind": "period", "uses": None}, "ticket_invalid"),
        ({"kind": "period", "uses": None, "valid_to": NOW}, "ticket_invalid"),
        ({"ticket_id": "T-OLD"}, "ticket_exists"),
    ],
)
def test_ticket_refusals(fields: dict[str, object], code: str) -> None:
    old = Ticket(id="T-OLD", person_id="P2", kind="count", service="gym", remaining=1)
    state = world(holder("P1", cash=30000, cards=(card(),)), tickets=(old,))
    assert refused(decide(sale(**fields), state, NOW)) == code


def test_a_ticket_needs_an_active_card() -> None:
    state = world(holder("P1", cash=30000, cards=(card(status=CardStatus.LOST),)))
    assert refused(decide(sale(), state, NOW)) == "card_not_active"
