"""Site-local time: local days, minutes of the day, meal periods, validity windows.

Instants are timezone-aware UTC ``datetime``. Wall-clock rules (a business day for the
daily limit, a time zone's open intervals, a meal period) are evaluated in the site's IANA
time zone (``SitePolicy.timezone``), with DST handled by :mod:`zoneinfo`: a local day is
from the first instant of its date to the first instant of the next, so it is 23 or 25
hours long on a DST change, and starts at 01:00 where midnight itself is skipped.

The caller uses the ``*_bounds`` helpers to query its store for "spent today" and "bought in
this meal period"; the decision functions use the same helpers, so both agree on the window.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from edge_agent.core.model import MealPeriod, SitePolicy

#: A site's time zone: an IANA name ("Asia/Shanghai") or a tzinfo.
Tz = str | tzinfo

_MINUTES_PER_DAY = 1440


@functools.lru_cache(maxsize=64)
def site_zone(name: str) -> ZoneInfo:
    """The :class:`~zoneinfo.ZoneInfo` for an IANA name (cached: decisions run per tap).

    Raises ``zoneinfo.ZoneInfoNotFoundError`` (a ``KeyError``) for an unknown name; config
    loading should call this once so a typo fails at start, not at the first tap.
    """
    return ZoneInfo(name)


def _zone(tz: Tz) -> tzinfo:
    return site_zone(tz) if isinstance(tz, str) else tz


def require_aware(now: datetime) -> None:
    """Refuse a naive ``now``: a decision taken on an unknown clock is a bug, not a guess."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"`now` must be timezone-aware (UTC), got {now!r}")


def local_date(now: datetime, tz: Tz) -> date:
    """The site-local calendar date at instant ``now``."""
    require_aware(now)
    return now.astimezone(_zone(tz)).date()


def local_minute(now: datetime, tz: Tz) -> int:
    """Minutes since local midnight (0..1439) at instant ``now``, by the wall clock."""
    require_aware(now)
    local = now.astimezone(_zone(tz))
    return local.hour * 60 + local.minute


def local_clock(now: datetime, tz: Tz) -> str:
    """The local wall-clock time as ``"HH:MM"`` (what a terminal display shows)."""
    require_aware(now)
    return now.astimezone(_zone(tz)).strftime("%H:%M")


def _local_instant(day: date, minute: int, zone: tzinfo) -> datetime:
    # `minute` may be 1440 (an interval ending at midnight): that is the next day's 00:00.
    day = day + timedelta(days=minute // _MINUTES_PER_DAY)
    minute %= _MINUTES_PER_DAY
    wall = datetime.combine(day, time(minute // 60, minute % 60), tzinfo=zone)
    # fold=0: an ambiguous wall time is its first occurrence, and a skipped one (a DST gap)
    # maps to the instant of the transition itself — the first instant that date has.
    return wall.astimezone(UTC)


def local_day_bounds(now: datetime, tz: Tz) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of the site-local day containing ``now``.

    ``start <= now < end``. A purchase at 23:59 and one at 00:01 local time are on different
    days, whatever their UTC dates. On a DST change the day is 23 or 25 hours long.
    """
    zone = _zone(tz)
    today = local_date(now, zone)
    return _local_instant(today, 0, zone), _local_instant(today, _MINUTES_PER_DAY, zone)


def current_meal_period(now: datetime, policy: SitePolicy) -> MealPeriod | None:
    """The meal period whose local window contains ``now`` (the first, if several overlap),
    or None outside every meal period. Windows are ``[start, end)`` minutes of the day."""
    minute = local_minute(now, policy.timezone)
    for period in policy.meal_periods:
        if period.window.start <= minute < period.window.end:
            return period
    return None


def meal_period_bounds(now: datetime, period: MealPeriod, tz: Tz) -> tuple[datetime, datetime]:
    """The UTC instants ``[start, end)`` of ``period`` on the site-local day of ``now`` —
    the window the caller counts the card's purchases in."""
    zone = _zone(tz)
    today = local_date(now, zone)
    return (
        _local_instant(today, period.window.start, zone),
        _local_instant(today, period.window.end, zone),
    )


def within(valid_from: datetime | None, valid_to: datetime | None, now: datetime) -> bool:
    """True if ``now`` is in the half-open validity window ``[valid_from, valid_to)``;
    a missing bound is open."""
    return (valid_from is None or valid_from <= now) and (valid_to is None or now < valid_to)
