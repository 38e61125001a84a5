"""Door decisions: may this card open this door now?

In order:

1. the card checks of :mod:`edge_agent.core.checks`;
2. the person's rights for the door's group (grant → access level → time zone):
   none at all → ``no_access``; none within both the grant's and the level's validity →
   ``expired`` (if any has ended) else ``not_yet_valid``, shown as the *access* having
   expired rather than the card; none whose time zone is open now → ``outside_time_zone``.
   Time zones are evaluated on the site's wall clock (``SitePolicy.timezone``); on a holiday
   (a site-local date in ``holidays``) the zone's ``holiday`` intervals replace the
   weekday's. A right whose time zone is missing from the store never opens (fail secure);
3. anti-passback per door group, for a door whose reader faces ``in`` when the person's
   last passage in the group was also ``in``: ``hard`` refuses (``anti_passback``), ``soft``
   opens and flags ``apb_violation``, ``none`` ignores it. A second ``out`` is never refused:
   nobody is kept inside by a missed entry read.

Granted → ``open_ms`` of the door. The caller records every decision (granted or not) and
keeps the group's last passage direction from *granted* passages only.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime
from typing import Literal

from msgspec import Struct

from edge_agent.core.checks import CardFacts, Outcome, card_refusal
from edge_agent.core.model import AccessGrant, AccessLevel, Door, DoorGroup, SitePolicy, TimeZone
from edge_agent.core.reasons import Context, Reason, render
from edge_agent.core.sitetime import local_date, local_minute, require_aware, site_zone, within

Direction = Literal["in", "out"]


class DoorRight(Struct, frozen=True, kw_only=True):
    """One of the person's grants with its access level and that level's time zone (one
    join: grants ⋈ access_levels ⋈ time_zones, by person and door group). ``time_zone`` is
    None when the level names a zone the store does not have."""

    grant: AccessGrant
    level: AccessLevel
    time_zone: TimeZone | None = None


class DoorFacts(Struct, frozen=True, kw_only=True):
    """Everything a door decision needs. ``rights`` may include rights for other door
    groups (they are ignored); ``holidays`` need only contain today's local date if it is
    one; ``last_direction`` is the direction of the person's last granted passage in this
    door's group (None: no passage known)."""

    card: CardFacts
    door: Door
    group: DoorGroup
    rights: tuple[DoorRight, ...] = ()
    holidays: frozenset[date] = frozenset()
    last_direction: Direction | None = None


class DoorDecision(Outcome, frozen=True, kw_only=True):
    """A door decision: ``open_ms`` when granted; ``access_level_id`` of the right that
    let the person in; ``apb_violation`` for a soft anti-passback violation (granted
    anyway, recorded for HQ); ``direction`` is the door's, for the record and the
    anti-passback state."""

    door_id: str
    person_id: str | None = None
    direction: Direction | None = None
    open_ms: int | None = None
    access_level_id: str | None = None
    apb_violation: bool = False


def time_zone_open(
    time_zone: TimeZone, now: datetime, tz: str, holidays: Collection[date] = frozenset()
) -> bool:
    """True if ``time_zone`` is open at ``now`` on the site's wall clock (``tz``, an IANA
    name): the holiday intervals on a holiday, else the weekday's; intervals are
    ``[start, end)`` minutes of the local day."""
    zone = site_zone(tz)
    today = local_date(now, zone)
    minute = local_minute(now, zone)
    intervals = time_zone.holiday if today in holidays else time_zone.weekly.get(today.weekday())
    return any(i.start <= minute < i.end for i in intervals or ())


def decide_door(facts: DoorFacts, policy: SitePolicy, now: datetime) -> DoorDecision:
    """Decide a card presented at a door at ``now`` (timezone-aware). Pure: no I/O, no
    clock; see the module docstring for the rules and their order."""
    require_aware(now)
    door = facts.door
    card = facts.card.card
    refusal = card_refusal(facts.card, now)
    if refusal is not None or card is None:
        person = card.person_id if card is not None else None
        return _decision(facts, refusal or Reason.UNKNOWN_CARD, ok=False, person_id=person)
    person_id = card.person_id

    rights = sorted(
        (
            r
            for r in facts.rights
            if r.level.door_group_id == door.group_id
            and r.grant.person_id == person_id
            and r.grant.access_level_id == r.level.id
        ),
        key=lambda r: r.level.id,  # deterministic: the same right is named every time
    )
    if not rights:
        return _decision(facts, Reason.NO_ACCESS, ok=False, person_id=person_id)
    current = [r for r in rights if _right_valid(r, now)]
    if not current:
        ended = any(_right_ended(r, now) for r in rights)
        reason = Reason.EXPIRED if ended else Reason.NOT_YET_VALID
        return _decision(facts, reason, ok=False, person_id=person_id, context="access")
    opening = next(
        (
            r
            for r in current
            if r.time_zone is not None
            and time_zone_open(r.time_zone, now, policy.timezone, facts.holidays)
        ),
        None,
    )
    if opening is None:
        return _decision(facts, Reason.OUTSIDE_TIME_ZONE, ok=False, person_id=person_id)

    violation = door.direction == "in" and facts.last_direction == "in"
    if violation and facts.group.anti_passback == "hard":
        return _decision(facts, Reason.ANTI_PASSBACK, ok=False, person_id=person_id)
    return _decision(
        facts,
        Reason.OK,
        ok=True,
        person_id=person_id,
        access_level_id=opening.level.id,
        apb_violation=violation and facts.group.anti_passback == "soft",
        context="door",
    )


def _right_valid(right: DoorRight, now: datetime) -> bool:
    return within(right.grant.valid_from, right.grant.valid_to, now) and within(
        right.level.valid_from, right.level.valid_to, now
    )


def _right_ended(right: DoorRight, now: datetime) -> bool:
    return any(
        end is not None and now >= end for end in (right.grant.valid_to, right.level.valid_to)
    )


def _decision(
    facts: DoorFacts,
    reason: Reason,
    *,
    ok: bool,
    person_id: str | None = None,
    access_level_id: str | None = None,
    apb_violation: bool = False,
    context: Context | None = None,
) -> DoorDecision:
    display = render(reason, context)
    return DoorDecision(
        ok=ok,
        reason=reason,
        display_zh=display.zh,
        display_en=display.en,
        door_id=facts.door.id,
        person_id=person_id,
        direction=facts.door.direction,
        open_ms=facts.door.open_ms if ok else None,
        access_level_id=access_level_id,
        apb_violation=apb_violation,
    )
