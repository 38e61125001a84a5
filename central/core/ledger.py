"""What a site's record does to the money ledger: pure, no I/O.

Every balance at central is the sum of ledger entries (brief, invariant 5). A record from a
site becomes zero or more entries; nothing else changes a balance. Corrections are new
entries referencing the original record, never edits.
"""

from __future__ import annotations

from msgspec import Struct

from protocol.messages import (
    AnyRecord,
    Correction,
    Purchase,
    RechargeCommit,
    Refund,
    TicketUse,
)


class Entry(Struct, frozen=True, kw_only=True):
    """One ledger entry: signed fen per purse, and count-ticket uses."""

    person_id: str
    kind: str
    cash_fen: int = 0
    subsidy_fen: int = 0
    ticket_id: str | None = None
    ticket_uses: int = 0


def entries_for(record: AnyRecord, person_id: str | None) -> list[Entry]:
    """The ledger entries of ``record`` for the card's holder ``person_id``.

    A record that moves no money (a door, a punch, a declined sale, a recharge prepare or
    abort) gives none; so does a money record whose card central cannot place (that is an
    anomaly for the caller to raise, not a guess).
    """
    if person_id is None:
        return []
    if isinstance(record, Purchase):
        if not record.approved:
            return []
        return [
            Entry(
                person_id=person_id,
                kind="purchase",
                cash_fen=-record.cash_fen,
                subsidy_fen=-record.subsidy_fen,
            )
        ]
    if isinstance(record, TicketUse):
        if not record.approved:
            return []
        return [
            Entry(person_id=person_id, kind="ticket_use", ticket_id=record.ticket_id, ticket_uses=1)
        ]
    if isinstance(record, RechargeCommit):
        return [Entry(person_id=person_id, kind="recharge", cash_fen=record.amount)]
    if isinstance(record, Refund):
        return [Entry(person_id=person_id, kind="refund", cash_fen=record.amount)]
    if isinstance(record, Correction):
        return [Entry(person_id=person_id, kind="correction", cash_fen=record.delta)]
    return []


def moves_money(record: AnyRecord) -> bool:
    """Whether ``record`` may produce ledger entries (so its card must be placeable)."""
    return isinstance(record, Purchase | TicketUse | RechargeCommit | Refund | Correction)
