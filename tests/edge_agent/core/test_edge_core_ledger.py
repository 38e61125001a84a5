"""Balance effects: the deltas the store appends, and that no sequence of decided sales and
recharges ever drives a purse below zero."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from msgspec import structs

from edge_agent.core.checks import CardFacts
from edge_agent.core.ledger import balance_effect, sum_deltas, ticket_effect
from edge_agent.core.model import Account, Card, SitePolicy
from edge_agent.core.purchase import (
    PurchaseDecision,
    PurchaseFacts,
    PurchaseRequest,
    decide_purchase,
)
from edge_agent.core.purses import Purses
from edge_agent.core.reasons import Reason
from edge_agent.core.recharge import (
    CommitFacts,
    PrepareFacts,
    RechargeRequest,
    commit_recharge,
    prepare_recharge,
)

START = datetime(2026, 3, 3, 2, 0, tzinfo=UTC)
POLICY = SitePolicy(site="SZ-FUTIAN")
CARD = CardFacts(uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1"))


def sale(ok: bool, subsidy: int, cash: int) -> PurchaseDecision:
    return PurchaseDecision(
        ok=ok,
        reason=Reason.OK if ok else Reason.INSUFFICIENT_FUNDS,
        display_zh="",
        display_en="",
        amount_fen=subsidy + cash,
        subsidy_fen=subsidy if ok else 0,
        cash_fen=cash if ok else 0,
    )


def test_an_approved_sale_takes_from_each_purse() -> None:
    assert balance_effect(sale(True, 400, 800)) == Purses(cash_fen=-800, subsidy_fen=-400)


def test_a_declined_sale_or_a_ticket_use_moves_no_money() -> None:
    assert balance_effect(sale(False, 400, 800)).is_zero
    assert balance_effect(sale(True, 0, 0)).is_zero


def test_only_an_approved_count_ticket_use_consumes_a_use() -> None:
    count = structs.replace(sale(True, 0, 0), ticket_id="T-10", ticket_kind="count")
    assert ticket_effect(count) == ("T-10", 1)
    assert ticket_effect(structs.replace(count, ticket_kind="period")) is None
    assert ticket_effect(structs.replace(count, ok=False, reason=Reason.MEAL_LIMIT)) is None
    assert ticket_effect(sale(True, 400, 800)) is None


def test_pending_deltas_sum_per_purse() -> None:
    deltas = [Purses(cash_fen=-800, subsidy_fen=-400), Purses(cash_fen=20_000)]
    assert sum_deltas(deltas) == Purses(cash_fen=19_200, subsidy_fen=-400)
    assert sum_deltas([]) == Purses()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("buy"), st.integers(min_value=-100, max_value=30_000)),
        st.tuples(st.just("recharge"), st.integers(min_value=-100, max_value=30_000)),
        st.tuples(st.just("sync"), st.just(0)),
        st.tuples(st.just("wait_hours"), st.integers(min_value=1, max_value=48)),
    ),
    max_size=40,
)


@given(
    cash=st.integers(min_value=0, max_value=20_000),
    subsidy=st.integers(min_value=0, max_value=20_000),
    subsidy_lasts_h=st.none() | st.integers(min_value=0, max_value=100),
    ops=operations,
)
def test_property_no_sequence_of_decisions_makes_a_purse_negative(
    cash: int, subsidy: int, subsidy_lasts_h: int | None, ops: list[tuple[str, int]]
) -> None:
    expiry = None if subsidy_lasts_h is None else START + timedelta(hours=subsidy_lasts_h)
    account = Account(person_id="P1", cash_fen=cash, subsidy_fen=subsidy, subsidy_expires_at=expiry)
    pending = Purses()
    now = START
    credited = spent = 0
    for n, (op, value) in enumerate(ops):
        now += timedelta(minutes=1)
        if op == "buy":
            facts = PurchaseFacts(card=CARD, account=account, pending=pending)
            decision = decide_purchase(PurchaseRequest(amount_fen=value), facts, POLICY, now)
            spent += decision.subsidy_fen + decision.cash_fen
            pending = pending.plus(balance_effect(decision))
        elif op == "recharge":
            request = RechargeRequest(
                pay_ref=f"REF-{n}", uid="04A1B2C3", amount_fen=value, method="cash"
            )
            prepared = prepare_recharge(request, PrepareFacts(card=CARD), POLICY, now)
            pending = pending.plus(balance_effect(prepared))
            if prepared.recharge is None:
                continue
            facts_c = CommitFacts(existing=prepared.recharge, account=account, pending=pending)
            committed = commit_recharge(request.pay_ref, facts_c, now)
            pending = pending.plus(balance_effect(committed))
            # the kiosk retries its commit: nothing more is credited
            retry = commit_recharge(
                request.pay_ref, structs.replace(facts_c, existing=committed.recharge), now
            )
            assert retry.ok and balance_effect(retry).is_zero
            credited += committed.credit_fen
        elif op == "sync":
            # central applied our records and published a balance covering them
            account = structs.replace(
                account,
                cash_fen=account.cash_fen + pending.cash_fen,
                subsidy_fen=account.subsidy_fen + pending.subsidy_fen,
            )
            pending = Purses()
        else:
            now += timedelta(hours=value)
        assert account.cash_fen + pending.cash_fen >= 0
        assert account.subsidy_fen + pending.subsidy_fen >= 0
    total = account.cash_fen + account.subsidy_fen + pending.total_fen
    assert total == cash + subsidy + credited - spent  # the ledger adds up
