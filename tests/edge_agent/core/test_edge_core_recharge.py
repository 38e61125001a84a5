"""Two-phase recharge: prepare reserves nothing, commit credits exactly once per pay_ref,
abort is idempotent, and payments left prepared are listed for reconciliation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from msgspec import structs

from edge_agent.core.checks import CardFacts, OfflineState
from edge_agent.core.ledger import balance_effect
from edge_agent.core.model import Account, Card, CardStatus, OfflinePolicy, SitePolicy
from edge_agent.core.purses import Purses
from edge_agent.core.reasons import Reason
from edge_agent.core.recharge import (
    CommitFacts,
    PrepareFacts,
    Recharge,
    RechargeRequest,
    RechargeState,
    abort_recharge,
    commit_recharge,
    overdue_recharges,
    prepare_recharge,
)

NOW = datetime(2026, 3, 5, 2, 0, tzinfo=UTC)
POLICY = SitePolicy(site="SZ-FUTIAN", recharge_prepare_timeout_s=600)
ALLOWS_OFFLINE = SitePolicy(site="SZ-FUTIAN", offline=OfflinePolicy(allow_recharge=True))
CARD = CardFacts(uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1"))
REQUEST = RechargeRequest(
    pay_ref="BANK-20260305-0001", uid="04A1B2C3", amount_fen=20_000, method="bank"
)
ACCOUNT = Account(person_id="P1", cash_fen=8850)


def prepared(at: datetime = NOW) -> Recharge:
    decision = prepare_recharge(REQUEST, PrepareFacts(card=CARD), POLICY, at)
    assert decision.recharge is not None
    return decision.recharge


def committed() -> Recharge:
    decision = commit_recharge(
        REQUEST.pay_ref, CommitFacts(existing=prepared(), account=ACCOUNT), NOW
    )
    assert decision.recharge is not None
    return decision.recharge


# --- prepare ----------------------------------------------------------------------------------


def test_prepare_records_the_intent_and_credits_nothing() -> None:
    decision = prepare_recharge(REQUEST, PrepareFacts(card=CARD), POLICY, NOW)
    assert decision.ok and decision.reason is Reason.OK and decision.changed
    assert decision.credit_fen == 0 and balance_effect(decision).is_zero
    assert decision.recharge == Recharge(
        pay_ref="BANK-20260305-0001",
        uid="04A1B2C3",
        person_id="P1",
        amount_fen=20_000,
        method="bank",
        prepared_at=NOW,
    )
    assert decision.display_zh == "请付款¥200.00"


def test_the_same_prepare_again_is_answered_the_same_and_stores_nothing_new() -> None:
    existing = prepared()
    later = NOW + timedelta(seconds=5)
    decision = prepare_recharge(REQUEST, PrepareFacts(card=CARD, existing=existing), POLICY, later)
    assert decision.ok and decision.reason is Reason.OK and not decision.changed
    assert decision.recharge == existing


def test_a_pay_ref_reused_for_a_different_payment_is_refused() -> None:
    existing = prepared()
    for other in (
        structs.replace(REQUEST, amount_fen=30_000),
        structs.replace(REQUEST, uid="04FFFFFF"),
        structs.replace(REQUEST, method="cash"),
    ):
        decision = prepare_recharge(other, PrepareFacts(card=CARD, existing=existing), POLICY, NOW)
        assert not decision.ok and decision.reason is Reason.DUPLICATE_PAYMENT
        assert not decision.changed and decision.recharge == existing


@pytest.mark.parametrize(
    ("card", "reason"),
    [
        (CardFacts(uid="04A1B2C3"), Reason.UNKNOWN_CARD),
        (CardFacts(uid="04A1B2C3", card=CARD.card, blacklisted=True), Reason.BLACKLISTED),
        (
            CardFacts(
                uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1", status=CardStatus.LOST)
            ),
            Reason.LOST,
        ),
        (
            CardFacts(
                uid="04A1B2C3", card=Card(uid="04A1B2C3", person_id="P1", status=CardStatus.FROZEN)
            ),
            Reason.FROZEN,
        ),
    ],
)
def test_a_card_that_fails_its_checks_cannot_be_recharged(card: CardFacts, reason: Reason) -> None:
    decision = prepare_recharge(REQUEST, PrepareFacts(card=card), POLICY, NOW)
    assert not decision.ok and decision.reason is reason
    assert decision.recharge is None and not decision.changed


@pytest.mark.parametrize("amount", [0, -1, POLICY.recharge_cap_fen + 1])
def test_an_amount_not_positive_or_beyond_the_cap_is_invalid(amount: int) -> None:
    request = structs.replace(REQUEST, amount_fen=amount)
    decision = prepare_recharge(request, PrepareFacts(card=CARD), POLICY, NOW)
    assert decision.reason is Reason.AMOUNT_INVALID and decision.recharge is None


def test_offline_recharge_is_refused_unless_the_policy_allows_it() -> None:
    cut_off = PrepareFacts(card=CARD, offline=OfflineState(since=NOW - timedelta(minutes=5)))
    assert prepare_recharge(REQUEST, cut_off, POLICY, NOW).reason is Reason.RECHARGE_NOT_ALLOWED
    allowed = prepare_recharge(REQUEST, cut_off, ALLOWS_OFFLINE, NOW)
    assert allowed.ok and allowed.changed


def test_offline_too_long_recharge_is_refused_even_where_allowed() -> None:
    long_ago = PrepareFacts(card=CARD, offline=OfflineState(since=NOW - timedelta(days=2)))
    assert prepare_recharge(REQUEST, long_ago, ALLOWS_OFFLINE, NOW).reason is (
        Reason.OFFLINE_TOO_LONG
    )


# --- commit -----------------------------------------------------------------------------------


def test_commit_credits_the_cash_purse_and_shows_the_new_balance() -> None:
    facts = CommitFacts(existing=prepared(), account=ACCOUNT, pending=Purses(cash_fen=-850))
    decision = commit_recharge(REQUEST.pay_ref, facts, NOW)
    assert decision.ok and decision.reason is Reason.OK and decision.changed
    assert decision.credit_fen == 20_000
    assert balance_effect(decision) == Purses(cash_fen=20_000)
    assert decision.balance_after_fen == 28_000
    assert decision.recharge is not None
    assert decision.recharge.state is RechargeState.COMMITTED
    assert decision.recharge.finished_at == NOW
    assert decision.display_zh == "充值成功¥200.00\n余额¥280.00"


def test_commit_twice_credits_once_and_the_retry_sees_success() -> None:
    done = committed()
    later = NOW + timedelta(minutes=3)
    retry = commit_recharge(REQUEST.pay_ref, CommitFacts(existing=done, account=ACCOUNT), later)
    assert retry.ok and retry.reason is Reason.ALREADY_COMMITTED
    assert not retry.changed and retry.credit_fen == 0 and balance_effect(retry).is_zero
    assert retry.balance_after_fen == done.balance_after_fen == 28_850  # the original figures
    assert retry.recharge == done
    assert retry.display_zh == "充值已完成\n¥200.00"


def test_commit_needs_no_card_check_the_money_was_taken() -> None:
    # The card may have been reported lost since the prepare: the account is still credited.
    decision = commit_recharge(REQUEST.pay_ref, CommitFacts(existing=prepared()), NOW)
    assert decision.ok and decision.credit_fen == 20_000


def test_commit_of_an_unknown_pay_ref_is_refused() -> None:
    decision = commit_recharge("NEVER-SEEN", CommitFacts(), NOW)
    assert not decision.ok and decision.reason is Reason.UNKNOWN_PAYMENT
    assert decision.recharge is None and decision.credit_fen == 0


def test_commit_of_an_aborted_payment_is_refused() -> None:
    aborted = abort_recharge(REQUEST.pay_ref, prepared(), NOW, "customer cancelled").recharge
    decision = commit_recharge(REQUEST.pay_ref, CommitFacts(existing=aborted), NOW)
    assert not decision.ok and decision.reason is Reason.ALREADY_ABORTED
    assert decision.credit_fen == 0 and not decision.changed


# --- abort ------------------------------------------------------------------------------------


def test_abort_closes_a_prepared_payment_with_its_reason() -> None:
    decision = abort_recharge(REQUEST.pay_ref, prepared(), NOW, "bank declined")
    assert decision.ok and decision.reason is Reason.OK and decision.changed
    assert decision.recharge is not None
    assert decision.recharge.state is RechargeState.ABORTED
    assert decision.recharge.abort_reason == "bank declined"
    assert balance_effect(decision).is_zero
    assert decision.display_zh == "充值已取消"


def test_abort_twice_is_accepted_and_changes_nothing() -> None:
    aborted = abort_recharge(REQUEST.pay_ref, prepared(), NOW).recharge
    again = abort_recharge(REQUEST.pay_ref, aborted, NOW + timedelta(seconds=1))
    assert again.ok and again.reason is Reason.ALREADY_ABORTED and not again.changed
    assert again.recharge == aborted


def test_abort_of_a_pay_ref_never_seen_is_accepted() -> None:
    decision = abort_recharge("LOST-PREPARE", None, NOW)
    assert decision.ok and decision.recharge is None and not decision.changed


def test_abort_of_a_committed_payment_is_refused_and_the_credit_stands() -> None:
    done = committed()
    decision = abort_recharge(REQUEST.pay_ref, done, NOW)
    assert not decision.ok and decision.reason is Reason.ALREADY_COMMITTED
    assert decision.recharge == done and not decision.changed


def test_prepare_again_after_commit_sees_success_and_after_abort_is_refused() -> None:
    after_commit = prepare_recharge(
        REQUEST, PrepareFacts(card=CARD, existing=committed()), POLICY, NOW
    )
    assert after_commit.ok and after_commit.reason is Reason.ALREADY_COMMITTED
    assert balance_effect(after_commit).is_zero
    aborted = abort_recharge(REQUEST.pay_ref, prepared(), NOW).recharge
    after_abort = prepare_recharge(REQUEST, PrepareFacts(card=CARD, existing=aborted), POLICY, NOW)
    assert not after_abort.ok and after_abort.reason is Reason.ALREADY_ABORTED


# --- 单边账 -----------------------------------------------------------------------------------


def test_payments_prepared_longer_than_the_timeout_are_listed_oldest_first() -> None:
    old = structs.replace(prepared(NOW - timedelta(minutes=30)), pay_ref="OLD")
    edge = structs.replace(prepared(NOW - timedelta(seconds=600)), pay_ref="EDGE")
    fresh = structs.replace(prepared(NOW - timedelta(seconds=599)), pay_ref="FRESH")
    finished = structs.replace(old, pay_ref="DONE", state=RechargeState.COMMITTED)
    dropped = structs.replace(old, pay_ref="DROPPED", state=RechargeState.ABORTED)
    listed = overdue_recharges([fresh, edge, finished, old, dropped], POLICY, NOW)
    assert [r.pay_ref for r in listed] == ["OLD", "EDGE"]


def test_a_recharge_round_trips_through_msgspec_for_storage() -> None:
    done = committed()
    for codec in (msgspec.json, msgspec.msgpack):
        assert codec.decode(codec.encode(done), type=Recharge) == done
