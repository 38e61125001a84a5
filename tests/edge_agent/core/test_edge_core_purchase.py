"""Purchase decisions: tickets, purse order, limits on the site's day and meal periods,
offline caps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core.checks import CardFacts, OfflineState
from edge_agent.core.model import (
    Account,
    Card,
    CardStatus,
    Interval,
    MealPeriod,
    OfflinePolicy,
    SitePolicy,
    Ticket,
)
from edge_agent.core.purchase import (
    PurchaseDecision,
    PurchaseFacts,
    PurchaseRequest,
    choose_ticket,
    decide_purchase,
)
from edge_agent.core.purses import Purses, available_purses
from edge_agent.core.reasons import Reason
from edge_agent.core.sitetime import local_day_bounds, meal_period_bounds

SH = "Asia/Shanghai"
LUNCH = MealPeriod(
    name="午餐", window=Interval(11 * 60 + 30, 13 * 60 + 30), max_purchases=1, max_amount_fen=2000
)
POLICY = SitePolicy(
    site="SZ-FUTIAN",
    timezone=SH,
    meal_periods=[LUNCH],
    offline=OfflinePolicy(
        max_purchase_fen=5000,
        max_card_day_fen=8000,
        max_site_exposure_fen=100_000,
        max_offline_s=3600,
    ),
)


def local(text: str, zone: str = SH) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


AFTERNOON = local("2026-03-03T15:00")  # outside any meal period
NOON = local("2026-03-03T12:05")
CARD = Card(uid="04A1B2C3", person_id="P1")


def account(cash: int = 10_000, subsidy: int = 0, **more: Any) -> Account:
    return Account(person_id="P1", cash_fen=cash, subsidy_fen=subsidy, **more)


def facts(acct: Account | None = None, **more: Any) -> PurchaseFacts:
    return PurchaseFacts(
        card=CardFacts(uid="04A1B2C3", card=CARD),
        account=acct if acct is not None else account(),
        **more,
    )


def buy(
    amount: int,
    f: PurchaseFacts | None = None,
    now: datetime = AFTERNOON,
    service: str | None = None,
    policy: SitePolicy = POLICY,
) -> PurchaseDecision:
    return decide_purchase(
        PurchaseRequest(amount_fen=amount, service=service), f or facts(), policy, now
    )


def ticket(tid: str, kind: str = "count", **more: Any) -> Ticket:
    return Ticket(id=tid, person_id="P1", kind=kind, service="GYM", **more)  # type: ignore[arg-type]


# --- money: purse order -----------------------------------------------------------------------


def test_subsidy_is_spent_before_cash() -> None:
    decision = buy(1200, facts(account(cash=5000, subsidy=3000)))
    assert decision.ok and decision.reason is Reason.OK
    assert (decision.subsidy_fen, decision.cash_fen) == (1200, 0)
    assert decision.balance_after_fen == 6800
    assert decision.display_zh == "消费¥12.00\n余额¥68.00"


def test_a_sale_larger_than_the_subsidy_is_split_across_purses() -> None:
    decision = buy(1200, facts(account(cash=9650, subsidy=400)))
    assert (decision.subsidy_fen, decision.cash_fen) == (400, 800)
    assert decision.balance_after_fen == 8850
    assert decision.display_zh == "消费¥12.00\n余额¥88.50"


def test_an_expired_subsidy_is_skipped_and_not_shown() -> None:
    expired = account(cash=5000, subsidy=3000, subsidy_expires_at=AFTERNOON)
    decision = buy(1200, facts(expired))
    assert (decision.subsidy_fen, decision.cash_fen) == (0, 1200)
    assert decision.balance_after_fen == 3800


def test_a_subsidy_still_valid_until_a_later_instant_is_spent() -> None:
    later = account(cash=5000, subsidy=3000, subsidy_expires_at=AFTERNOON + timedelta(seconds=1))
    assert buy(1200, facts(later)).subsidy_fen == 1200


def test_the_edge_s_pending_deltas_count_towards_the_balance() -> None:
    pending = Purses(cash_fen=-4000, subsidy_fen=-2500)  # sold here, not yet covered by central
    decision = buy(1200, facts(account(cash=5000, subsidy=3000), pending=pending))
    assert (decision.subsidy_fen, decision.cash_fen) == (500, 700)
    assert decision.balance_after_fen == 300


def test_insufficient_funds_is_refused_with_the_balance_shown() -> None:
    decision = buy(1200, facts(account(cash=1000, subsidy=150)))
    assert not decision.ok and decision.reason is Reason.INSUFFICIENT_FUNDS
    assert (decision.subsidy_fen, decision.cash_fen) == (0, 0)
    assert decision.balance_after_fen == 1150
    assert decision.display_zh == "余额不足\n余额¥11.50"


def test_the_whole_balance_can_be_spent() -> None:
    decision = buy(1150, facts(account(cash=1000, subsidy=150)))
    assert decision.ok and decision.balance_after_fen == 0


def test_a_person_without_an_account_has_nothing_to_spend() -> None:
    no_account = PurchaseFacts(card=CardFacts(uid="04A1B2C3", card=CARD))
    decision = buy(100, no_account)
    assert decision.reason is Reason.INSUFFICIENT_FUNDS and decision.balance_after_fen == 0


def test_a_debt_in_one_purse_is_not_spent_past() -> None:
    # After two offline sites merged, cash is -¥5.00: the subsidy covers at most the net balance.
    debt = facts(account(cash=-500, subsidy=1000))
    assert buy(600, debt).reason is Reason.INSUFFICIENT_FUNDS
    ok = buy(500, debt)
    assert ok.ok and (ok.subsidy_fen, ok.cash_fen) == (500, 0) and ok.balance_after_fen == 0


# --- the card and the amount ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (CardStatus.LOST, Reason.LOST),
        (CardStatus.FROZEN, Reason.FROZEN),
        (CardStatus.CANCELLED, Reason.CANCELLED),
        (CardStatus.REPLACED, Reason.REPLACED),
    ],
)
def test_a_card_not_active_buys_nothing_and_its_balance_is_not_shown(
    status: CardStatus, reason: Reason
) -> None:
    lost = PurchaseFacts(
        card=CardFacts(uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1", status=status)),
        account=account(),
    )
    decision = buy(100, lost)
    assert not decision.ok and decision.reason is reason
    assert decision.balance_after_fen is None and decision.person_id == "P1"
    assert "¥" not in decision.display_zh


def test_a_blacklisted_or_unknown_card_buys_nothing() -> None:
    listed = PurchaseFacts(card=CardFacts(uid="04A1B2C3", card=CARD, blacklisted=True))
    assert buy(100, listed).reason is Reason.BLACKLISTED
    unknown = PurchaseFacts(card=CardFacts(uid="0499"))
    assert buy(100, unknown).reason is Reason.UNKNOWN_CARD


def test_an_expired_card_buys_nothing() -> None:
    old = PurchaseFacts(
        card=CardFacts(
            uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1", valid_to=AFTERNOON)
        )
    )
    assert buy(100, old).reason is Reason.EXPIRED


@pytest.mark.parametrize("amount", [0, -100, POLICY.purchase_cap_fen + 1])
def test_an_amount_that_is_not_positive_or_beyond_the_cap_is_invalid(amount: int) -> None:
    decision = buy(amount, facts(account(cash=10**9)))
    assert not decision.ok and decision.reason is Reason.AMOUNT_INVALID
    assert decision.display_zh == "金额无效\n上限¥10000.00"


def test_the_cap_itself_is_a_valid_amount() -> None:
    assert buy(POLICY.purchase_cap_fen, facts(account(cash=10**9))).ok


# --- limits -----------------------------------------------------------------------------------


def test_the_per_transaction_limit_allows_up_to_it_and_refuses_beyond() -> None:
    limited = facts(account(txn_limit_fen=3000))
    assert buy(3000, limited).ok
    decision = buy(3001, limited)
    assert decision.reason is Reason.TXN_LIMIT
    assert decision.display_zh == "超出单笔限额\n限额¥30.00"


def test_the_daily_limit_counts_what_was_spent_today() -> None:
    limited = account(daily_limit_fen=5000)
    assert buy(1000, facts(limited, spent_today_fen=4000)).ok
    decision = buy(1001, facts(limited, spent_today_fen=4000))
    assert decision.reason is Reason.DAILY_LIMIT
    assert decision.display_en == "Over daily limit\nLimit ¥50.00"


def spent_on_local_day(sales: list[tuple[datetime, int]], now: datetime, tz: str) -> int:
    """What the store's query does with local_day_bounds."""
    start, end = local_day_bounds(now, tz)
    return sum(amount for at, amount in sales if start <= at < end)


@pytest.mark.parametrize(
    ("zone", "before", "after"),
    [
        # the same UTC date (3 March), different Shanghai days
        ("Asia/Shanghai", "2026-03-03T23:59", "2026-03-04T00:01"),
        # the night the clocks go forward in Berlin
        ("Europe/Berlin", "2026-03-28T23:59", "2026-03-29T00:01"),
        # the night they go back
        ("Europe/Berlin", "2026-10-24T23:59", "2026-10-25T00:01"),
    ],
)
def test_the_daily_limit_starts_again_at_local_midnight(zone: str, before: str, after: str) -> None:
    policy = SitePolicy(site="X", timezone=zone)
    limited = account(daily_limit_fen=5000)
    first_at, second_at = local(before, zone), local(after, zone)
    first = buy(
        5000,
        facts(limited, spent_today_fen=spent_on_local_day([], first_at, zone)),
        first_at,
        policy=policy,
    )
    assert first.ok
    sales = [(first_at, 5000)]
    same_day = first_at + timedelta(seconds=30)
    refused = buy(
        100,
        facts(limited, spent_today_fen=spent_on_local_day(sales, same_day, zone)),
        same_day,
        policy=policy,
    )
    assert refused.reason is Reason.DAILY_LIMIT
    next_day = buy(
        5000,
        facts(limited, spent_today_fen=spent_on_local_day(sales, second_at, zone)),
        second_at,
        policy=policy,
    )
    assert next_day.ok


def test_the_daily_limit_day_is_local_even_across_utc_midnight() -> None:
    # 07:59 and 08:01 Shanghai are on different UTC dates but the same local day.
    limited = account(daily_limit_fen=5000)
    sales = [(local("2026-03-04T07:59"), 5000)]
    now = local("2026-03-04T08:01")
    refused = buy(100, facts(limited, spent_today_fen=spent_on_local_day(sales, now, SH)), now)
    assert refused.reason is Reason.DAILY_LIMIT


# --- meal periods -----------------------------------------------------------------------------


def test_a_second_meal_in_the_same_period_is_refused_with_a_clear_message() -> None:
    first = buy(1500, facts(), NOON)
    assert first.ok and first.meal_period == "午餐"
    second = buy(1500, facts(meal_purchases=1, meal_spent_fen=1500), NOON)
    assert not second.ok and second.reason is Reason.MEAL_LIMIT
    assert second.display_zh == "本餐次已达上限\n午餐限1次"
    assert second.display_en == "Meal limit reached\n午餐: max 1"


def test_the_meal_amount_limit_counts_what_was_spent_in_the_period() -> None:
    two_meals = SitePolicy(
        site="X", meal_periods=[MealPeriod(name="午餐", window=LUNCH.window, max_amount_fen=2000)]
    )
    assert buy(500, facts(meal_purchases=1, meal_spent_fen=1500), NOON, policy=two_meals).ok
    decision = buy(501, facts(meal_purchases=1, meal_spent_fen=1500), NOON, policy=two_meals)
    assert decision.reason is Reason.MEAL_LIMIT
    assert decision.display_zh == "本餐次已达上限\n午餐限额¥20.00"


def test_outside_meal_periods_there_is_no_meal_limit() -> None:
    decision = buy(1500, facts(meal_purchases=5, meal_spent_fen=9000), AFTERNOON)
    assert decision.ok and decision.meal_period is None


def test_the_meal_window_the_caller_counts_in_is_today_s_period() -> None:
    start, end = meal_period_bounds(NOON, LUNCH, SH)
    assert (start, end) == (local("2026-03-03T11:30"), local("2026-03-03T13:30"))


def test_a_ticket_meal_counts_as_a_meal() -> None:
    passes = (ticket("T-MONTH", "period"),)
    f = facts(tickets=passes, meal_purchases=1)
    assert buy(1500, f, NOON, service="GYM").reason is Reason.MEAL_LIMIT


# --- tickets ----------------------------------------------------------------------------------


def test_a_valid_period_ticket_pays_nothing_and_consumes_nothing() -> None:
    month = ticket(
        "T-MONTH",
        "period",
        valid_from=local("2026-03-01T00:00"),
        valid_to=local("2026-04-01T00:00"),
    )
    decision = buy(3000, facts(tickets=(month,)), service="GYM")
    assert decision.ok and decision.reason is Reason.OK
    assert (decision.ticket_id, decision.ticket_kind) == ("T-MONTH", "period")
    assert (decision.subsidy_fen, decision.cash_fen) == (0, 0)
    assert decision.ticket_remaining_after is None
    assert decision.balance_after_fen == 10_000
    assert decision.display_zh == "期限票有效\n至2026-03-31"


def test_a_count_ticket_with_uses_left_is_consumed_once() -> None:
    decision = buy(3000, facts(tickets=(ticket("T-10", remaining=4),)), service="GYM")
    assert decision.ok and (decision.ticket_id, decision.ticket_kind) == ("T-10", "count")
    assert decision.ticket_remaining_after == 3
    assert (decision.subsidy_fen, decision.cash_fen) == (0, 0)
    assert decision.display_zh == "次票消费\n剩余3次"


def test_a_period_ticket_is_used_before_a_count_ticket() -> None:
    tickets = (ticket("T-10", remaining=4), ticket("T-MONTH", "period"))
    assert buy(3000, facts(tickets=tickets), service="GYM").ticket_id == "T-MONTH"


def test_the_count_ticket_expiring_soonest_is_used_first() -> None:
    tickets = (
        ticket("T-OPEN", remaining=10),
        ticket("T-LATE", remaining=10, valid_to=AFTERNOON + timedelta(days=30)),
        ticket("T-SOON", remaining=10, valid_to=AFTERNOON + timedelta(days=2)),
    )
    assert buy(3000, facts(tickets=tickets), service="GYM").ticket_id == "T-SOON"


def test_a_used_up_ticket_falls_back_to_money() -> None:
    decision = buy(3000, facts(tickets=(ticket("T-10", remaining=0),)), service="GYM")
    assert decision.ok and decision.ticket_id is None and decision.cash_fen == 3000


def test_a_used_up_ticket_without_money_says_the_ticket_is_used_up() -> None:
    f = facts(account(cash=100), tickets=(ticket("T-10", remaining=0),))
    decision = buy(3000, f, service="GYM")
    assert not decision.ok and decision.reason is Reason.TICKET_USED_UP
    assert decision.display_zh == "次票已用完\n余额¥1.00"


def test_an_expired_ticket_without_money_says_the_ticket_expired() -> None:
    expired = ticket("T-MONTH", "period", valid_to=AFTERNOON)
    decision = buy(3000, facts(account(cash=100), tickets=(expired,)), service="GYM")
    assert decision.reason is Reason.TICKET_EXPIRED
    not_yet = ticket("T-10", remaining=5, valid_from=AFTERNOON + timedelta(days=1))
    assert buy(3000, facts(account(cash=100), tickets=(not_yet,)), service="GYM").reason is (
        Reason.TICKET_EXPIRED
    )


def test_a_ticket_refusal_yields_to_a_limit_refusal() -> None:
    f = facts(account(cash=100, txn_limit_fen=1000), tickets=(ticket("T-10", remaining=0),))
    assert buy(3000, f, service="GYM").reason is Reason.TXN_LIMIT


def test_tickets_for_another_service_or_person_or_a_till_without_service_are_ignored() -> None:
    other_service = Ticket(id="T-SWIM", person_id="P1", kind="period", service="SWIM")
    other_person = Ticket(id="T-P2", person_id="P2", kind="period", service="GYM")
    f = facts(tickets=(other_service, other_person))
    assert buy(3000, f, service="GYM").ticket_id is None
    assert buy(3000, facts(tickets=(ticket("T-MONTH", "period"),))).ticket_id is None


def test_choose_ticket_reports_why_no_ticket_is_usable() -> None:
    used_up = ticket("T-10", remaining=0)
    expired = ticket("T-OLD", remaining=5, valid_to=AFTERNOON)
    assert (
        choose_ticket([used_up, expired], "P1", "GYM", AFTERNOON).unusable is Reason.TICKET_USED_UP
    )
    assert choose_ticket([expired], "P1", "GYM", AFTERNOON).unusable is Reason.TICKET_EXPIRED
    assert choose_ticket([], "P1", "GYM", AFTERNOON).unusable is None
    assert choose_ticket([ticket("T-X", remaining=None)], "P1", "GYM", AFTERNOON).unusable is (
        Reason.TICKET_USED_UP
    )


# --- offline ----------------------------------------------------------------------------------

GONE_AT = AFTERNOON - timedelta(minutes=10)


def offline(exposure: int = 0, card_today: int = 0, since: datetime = GONE_AT) -> OfflineState:
    return OfflineState(since=since, site_exposure_fen=exposure, card_today_fen=card_today)


def test_offline_a_sale_within_every_cap_is_approved_and_marked_offline() -> None:
    decision = buy(5000, facts(offline=offline(exposure=95_000, card_today=3000)))
    assert decision.ok and decision.offline


def test_offline_the_per_purchase_cap_applies() -> None:
    decision = buy(5001, facts(offline=offline()))
    assert decision.reason is Reason.OFFLINE_LIMIT
    assert decision.display_zh == "超出离线限额\n限额¥50.00"


def test_offline_the_per_card_per_day_cap_applies() -> None:
    assert buy(2000, facts(offline=offline(card_today=6000))).ok
    decision = buy(2001, facts(offline=offline(card_today=6000)))
    assert decision.reason is Reason.OFFLINE_LIMIT
    assert decision.display_zh == "超出离线限额\n限额¥80.00"


def test_offline_the_site_exposure_cap_applies_without_showing_the_site_figure() -> None:
    assert buy(1000, facts(offline=offline(exposure=99_000))).ok
    decision = buy(1001, facts(offline=offline(exposure=99_000)))
    assert decision.reason is Reason.OFFLINE_LIMIT
    assert decision.display_zh == "超出离线限额"


def test_online_the_offline_caps_do_not_apply() -> None:
    decision = buy(9000, facts())
    assert decision.ok and not decision.offline


def test_offline_too_long_money_is_refused_fail_closed() -> None:
    edge = AFTERNOON - timedelta(seconds=3600)
    assert buy(100, facts(offline=offline(since=edge))).ok
    decision = buy(100, facts(offline=offline(since=edge - timedelta(seconds=1))))
    assert not decision.ok and decision.reason is Reason.OFFLINE_TOO_LONG


def test_offline_too_long_a_count_ticket_is_refused_but_a_period_ticket_goes_on() -> None:
    long_ago = offline(since=AFTERNOON - timedelta(days=2))
    count = facts(tickets=(ticket("T-10", remaining=3),), offline=long_ago)
    assert buy(3000, count, service="GYM").reason is Reason.OFFLINE_TOO_LONG
    period = facts(tickets=(ticket("T-MONTH", "period"),), offline=long_ago)
    decision = buy(3000, period, service="GYM")
    assert decision.ok and decision.ticket_id == "T-MONTH" and decision.offline


def test_ticket_uses_are_not_offline_money() -> None:
    # a ¥300 session on a count ticket is fine offline although it is over the ¥50 sale cap
    f = facts(tickets=(ticket("T-10", remaining=3),), offline=offline())
    assert buy(30_000, f, service="GYM").ok


# --- properties -------------------------------------------------------------------------------

fen = st.integers(min_value=-5000, max_value=50_000)


@given(
    cash=fen,
    subsidy=fen,
    pending_cash=st.integers(min_value=-5000, max_value=5000),
    pending_subsidy=st.integers(min_value=-5000, max_value=5000),
    subsidy_expired=st.booleans(),
    amount=st.integers(min_value=-10, max_value=60_000),
)
def test_property_an_approved_sale_never_takes_more_than_is_available(
    *,
    cash: int,
    subsidy: int,
    pending_cash: int,
    pending_subsidy: int,
    subsidy_expired: bool,
    amount: int,
) -> None:
    expiry = AFTERNOON - timedelta(days=1) if subsidy_expired else None
    acct = account(cash=cash, subsidy=subsidy, subsidy_expires_at=expiry)
    pending = Purses(cash_fen=pending_cash, subsidy_fen=pending_subsidy)
    decision = buy(amount, facts(acct, pending=pending))
    available = available_purses(acct, pending, AFTERNOON)
    if decision.ok:
        assert decision.subsidy_fen + decision.cash_fen == amount
        assert 0 <= decision.subsidy_fen <= max(0, available.subsidy_fen)
        assert 0 <= decision.cash_fen <= max(0, available.cash_fen)
        assert amount <= available.total_fen
        assert decision.balance_after_fen == available.total_fen - amount
        if subsidy_expired:
            assert decision.subsidy_fen == 0
    else:
        assert decision.subsidy_fen == decision.cash_fen == 0
        assert decision.balance_after_fen == available.total_fen
