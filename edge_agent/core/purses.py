"""Purse arithmetic: the available balance and how a sale is split across purses.

An account has two purses: **subsidy** (补贴: employer money, spent first, may expire) and
**cash** (personal, refundable). The edge's available balance is central's published view
plus the edge's own pending local deltas above ``Account.covers_seq`` (brief: Sync,
Balances). All amounts are integer fen.
"""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from edge_agent.core.model import Account


class Purses(Struct, frozen=True, kw_only=True):
    """Fen per purse. Used both for balances and for signed deltas (what the store appends
    to its local-delta table: negative = spent, positive = credited)."""

    cash_fen: int = 0
    subsidy_fen: int = 0

    @property
    def total_fen(self) -> int:
        """Cash plus subsidy."""
        return self.cash_fen + self.subsidy_fen

    @property
    def is_zero(self) -> bool:
        """True if neither purse changes (nothing to append)."""
        return self.cash_fen == 0 and self.subsidy_fen == 0

    def plus(self, other: Purses) -> Purses:
        """Purse-wise sum: a balance plus a delta, or two deltas."""
        return Purses(
            cash_fen=self.cash_fen + other.cash_fen,
            subsidy_fen=self.subsidy_fen + other.subsidy_fen,
        )


def subsidy_expired(account: Account, now: datetime) -> bool:
    """True if the account's subsidy has expired at ``now`` (``subsidy_expires_at`` is the
    first instant it is no longer usable)."""
    return account.subsidy_expires_at is not None and now >= account.subsidy_expires_at


def available_purses(account: Account | None, pending: Purses, now: datetime) -> Purses:
    """What the card can spend at ``now``: central's purses plus ``pending`` (the sum of the
    edge's own deltas with ``seq > account.covers_seq``, per purse).

    An expired subsidy counts as 0 — it can neither be spent nor shown as balance. No
    account means empty purses. A purse may be negative (a debt after two offline sites
    merged); it is shown as such, but never spent from (see :func:`split_payment`).
    """
    if account is None:
        return pending
    cash = account.cash_fen + pending.cash_fen
    subsidy = 0 if subsidy_expired(account, now) else account.subsidy_fen + pending.subsidy_fen
    return Purses(cash_fen=cash, subsidy_fen=subsidy)


def split_payment(amount_fen: int, available: Purses) -> Purses | None:
    """How ``amount_fen`` (> 0) is paid: subsidy first, then cash, each purse only down to 0.

    Returns the (positive) amount taken from each purse, summing to ``amount_fen``; None if
    the purses cannot cover it. A negative purse (a debt after a merge) contributes nothing
    and also counts against the total: a sale never takes the net balance below zero.
    """
    if amount_fen > available.total_fen:
        return None
    from_subsidy = min(amount_fen, max(0, available.subsidy_fen))
    from_cash = amount_fen - from_subsidy
    if from_cash > max(0, available.cash_fen):
        return None
    return Purses(cash_fen=from_cash, subsidy_fen=from_subsidy)
