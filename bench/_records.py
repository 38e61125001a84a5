"""The valid records the sync benchmarks send (``sync_drain``, ``central_scale``'s sites):
approved canteen sales in lane 0 and door passes in lane 1, as an edge writes them."""

from __future__ import annotations

from typing import Any

from protocol.messages import DoorAccess, Purchase

#: Share of a backlog that is money (lane 0); the rest is door access (lane 1).
PURCHASE_SHARE = 0.4
AMOUNTS_FEN = (350, 800, 1200, 1550, 2600)


def sale(rid: str, seq: int, amount: int, common: dict[str, Any]) -> Purchase:
    """An approved lunch at POS-01, all cash; ``common``: site, term_rec, times, card."""
    return Purchase(
        id=rid,
        seq=seq,
        terminal="POS-01",
        approved=True,
        reason="ok",
        amount=amount,
        cash_fen=amount,
        meal_period="lunch",
        **common,
    )


def door_pass(rid: str, seq: int, common: dict[str, Any]) -> DoorAccess:
    """A granted entry at DOOR-01's door D1."""
    return DoorAccess(
        id=rid,
        seq=seq,
        terminal="DOOR-01",
        door="D1",
        direction="in",
        granted=True,
        reason="ok",
        blacklist_version=0,
        **common,
    )
