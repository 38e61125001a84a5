"""Balance effects: the one place that turns a money decision into purse deltas.

The store appends the delta of every decided sale or recharge to its local-delta table
(with the record's outbox ``seq``), in the same transaction as the record; the available
balance is then central's view plus the deltas above ``covers_seq``
(:func:`edge_agent.core.purses.available_purses`). Ticket uses move no money; a count
ticket's consumed use is a separate effect (:func:`ticket_effect`), and the caller passes
tickets with ``remaining`` net of its pending uses.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_agent.core.purchase import PurchaseDecision
from edge_agent.core.purses import Purses
from edge_agent.core.recharge import RechargeDecision


def balance_effect(decision: PurchaseDecision | RechargeDecision) -> Purses:
    """The signed per-purse delta ``decision`` makes: an approved money sale takes its
    ``subsidy_fen`` and ``cash_fen`` (negative deltas); the commit that credits a recharge
    adds ``credit_fen`` to cash. Anything else — a refusal, a ticket use, a prepare, an
    abort, a repeated commit — is zero (check :attr:`Purses.is_zero` before appending)."""
    if isinstance(decision, PurchaseDecision):
        if not decision.ok:
            return Purses()
        return Purses(cash_fen=-decision.cash_fen, subsidy_fen=-decision.subsidy_fen)
    return Purses(cash_fen=decision.credit_fen)


def ticket_effect(decision: PurchaseDecision) -> tuple[str, int] | None:
    """``(ticket_id, uses)`` consumed by ``decision``: one use of a count ticket when approved
    with it; None otherwise (a period ticket is recorded as used but consumes nothing)."""
    if decision.ok and decision.ticket_id is not None and decision.ticket_kind == "count":
        return decision.ticket_id, 1
    return None


def sum_deltas(deltas: Iterable[Purses]) -> Purses:
    """The purse-wise sum of ``deltas`` (the pending total the caller passes as facts)."""
    total = Purses()
    for delta in deltas:
        total = total.plus(delta)
    return total
