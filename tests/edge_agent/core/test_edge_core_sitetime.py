"""Site-local time: days, meal periods and validity windows on the site's wall clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.core.model import Interval, MealPeriod, SitePolicy
from edge_agent.core.sitetime import (
    current_meal_period,
    local_clock,
    local_date,
    local_day_bounds,
    local_minute,
    meal_period_bounds,
    within,
)

SH = "Asia/Shanghai"


def local(text: str, zone: str = SH) -> datetime:
    """A wall-clock time at a site, as the UTC instant the decisions get."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_2359_and_0001_local_are_different_days_on_the_same_utc_date() -> None:
    before, after = local("2026-03-03T23:59"), local("2026-03-04T00:01")
    assert before.date() == after.date() == date(2026, 3, 3)  # both on 3 March UTC
    assert local_day_bounds(before, SH) != local_day_bounds(after, SH)
    assert local_day_bounds(before, SH) == (utc("2026-03-02T16:00"), utc("2026-03-03T16:00"))


def test_0759_and_0801_local_are_the_same_day_on_different_utc_dates() -> None:
    early, later = local("2026-03-04T07:59"), local("2026-03-04T08:01")
    assert early.date() != later.date()
    assert local_day_bounds(early, SH) == local_day_bounds(later, SH)


def test_a_berlin_day_is_23_hours_when_clocks_go_forward_and_25_when_they_go_back() -> None:
    spring_start, spring_end = local_day_bounds(
        local("2026-03-29T12:00", "Europe/Berlin"), "Europe/Berlin"
    )
    assert (spring_start, spring_end) == (utc("2026-03-28T23:00"), utc("2026-03-29T22:00"))
    autumn_start, autumn_end = local_day_bounds(
        local("2026-10-25T12:00", "Europe/Berlin"), "Europe/Berlin"
    )
    assert autumn_end - autumn_start == timedelta(hours=25)


def test_where_midnight_is_skipped_the_day_starts_at_the_transition() -> None:
    # Cuba springs forward at 00:00: 8 March 2026 begins at 01:00 local.
    start, end = local_day_bounds(utc("2026-03-08T12:00"), "America/Havana")
    assert start.astimezone(ZoneInfo("America/Havana")).hour == 1
    assert end - start == timedelta(hours=23)


ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/Havana", "America/Santiago", "UTC"]


EPOCH_2001 = datetime(2001, 1, 1, tzinfo=UTC)
#: Any microsecond of this century, as an aware UTC instant.
instants = st.integers(min_value=0, max_value=99 * 365 * 86_400 * 10**6).map(
    lambda us: EPOCH_2001 + timedelta(microseconds=us)
)

#: Around DST changes (and Cuba's midnight ones), where local days are not 24 hours.
TRANSITIONS = [
    datetime(2026, 3, 29, tzinfo=UTC),  # Berlin forward
    datetime(2026, 10, 25, tzinfo=UTC),  # Berlin back
    datetime(2026, 3, 8, 5, tzinfo=UTC),  # Havana forward at midnight
    datetime(2026, 11, 1, 5, tzinfo=UTC),  # Havana back
    datetime(2026, 4, 5, 3, tzinfo=UTC),  # Santiago back at midnight
    datetime(2026, 9, 6, 4, tzinfo=UTC),  # Santiago forward at midnight
]
near_transitions = st.builds(
    lambda t, s: t + timedelta(seconds=s),
    st.sampled_from(TRANSITIONS),
    st.integers(min_value=-36 * 3600, max_value=36 * 3600),
)


@given(now=instants | near_transitions, zone=st.sampled_from(ZONES))
def test_property_the_local_day_contains_now_and_exactly_its_local_date(
    now: datetime, zone: str
) -> None:
    start, end = local_day_bounds(now, zone)
    assert start <= now < end
    assert start.tzinfo is UTC and end.tzinfo is UTC
    today = local_date(now, zone)
    assert local_date(start, zone) == today
    assert local_date(end - timedelta(microseconds=1), zone) == today
    assert local_date(end, zone) == today + timedelta(days=1)
    assert timedelta(hours=22) <= end - start <= timedelta(hours=26)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        local_date(datetime(2026, 3, 3, 12, 0), SH)  # noqa: DTZ001 - the point of the test


def test_local_minute_and_clock_read_the_site_wall_clock() -> None:
    now = utc("2026-07-01T03:45")
    assert local_minute(now, SH) == 11 * 60 + 45
    assert local_clock(now, SH) == "11:45"
    assert local_clock(now, "Europe/Berlin") == "05:45"  # CEST in July


LUNCH = MealPeriod(name="午餐", window=Interval(11 * 60 + 30, 13 * 60 + 30), max_purchases=1)
SUPPER = MealPeriod(name="晚餐", window=Interval(17 * 60, 19 * 60))
POLICY = SitePolicy(site="SZ-FUTIAN", meal_periods=[LUNCH, SUPPER])


def test_the_current_meal_period_is_found_by_local_time_with_an_exclusive_end() -> None:
    assert current_meal_period(local("2026-03-03T11:29"), POLICY) is None
    assert current_meal_period(local("2026-03-03T11:30"), POLICY) == LUNCH
    assert current_meal_period(local("2026-03-03T13:29"), POLICY) == LUNCH
    assert current_meal_period(local("2026-03-03T13:30"), POLICY) is None
    assert current_meal_period(local("2026-03-03T18:00"), POLICY) == SUPPER


def test_meal_period_bounds_are_today_s_window_in_utc() -> None:
    start, end = meal_period_bounds(local("2026-03-03T12:05"), LUNCH, SH)
    assert (start, end) == (utc("2026-03-03T03:30"), utc("2026-03-03T05:30"))


def test_a_window_ending_at_1440_ends_at_the_next_local_midnight() -> None:
    late = MealPeriod(name="夜宵", window=Interval(22 * 60, 1440))
    start, end = meal_period_bounds(local("2026-03-03T23:00"), late, SH)
    assert end == local("2026-03-04T00:00")
    assert end - start == timedelta(hours=2)


def test_validity_is_half_open_and_a_missing_bound_is_open() -> None:
    start, end = utc("2026-01-01T00:00"), utc("2026-02-01T00:00")
    assert within(start, end, start)
    assert not within(start, end, end)
    assert not within(start, end, start - timedelta(microseconds=1))
    assert within(None, None, end)
    assert within(None, end, start)
    assert within(start, None, end)
