"""What every decision shares: the outcome shape, the card checks, the offline state.

Every terminal kind starts with the same card checks (:func:`card_refusal`), in this order:

1. unknown card → ``unknown_card`` (``blacklisted`` if the unknown UID is on the blacklist);
2. status other than active → ``lost`` / ``frozen`` / ``cancelled`` / ``replaced`` — the
   status is the more specific explanation, so it wins over the blacklist;
3. on the blacklist → ``blacklisted``. The blacklist is separate from the status: a delta
   can reach the site before the card row is updated, and either one refuses;
4. outside the card's validity ``[valid_from, valid_to)`` → ``not_yet_valid`` / ``expired``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from msgspec import Struct

from edge_agent.core.model import Card, CardStatus, OfflinePolicy, Person
from edge_agent.core.reasons import Display, Reason

_STATUS_REASON = {
    CardStatus.LOST: Reason.LOST,
    CardStatus.FROZEN: Reason.FROZEN,
    CardStatus.CANCELLED: Reason.CANCELLED,
    CardStatus.REPLACED: Reason.REPLACED,
}


class Outcome(Struct, frozen=True, kw_only=True):
    """The part every decision has: whether it went through, why, and the display text.

    ``ok`` is what the terminal acts on; ``reason`` goes into the record and the frame's
    ``code``; ``display_zh`` / ``display_en`` fit a terminal screen (see
    :func:`edge_agent.core.reasons.fits_display`).
    """

    ok: bool
    reason: Reason
    display_zh: str
    display_en: str

    @property
    def display(self) -> Display:
        """Both display texts as one value."""
        return Display(self.display_zh, self.display_en)


class CardFacts(Struct, frozen=True, kw_only=True):
    """The presented card as the store knows it: one indexed lookup of ``cards`` by UID
    (joined to its person, for names on displays) and one of the blacklist by UID.

    ``card`` is None when the UID is unknown; ``blacklisted`` is True when the UID is on the
    site's current blacklist (whatever the card row says).
    """

    uid: str
    card: Card | None = None
    person: Person | None = None
    blacklisted: bool = False


class OfflineState(Struct, frozen=True, kw_only=True):
    """The site is offline (central's state offline, or no ack/feed within the configured
    time): pass one of these; pass None while online.

    ``site_exposure_fen`` is the money spent at this site on approved offline sales since
    ``since``; ``card_today_fen`` is this card's approved offline spending on the current
    site-local day (see :func:`edge_agent.core.sitetime.local_day_bounds`).
    """

    since: datetime
    site_exposure_fen: int = 0
    card_today_fen: int = 0


def card_refusal(facts: CardFacts, now: datetime) -> Reason | None:
    """Why this card may not be used at ``now`` (in the order of the module docstring), or
    None if it may."""
    card = facts.card
    if card is None:
        return Reason.BLACKLISTED if facts.blacklisted else Reason.UNKNOWN_CARD
    if card.status != CardStatus.ACTIVE:  # `!=`: a row may hold the plain string
        # A status this code does not know still refuses (fail closed), it never crashes a tap.
        return _STATUS_REASON.get(card.status, Reason.NOT_ALLOWED)
    if facts.blacklisted:
        return Reason.BLACKLISTED
    if card.valid_from is not None and now < card.valid_from:
        return Reason.NOT_YET_VALID
    if card.valid_to is not None and now >= card.valid_to:
        return Reason.EXPIRED
    return None


def offline_too_long(offline: OfflineState | None, policy: OfflinePolicy, now: datetime) -> bool:
    """True if the site has been offline for more than ``max_offline_s``: money operations
    then fail closed (door and attendance go on)."""
    return offline is not None and now - offline.since > timedelta(seconds=policy.max_offline_s)
