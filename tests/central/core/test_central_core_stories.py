"""Wednesday and Thursday of SCENARIOS.md, played through the in-memory books."""

from __future__ import annotations

from datetime import timedelta

from central_core_support import NOW, UID_A, UID_B, Books, accepted, req

from central.core.cards import IssueCard, Reissue, ReportLost
from central.core.effects import Rejected
from central.core.money import CorrectPurchase, Recharge
from central.core.state import Balance
from central.core.subsidy import GrantSubsidy
from central.core.tickets import SellTicket
from edge_agent.core.model import CardStatus, Person
from protocol.messages import Purchase


def member() -> Books:
    books = Books(persons={"P1": Person(id="P1", name="王芳")})
    accepted(books.execute(req(IssueCard, "i-1", card_uid=UID_A, person_id="P1"), NOW))
    recharge = req(Recharge, "c-1", card_uid=UID_A, amount_fen=50000, method="cash")
    accepted(books.execute(recharge, NOW))
    grant = req(GrantSubsidy, "s-1", person_ids=("P1",), amount_fen=800)
    accepted(books.execute(grant, NOW))
    ticket = req(
        SellTicket,
        "t-1",
        card_uid=UID_A,
        ticket_id="T-SWIM",
        kind="count",
        service="swim",
        price_fen=20000,
        uses=10,
    )
    accepted(books.execute(ticket, NOW))
    return books


def test_wednesday_a_lost_card_is_reissued_with_the_whole_balance_and_tickets() -> None:
    books = member()
    held = books.running["P1"]
    assert held == Balance(cash_fen=30000, subsidy_fen=800, deposit_fen=2000)
    lost_at = NOW + timedelta(minutes=1)
    accepted(books.execute(req(ReportLost, "l-1", card_uid=UID_A), lost_at))
    assert books.blacklist[UID_A].effective_at == lost_at
    desk = NOW + timedelta(minutes=20)
    reissue = books.execute(req(Reissue, "x-1", card_uid=UID_A, new_card_uid=UID_B), desk)
    accepted(reissue)
    # The new card opens the same account: same purses, same tickets, nothing posted.
    assert books.running["P1"] == held
    assert books.holder("P1").tickets == (books.tickets["T-SWIM"],)
    assert books.cards[UID_B].person_id == "P1" and books.cards[UID_B].status is CardStatus.ACTIVE
    # The old card stays dead everywhere, listed from when it was lost.
    assert books.cards[UID_A].status is CardStatus.REPLACED
    assert (books.blacklist[UID_A].reason, books.blacklist[UID_A].effective_at) == (
        "replaced",
        lost_at,
    )
    # The clerk's double click changes nothing.
    assert books.execute(req(Reissue, "x-1", card_uid=UID_A, new_card_uid=UID_B), desk) == reissue
    assert books.running["P1"] == held


def test_thursday_a_bank_recharge_is_credited_once_whoever_reports_it() -> None:
    books = member()
    finance = req(
        Recharge, "stmt-7", card_uid=UID_A, amount_fen=20000, method="bank", pay_ref="BK-0042"
    )
    accepted(books.execute(finance, NOW))
    kiosk_retry = req(
        Recharge, "kiosk-9", card_uid=UID_A, amount_fen=20000, method="bank", pay_ref="BK-0042"
    )
    again = books.execute(kiosk_retry, NOW)
    assert isinstance(again, Rejected) and again.reason_code == "pay_ref_used"
    assert books.running["P1"].cash_fen == 50000


def test_thursday_a_38_yuan_slip_is_corrected_and_the_member_gets_34_20_back() -> None:
    books = member()
    sale = Purchase(
        id="SZ-FUTIAN:1:99",
        seq=99,
        site="SZ-FUTIAN",
        at=NOW,
        received_at=NOW,
        offline=False,
        card_uid=UID_A,
        approved=True,
        reason="ok",
        amount=3800,
        subsidy_fen=800,
        cash_fen=3000,
    )
    books.record_purchase(sale)
    before = books.running["P1"]
    fix = req(
        CorrectPurchase,
        "fix-1",
        original_id=sale.id,
        corrected_amount_fen=380,
        reason="keyed ¥38 for ¥3.80",
    )
    accepted(books.execute(fix, NOW))
    after = books.running["P1"]
    assert (after.cash_fen + after.subsidy_fen) - (before.cash_fen + before.subsidy_fen) == 3420
    assert (
        books.audit[-1].operator == "op-zhang" and books.audit[-1].target == f"purchase:{sale.id}"
    )
    # A second supervisor repeating the fix is told it is done, not paid twice.
    repeat = req(
        CorrectPurchase, "fix-2", original_id=sale.id, corrected_amount_fen=380, reason="again"
    )
    result = books.execute(repeat, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "already_corrected"
    assert books.running["P1"] == after
