"""Attendance decisions: take the punch of a valid card.

A valid card's punch is always accepted — online or offline, at any hour (shifts, overtime
and night work are HR's to judge later, not the clock's). After the card checks of
:mod:`edge_agent.core.checks`, the only question is whether it repeats the card's last
punch:

A punch within ``SitePolicy.punch_dedupe_s`` of the holder's last *counted* punch is a
**duplicate**: accepted (``ok=True``, so the terminal beeps and shows "已打卡 08:59" with the
time of the punch that counts) but flagged ``duplicate`` with reason ``duplicate_punch``,
so HQ's attendance ignores it. Like a real clock it is never refused: a refusal would send
the person looking for help over a punch that is already on record. The window is measured
from the last counted punch, not the last duplicate, so tapping every few seconds cannot
keep a card "already punched" for ever. A punch with an explicit direction (``in`` / ``out``)
different from the last one's is a correction, not a duplicate.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from msgspec import Struct

from edge_agent.core.checks import CardFacts, Outcome, card_refusal
from edge_agent.core.model import SitePolicy
from edge_agent.core.reasons import Reason, render
from edge_agent.core.sitetime import local_clock, require_aware

Punch = Literal["in", "out"]


class PunchFacts(Struct, frozen=True, kw_only=True):
    """The card, and its holder's last counted (accepted, not duplicate) punch at this
    site: when, and with which key (None: unknown, or the clock has no in/out keys)."""

    card: CardFacts
    last_punch_at: datetime | None = None
    last_punch: Punch | None = None


class PunchDecision(Outcome, frozen=True, kw_only=True):
    """An attendance decision; ``duplicate`` punches are accepted but not counted."""

    person_id: str | None = None
    duplicate: bool = False


def is_duplicate_punch(
    facts: PunchFacts, punch: Punch | None, policy: SitePolicy, now: datetime
) -> bool:
    """True if a punch at ``now`` repeats the last counted one (see the module docstring).

    The window is symmetric, so a clock that stepped back a little does not count a repeat.
    """
    last = facts.last_punch_at
    if last is None:
        return False
    if punch is not None and facts.last_punch is not None and punch != facts.last_punch:
        return False
    return abs(now - last) < timedelta(seconds=policy.punch_dedupe_s)


def decide_punch(
    facts: PunchFacts, policy: SitePolicy, now: datetime, punch: Punch | None = None
) -> PunchDecision:
    """Decide a card presented at an attendance clock at ``now`` (timezone-aware), with the
    terminal's in/out key ``punch`` if it has one. Pure; rules in the module docstring."""
    require_aware(now)
    card = facts.card.card
    person_id = card.person_id if card is not None else None
    refusal = card_refusal(facts.card, now)
    if refusal is not None:
        display = render(refusal)
        return PunchDecision(
            ok=False,
            reason=refusal,
            display_zh=display.zh,
            display_en=display.en,
            person_id=person_id,
        )
    duplicate = is_duplicate_punch(facts, punch, policy, now)
    name = facts.card.person.name if facts.card.person is not None else None
    if duplicate and facts.last_punch_at is not None:
        display = render(
            Reason.DUPLICATE_PUNCH, clock=local_clock(facts.last_punch_at, policy.timezone)
        )
    else:
        display = render(Reason.OK, "punch", name=name, clock=local_clock(now, policy.timezone))
    return PunchDecision(
        ok=True,
        reason=Reason.DUPLICATE_PUNCH if duplicate else Reason.OK,
        display_zh=display.zh,
        display_en=display.en,
        person_id=person_id,
        duplicate=duplicate,
    )
