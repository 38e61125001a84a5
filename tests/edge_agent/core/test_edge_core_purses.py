"""Purse arithmetic: available balance and the subsidy-then-cash split."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from edge_agent.core.model import Account
from edge_agent.core.purses import Purses, available_purses, split_payment, subsidy_expired

NOW = datetime(2026, 3, 3, 4, 0, tzinfo=UTC)


def test_available_is_central_s_view_plus_pending_deltas() -> None:
    account = Account(person_id="P1", cash_fen=5000, subsidy_fen=3000, covers_seq=41)
    pending = Purses(cash_fen=-700, subsidy_fen=-3000)
    assert available_purses(account, pending, NOW) == Purses(cash_fen=4300, subsidy_fen=0)


def test_an_expired_subsidy_is_zero_from_its_expiry_instant() -> None:
    account = Account(person_id="P1", cash_fen=5000, subsidy_fen=3000, subsidy_expires_at=NOW)
    assert subsidy_expired(account, NOW)
    assert not subsidy_expired(account, NOW - timedelta(microseconds=1))
    assert available_purses(account, Purses(subsidy_fen=-100), NOW) == Purses(cash_fen=5000)


def test_no_account_means_only_what_the_edge_itself_credited() -> None:
    assert available_purses(None, Purses(), NOW) == Purses()
    assert available_purses(None, Purses(cash_fen=20_000), NOW).total_fen == 20_000


def test_split_takes_subsidy_first_then_cash() -> None:
    assert split_payment(300, Purses(cash_fen=1000, subsidy_fen=500)) == Purses(subsidy_fen=300)
    assert split_payment(800, Purses(cash_fen=1000, subsidy_fen=500)) == Purses(
        cash_fen=300, subsidy_fen=500
    )
    assert split_payment(1500, Purses(cash_fen=1000, subsidy_fen=500)) == Purses(
        cash_fen=1000, subsidy_fen=500
    )
    assert split_payment(1501, Purses(cash_fen=1000, subsidy_fen=500)) is None


def test_a_negative_purse_gives_nothing_and_counts_against_the_total() -> None:
    assert split_payment(100, Purses(cash_fen=1000, subsidy_fen=-50)) == Purses(cash_fen=100)
    assert split_payment(951, Purses(cash_fen=1000, subsidy_fen=-50)) is None


def test_purses_add_purse_wise() -> None:
    total = Purses(cash_fen=1, subsidy_fen=2).plus(Purses(cash_fen=10, subsidy_fen=-20))
    assert total == Purses(cash_fen=11, subsidy_fen=-18)
    assert total.total_fen == -7 and not total.is_zero and Purses().is_zero
