"""Reason codes and display texts: every code is wire-safe, every text fits a terminal."""

from __future__ import annotations

from typing import get_args

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core.reasons import (
    CODE_PATTERN,
    MAX_DISPLAY_CHARS,
    REASON_TEXT,
    Context,
    Reason,
    fits_display,
    render,
    yuan,
)

REQUIRED = (
    "ok",
    "unknown_card",
    "blacklisted",
    "lost",
    "frozen",
    "cancelled",
    "replaced",
    "not_yet_valid",
    "expired",
    "no_access",
    "outside_time_zone",
    "anti_passback",
    "duplicate_punch",
    "insufficient_funds",
    "txn_limit",
    "daily_limit",
    "meal_limit",
    "offline_limit",
    "offline_too_long",
    "ticket_used_up",
    "ticket_expired",
    "recharge_not_allowed",
    "unknown_payment",
    "duplicate_payment",
    "already_committed",
    "already_aborted",
    "amount_invalid",
    "not_allowed",
)

CONTEXTS: list[Context | None] = [None, *get_args(Context)]


def test_every_required_code_exists() -> None:
    assert {r.value for r in Reason} >= set(REQUIRED)


def test_every_code_is_a_protocol_code() -> None:
    for reason in Reason:
        assert CODE_PATTERN.match(reason.value), reason


def test_every_reason_has_a_bare_text_that_fits_in_both_languages() -> None:
    assert set(REASON_TEXT) == set(Reason)
    for reason, text in REASON_TEXT.items():
        assert text.zh and text.en, reason
        assert fits_display(text.zh) and fits_display(text.en), reason


def test_every_reason_renders_on_every_screen_without_parameters() -> None:
    for reason in Reason:
        for context in CONTEXTS:
            display = render(reason, context)
            assert fits_display(display.zh) and fits_display(display.en)
            assert "{" not in display.zh + display.en


def test_yuan_shows_fen_as_yuan_with_two_decimals() -> None:
    assert yuan(1234) == "¥12.34"
    assert yuan(5) == "¥0.05"
    assert yuan(0) == "¥0.00"
    assert yuan(-1205) == "-¥12.05"


def test_a_sale_shows_amount_and_balance_after() -> None:
    display = render(Reason.OK, "sale", amount_fen=1200, balance_fen=8850)
    assert display.zh == "消费¥12.00\n余额¥88.50"
    assert display.en == "Paid ¥12.00\nBalance ¥88.50"


def test_the_same_code_reads_differently_per_screen() -> None:
    assert render(Reason.OK, "door").zh == "请通行"
    assert render(Reason.OK, "abort").zh == "充值已取消"
    assert render(Reason.EXPIRED).zh == "卡已过期"
    assert render(Reason.EXPIRED, "access").zh == "通行权限已过期"


def test_insufficient_funds_shows_the_balance_when_known() -> None:
    assert render(Reason.INSUFFICIENT_FUNDS, balance_fen=350).zh == "余额不足\n余额¥3.50"
    assert render(Reason.INSUFFICIENT_FUNDS).zh == "余额不足"


def test_a_meal_limit_says_which_meal_and_what_limit() -> None:
    by_count = render(Reason.MEAL_LIMIT, meal="午餐", count=1)
    assert by_count.zh == "本餐次已达上限\n午餐限1次"
    assert by_count.en == "Meal limit reached\n午餐: max 1"
    by_amount = render(Reason.MEAL_LIMIT, meal="午餐", limit_fen=1500)
    assert by_amount.zh == "本餐次已达上限\n午餐限额¥15.00"


def test_a_too_long_text_falls_back_to_a_shorter_template() -> None:
    huge = render(Reason.OK, "commit", amount_fen=10**9, balance_fen=10**9)
    assert fits_display(huge.en)
    assert huge.en == "Credited\nBalance ¥10000000.00"
    long_meal = render(Reason.MEAL_LIMIT, meal="员工食堂二楼自助午餐时段（仅限工作日）", count=2)
    assert long_meal.zh == "本餐次已达上限\n限2次"


def test_names_are_cut_and_cannot_add_lines() -> None:
    display = render(Reason.OK, "punch", name="欧阳\n娜娜娜娜娜娜娜娜", clock="08:59")
    assert display.zh == "打卡成功\n欧阳 娜娜娜娜娜 08:59"


def test_fits_display_counts_lines_width_and_length() -> None:
    assert fits_display("a" * 20 + "\n" + "b" * 19)
    assert not fits_display("a" * 21)
    assert not fits_display("a\nb\nc")
    assert len("a" * 20 + "\n" + "b" * 20) > MAX_DISPLAY_CHARS
    assert not fits_display("a" * 20 + "\n" + "b" * 20)


fen = st.integers(min_value=-1_000_000_000, max_value=1_000_000_000)


@given(
    reason=st.sampled_from(list(Reason)),
    context=st.sampled_from(CONTEXTS),
    amount=st.none() | fen,
    balance=st.none() | fen,
    limit=st.none() | fen,
    count=st.none() | st.integers(min_value=0, max_value=2**31),
    remaining=st.none() | st.integers(min_value=-1, max_value=2**31),
    meal=st.none() | st.text(max_size=40),
    name=st.none() | st.text(max_size=40),
    until=st.none() | st.text(max_size=12),
)
def test_property_every_rendered_display_fits(
    *,
    reason: Reason,
    context: Context | None,
    amount: int | None,
    balance: int | None,
    limit: int | None,
    count: int | None,
    remaining: int | None,
    meal: str | None,
    name: str | None,
    until: str | None,
) -> None:
    display = render(
        reason,
        context,
        amount_fen=amount,
        balance_fen=balance,
        limit_fen=limit,
        count=count,
        remaining=remaining,
        meal=meal,
        clock="23:59",
        name=name,
        until=until,
    )
    assert fits_display(display.zh), display.zh
    assert fits_display(display.en), display.en
