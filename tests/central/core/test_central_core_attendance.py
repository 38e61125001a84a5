"""Attendance computation: shifts, windows, night shifts across DST, flexible time, leave,
overtime levels, rosters, late punches, and month/department totals."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central.core.attendance import (
    DayResult,
    Summary,
    compute_person,
    owning_day,
    plan_person,
    summarise,
)
from central.core.attendance_rules import (
    Break,
    Calendar,
    DayType,
    Leave,
    Roster,
    RosterEntry,
    Rules,
    Shift,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")

DAY = Shift(
    "day",
    time(9),
    time(18),
    late_grace=5,
    early_grace=5,
    breaks=(Break(time(12), time(13)),),
)
NIGHT = Shift("night", time(22), time(6), breaks=(Break(time(2), time(2, 30)),))
FLEX = Shift(
    "flex",
    time(7),
    time(20),
    core=(time(10), time(16)),
    min_work=480,
    breaks=(Break(time(12), time(13)),),
)
SHIFTS = {s.id: s for s in (DAY, NIGHT, FLEX)}
MONDAY = date(2026, 11, 2)


def rules(shift_id: str = "day", zone: ZoneInfo = SHANGHAI, **calendar: object) -> Rules:
    roster = Roster((RosterEntry(shift_id, date(2026, 1, 1), department="ops"),))
    return Rules(SHIFTS, Calendar(**calendar), roster, zone)  # type: ignore[arg-type]


def at(day: date, hh: int, mm: int = 0, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=zone).astimezone(UTC)


def one_day(rules_: Rules, day: date, punches: list[datetime], **kw: object) -> DayResult:
    (result,) = compute_person(rules_, "p1", ["ops"], [day], punches=punches, **kw)  # type: ignore[arg-type]
    return result


# -- fixed day shift ---------------------------------------------------------------------------


def test_a_full_day_counts_eight_hours_without_the_lunch_break() -> None:
    r = one_day(rules(), MONDAY, [at(MONDAY, 8, 52), at(MONDAY, 18, 3)])
    assert (r.worked, r.late, r.early, r.overtime, r.status) == (480, 0, 0, 0, "normal")
    assert r.first_in == at(MONDAY, 8, 52)
    assert r.last_out == at(MONDAY, 18, 3)


def test_late_within_the_grace_is_not_late_and_beyond_it_counts_whole() -> None:
    assert one_day(rules(), MONDAY, [at(MONDAY, 9, 5), at(MONDAY, 18)]).late == 0
    late = one_day(rules(), MONDAY, [at(MONDAY, 9, 12), at(MONDAY, 18)])
    assert (late.late, late.worked, late.status) == (12, 468, "exception")


def test_leaving_early_counts_the_minutes_missed() -> None:
    r = one_day(rules(), MONDAY, [at(MONDAY, 9), at(MONDAY, 17, 20)])
    assert (r.early, r.worked) == (40, 440)


def test_one_punch_is_a_missing_punch_and_none_is_absence() -> None:
    only_in = one_day(rules(), MONDAY, [at(MONDAY, 8, 58)])
    assert (only_in.missing_out, only_in.missing_in, only_in.worked) == (True, False, 0)
    only_out = one_day(rules(), MONDAY, [at(MONDAY, 18, 1)])
    assert (only_out.missing_in, only_out.missing_out) == (True, False)
    assert one_day(rules(), MONDAY, []).status == "absent"


def test_punches_outside_the_windows_and_at_lunch_are_not_check_in_or_out() -> None:
    lunch = [at(MONDAY, 12, 1), at(MONDAY, 12, 58)]
    r = one_day(rules(), MONDAY, [at(MONDAY, 8, 59), *lunch, at(MONDAY, 18)])
    assert (r.first_in, r.last_out, r.punches, r.worked) == (
        at(MONDAY, 8, 59),
        at(MONDAY, 18),
        4,
        480,
    )
    # 06:30 is before the in-window opens (07:00): the day has no check-in
    early_bird = one_day(rules(), MONDAY, [at(MONDAY, 6, 30), at(MONDAY, 18)])
    assert early_bird.missing_in


def test_weekday_overtime_starts_past_its_threshold_and_counts_in_whole_units() -> None:
    under = one_day(rules(), MONDAY, [at(MONDAY, 9), at(MONDAY, 18, 29)])
    assert under.overtime == 0
    over = one_day(rules(), MONDAY, [at(MONDAY, 9), at(MONDAY, 19, 47)])
    assert (over.overtime, over.overtime_level, over.worked) == (90, DayType.WORKDAY, 480)


# -- night shifts, DST -------------------------------------------------------------------------


def test_night_shift_crosses_midnight_in_shanghai() -> None:
    night = rules("night")
    r = one_day(night, MONDAY, [at(MONDAY, 21, 50), at(MONDAY + timedelta(days=1), 6, 2)])
    assert (r.worked, r.late, r.early, r.status) == (450, 0, 0, "normal")


@pytest.mark.parametrize(
    ("night_of", "hours"),
    [
        (date(2026, 3, 28), 7),  # clocks go forward at 02:00 on 29 March: a short night
        (date(2026, 10, 24), 9),  # and back at 03:00 on 25 October: a long one
        (date(2026, 6, 6), 8),
    ],
)
def test_night_shift_across_a_dst_change_counts_the_hours_really_worked(
    night_of: date, hours: int
) -> None:
    berlin = rules("night", zone=BERLIN, workdays=frozenset(range(7)))
    morning = night_of + timedelta(days=1)
    r = one_day(berlin, night_of, [at(night_of, 22, zone=BERLIN), at(morning, 6, zone=BERLIN)])
    assert r.worked == hours * 60 - 30
    assert (r.late, r.early) == (0, 0)


def test_a_night_shifts_check_out_belongs_to_the_night_not_the_next_day() -> None:
    night = rules("night", workdays=frozenset(range(7)))
    tue = MONDAY + timedelta(days=1)
    punches = [at(MONDAY, 22), at(tue, 6, 10), at(tue, 21, 55), at(tue + timedelta(days=1), 6)]
    mon, tue_r = compute_person(night, "p1", ["ops"], [MONDAY, tue], punches=punches)
    assert (mon.first_in, mon.last_out) == (at(MONDAY, 22), at(tue, 6, 10))
    assert (tue_r.first_in, tue_r.last_out) == (at(tue, 21, 55), at(tue + timedelta(days=1), 6))


# -- flexible shifts ---------------------------------------------------------------------------


def test_flexible_day_is_judged_by_its_core_time_and_minimum_hours() -> None:
    flex = rules("flex")
    fine = one_day(flex, MONDAY, [at(MONDAY, 8, 0), at(MONDAY, 17, 0)])
    assert (fine.late, fine.early, fine.short, fine.worked) == (0, 0, 0, 480)
    late_short = one_day(flex, MONDAY, [at(MONDAY, 10, 30), at(MONDAY, 17, 0)])
    assert (late_short.late, late_short.worked, late_short.short) == (30, 330, 150)
    assert late_short.status == "exception"
    left_in_core = one_day(flex, MONDAY, [at(MONDAY, 7, 0), at(MONDAY, 15, 0)])
    assert (left_in_core.early, left_in_core.short) == (60, 60)


# -- calendar: rest days, holidays, swapped workdays ------------------------------------------


def test_work_on_a_rest_day_is_rest_day_overtime_and_absence_there_is_nothing() -> None:
    saturday = MONDAY + timedelta(days=5)
    worked = one_day(rules(), saturday, [at(saturday, 9, 58), at(saturday, 14, 10)])
    assert (worked.shift_id, worked.overtime, worked.overtime_level) == (None, 240, DayType.REST)
    assert one_day(rules(), saturday, []).status == "off"


def test_holiday_work_is_holiday_overtime_and_no_one_is_absent() -> None:
    # the usual roster (workdays only) plans nothing on a holiday: the punches' span counts
    holiday = rules(holidays=frozenset({MONDAY}))
    worked = one_day(holiday, MONDAY, [at(MONDAY, 9), at(MONDAY, 18)])
    assert (worked.shift_id, worked.overtime, worked.overtime_level) == (
        None,
        540,
        DayType.HOLIDAY,
    )
    assert not one_day(holiday, MONDAY, []).absent
    # a roster that plans the holiday anyway: its shift (and lunch) shape the day
    every_day = Roster(
        (RosterEntry("day", date(2026, 1, 1), person_id="p1", weekdays=frozenset(range(7))),)
    )
    planned = Rules(SHIFTS, Calendar(holidays=frozenset({MONDAY})), every_day, SHANGHAI)
    shift_day = one_day(planned, MONDAY, [at(MONDAY, 9), at(MONDAY, 18)])
    assert (shift_day.overtime, shift_day.overtime_level) == (480, DayType.HOLIDAY)
    assert not one_day(planned, MONDAY, []).absent


def test_a_swapped_workday_on_a_weekend_expects_attendance() -> None:
    sunday = MONDAY - timedelta(days=1)
    swapped = rules(swapped_workdays=frozenset({sunday}))
    assert one_day(swapped, sunday, []).absent
    assert one_day(rules(), sunday, []).status == "off"


# -- leave ---------------------------------------------------------------------------------------


def test_morning_leave_moves_the_start_so_arriving_after_it_is_not_late() -> None:
    leave = Leave(at(MONDAY, 9), at(MONDAY, 11))
    r = one_day(rules(), MONDAY, [at(MONDAY, 10, 58), at(MONDAY, 18)], leaves=[leave])
    assert (r.late, r.leave, r.worked) == (0, 120, 362)  # from 10:58, less lunch
    late_after_leave = one_day(
        rules(), MONDAY, [at(MONDAY, 11, 30), at(MONDAY, 18)], leaves=[leave]
    )
    assert late_after_leave.late == 30


def test_a_day_all_on_leave_is_leave_not_absence() -> None:
    leave = Leave(at(MONDAY, 0), at(MONDAY, 23, 59), kind="annual")
    r = one_day(rules(), MONDAY, [], leaves=[leave])
    assert (r.absent, r.status, r.leave) == (False, "leave", 480)


# -- rosters -------------------------------------------------------------------------------------


def test_a_persons_own_roster_beats_the_department_and_later_entries_replace_earlier() -> None:
    roster = Roster(
        (
            RosterEntry("day", date(2026, 1, 1), department="company"),
            RosterEntry("flex", date(2026, 1, 1), department="ops"),
            RosterEntry("night", date(2026, 11, 4), department="ops"),
            RosterEntry("day", date(2026, 11, 6), end=date(2026, 11, 6), person_id="p1"),
        )
    )
    depts = ["ops", "company"]  # nearest first

    def shift(person: str, day: date, chain: list[str] = depts) -> str | None:
        return roster.shift_for(person, chain, day, DayType.WORKDAY)

    assert shift("p1", MONDAY) == "flex"  # ops beats the company
    assert shift("p1", date(2026, 11, 5)) == "night"  # the newer ops roster
    assert shift("p1", date(2026, 11, 6)) == "day"  # p1's own entry for that day
    assert shift("p2", date(2026, 11, 6)) == "night"
    assert shift("p3", MONDAY, ["finance", "company"]) == "day"
    assert roster.shift_for("p1", depts, MONDAY, DayType.REST) is None  # workdays only


def test_a_roster_naming_weekdays_schedules_weekend_shifts_at_workday_rates() -> None:
    saturday = MONDAY + timedelta(days=5)
    roster = Roster(
        (RosterEntry("day", date(2026, 1, 1), person_id="p1", weekdays=frozenset({5})),)
    )
    shop = Rules(SHIFTS, Calendar(), roster, SHANGHAI)
    r = one_day(shop, saturday, [at(saturday, 9), at(saturday, 19)])
    assert (r.shift_id, r.worked, r.overtime, r.overtime_level) == ("day", 480, 60, DayType.WORKDAY)
    assert one_day(shop, MONDAY, [at(MONDAY, 9), at(MONDAY, 18)]).shift_id is None


def test_a_roster_entry_must_name_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="person or a department"):
        RosterEntry("day", MONDAY)
    with pytest.raises(ValueError, match="min_work"):
        Shift("bad", time(9), time(18), core=(time(10), time(16)))


# -- late punches and windows (properties) -----------------------------------------------------

WEEK = [MONDAY + timedelta(days=i) for i in range(7)]
ANY_SHIFT_WEEK = st.lists(st.sampled_from([None, "day", "night", "flex"]), min_size=7, max_size=7)


def _week_rules(pattern: list[str | None], zone: ZoneInfo) -> Rules:
    entries = tuple(
        RosterEntry(shift_id, day, end=day, person_id="p1", weekdays=frozenset(range(7)))
        for day, shift_id in zip(WEEK, pattern, strict=True)
    )
    return Rules(SHIFTS, Calendar(), Roster(entries), zone)


def _instants(zone: ZoneInfo) -> st.SearchStrategy[datetime]:
    start = datetime.combine(MONDAY - timedelta(days=1), time(12), tzinfo=zone).astimezone(UTC)
    return st.integers(0, 8 * 24 * 60 - 1).map(lambda m: start + timedelta(minutes=m))


@settings(max_examples=80, deadline=None)
@given(
    pattern=ANY_SHIFT_WEEK,
    zone=st.sampled_from([SHANGHAI, BERLIN]),
    data=st.data(),
)
def test_a_late_punch_changes_only_the_day_that_owns_it(
    pattern: list[str | None], zone: ZoneInfo, data: st.DataObject
) -> None:
    week = _week_rules(pattern, zone)
    punches = data.draw(st.lists(_instants(zone), max_size=20))
    late = data.draw(_instants(zone))
    before = compute_person(week, "p1", [], WEEK, punches=punches)
    after = compute_person(week, "p1", [], WEEK, punches=[*punches, late])
    owner = owning_day(plan_person(week, "p1", [], WEEK), late)
    for old, new in zip(before, after, strict=True):
        if old.day != owner:
            assert old == new
    # and recomputing only that day gives what a full recomputation gives
    if owner is not None:
        (again,) = compute_person(week, "p1", [], [owner], punches=[*punches, late])
        assert again == next(r for r in after if r.day == owner)


@settings(max_examples=80, deadline=None)
@given(pattern=ANY_SHIFT_WEEK, zone=st.sampled_from([SHANGHAI, BERLIN]), data=st.data())
def test_windows_never_overlap_and_results_ignore_order_and_repeats(
    pattern: list[str | None], zone: ZoneInfo, data: st.DataObject
) -> None:
    week = _week_rules(pattern, zone)
    plans = plan_person(week, "p1", [], WEEK)
    for first, second in itertools.pairwise(plans):
        assert first.closes <= second.opens
    punches = data.draw(st.lists(_instants(zone), max_size=20))
    shuffled = data.draw(st.permutations([*punches, *punches[:3]]))
    results = compute_person(week, "p1", [], WEEK, punches=punches)
    assert results == compute_person(week, "p1", [], WEEK, punches=shuffled)
    for result, plan in zip(results, plans, strict=True):
        assert result.worked >= 0
        assert result.late >= 0
        assert result.early >= 0
        if plan.shift is not None and result.day_type is not DayType.HOLIDAY:
            # nothing counted as worked beyond the shift itself
            assert result.worked <= (plan.end - plan.start).total_seconds() // 60
        if result.first_in is not None and result.last_out is not None:
            assert result.first_in <= result.last_out


# -- month and department totals: a hand-computed fixture -------------------------------------


def test_a_departments_week_matches_the_hand_computed_totals() -> None:
    """Two people on the day shift, Monday 2 to Sunday 8 November 2026, Wednesday a holiday.

    ann: Mon normal (8:55-18:05); Tue late 20 (9:20-18:00); Wed holiday, not rostered, works
         9:00-13:00 (240 min holiday overtime); Thu leaves 17:00 (early 60); Fri in 9:00, out
         20:10 (overtime 130 → 120 in 30-minute units); Sat 10:00-12:30 (rest-day overtime
         150); Sun off.
    bob: Mon absent; Tue only a check-in (missing punch); Wed off (holiday); Thu, Fri normal.
    """
    tue, wed, thu, fri, sat = (MONDAY + timedelta(days=i) for i in range(1, 6))
    week_rules = rules(holidays=frozenset({wed}))
    ann = [
        at(MONDAY, 8, 55),
        at(MONDAY, 18, 5),
        at(tue, 9, 20),
        at(tue, 18),
        at(wed, 9),
        at(wed, 13),
        at(thu, 9),
        at(thu, 17),
        at(fri, 9),
        at(fri, 20, 10),
        at(sat, 10),
        at(sat, 12, 30),
    ]
    bob = [at(tue, 8, 50), at(thu, 8, 45), at(thu, 18), at(fri, 9), at(fri, 18)]
    ann_sum = summarise(compute_person(week_rules, "ann", ["ops"], WEEK, punches=ann))
    bob_sum = summarise(compute_person(week_rules, "bob", ["ops"], WEEK, punches=bob))
    dept = Summary()
    dept.merge(ann_sum)
    dept.merge(bob_sum)
    assert (ann_sum.late_count, ann_sum.late_minutes) == (1, 20)
    assert (ann_sum.early_count, ann_sum.early_minutes) == (1, 60)
    assert ann_sum.overtime == {DayType.WORKDAY: 120, DayType.REST: 150, DayType.HOLIDAY: 240}
    # Mon 480 + Tue 460 + Wed 240 + Thu 420 + Fri 480 + Sat 150
    assert ann_sum.worked_minutes == 2230
    assert (bob_sum.absent_days, bob_sum.missing_punches, bob_sum.worked_minutes) == (1, 1, 960)
    assert (dept.scheduled_days, dept.present_days, dept.absent_days) == (8, 9, 1)
    assert dept.worked_minutes == 3190
    assert dept.overtime[DayType.WORKDAY] == 120
