"""Attendance computation: punches + rules → each person's days and months. Pure.

A day's result depends only on its plan (:mod:`central.core.attendance_rules`), the punches
inside its window and the leave that overlaps it. Windows of consecutive days never overlap,
so a punch that arrives late — from a site that was offline, or a terminal's buffer — is
handled by recomputing the one day that owns it (:func:`owning_day`), and the result is the
same as computing everything again with every punch known from the start.

Per scheduled day (all minutes whole, rounded down):

- **check-in** is the earliest punch of the window no later than ``start + in_after``;
  **check-out** the latest no earlier than ``end - out_before`` (flexible: the first and
  the last punch of the window). One punch that could be either is whichever boundary it
  is nearer. Punches between (lunch) are kept, not counted.
- **late** / **early**: check-in after the start (flexible: the core start), check-out
  before the end (core end), by more than the grace; the whole difference counts. Leave
  that covers the start (end) moves it.
- **worked**: from the later of check-in and start to the earlier of check-out and end,
  less breaks, rounded down to the shift's unit. A flexible day shorter than ``min_work``
  (counting leave) is **short** by the difference.
- **absent**: a workday with neither check-in nor check-out and not all on leave;
  **missing in / out** when only one of them is there (nothing is counted as worked).
- **overtime**: on a workday, check-out at least ``overtime_after`` past the end counts
  from the end; on a holiday all worked time; on a day without a shift (a rest day, say)
  everything between the first and last punch. Its level is the day's type, so weekday,
  rest-day and holiday overtime stay apart (they are paid differently).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from central.core.attendance_rules import (
    MINUTE,
    DayPlan,
    DayType,
    Leave,
    Rules,
    Shift,
    plan_days,
)

#: Overtime unit for work on a day without a shift (no shift to take it from).
UNSCHEDULED_OVERTIME_UNIT = 30


@dataclass(frozen=True)
class DayResult:
    """One person's day. Instants are UTC; durations are whole minutes."""

    day: date
    day_type: DayType
    shift_id: str | None
    first_in: datetime | None = None
    last_out: datetime | None = None
    punches: int = 0
    worked: int = 0
    late: int = 0
    early: int = 0
    short: int = 0
    leave: int = 0
    overtime: int = 0
    absent: bool = False
    missing_in: bool = False
    missing_out: bool = False

    @property
    def overtime_level(self) -> DayType:
        """The rate overtime is paid at: holiday work is holiday overtime; on a day a shift
        was planned (a shift worker's rostered Saturday too) it is a workday's; otherwise
        the calendar's."""
        if self.day_type is DayType.HOLIDAY or self.shift_id is None:
            return self.day_type
        return DayType.WORKDAY

    @property
    def status(self) -> str:
        """One word for the day, most serious first."""
        if self.absent:
            return "absent"
        if self.missing_in or self.missing_out:
            return "missing_punch"
        if self.late or self.early or self.short:
            return "exception"
        if self.shift_id is None:
            return "overtime" if self.overtime else "off"
        if self.leave and not self.first_in and not self.last_out:
            return "leave"
        return "normal"


def _minutes(span: timedelta) -> int:
    return max(0, int(span.total_seconds() // 60))


def _floor(minutes: int, unit: int) -> int:
    return minutes - minutes % unit


def _overlap(a: datetime, b: datetime, c: datetime, d: datetime) -> timedelta:
    return max(timedelta(0), min(b, d) - max(a, c))


def _net(start: datetime, end: datetime, plan: DayPlan) -> timedelta:
    """``end - start`` less the plan's breaks inside it."""
    if end <= start:
        return timedelta(0)
    span = end - start
    for b_start, b_end in plan.breaks:
        span -= _overlap(start, end, b_start, b_end)
    return span


def _leave_in(plan: DayPlan, leaves: Iterable[Leave]) -> list[tuple[datetime, datetime]]:
    return sorted(
        (max(leave.start, plan.start), min(leave.end, plan.end))
        for leave in leaves
        if leave.start < plan.end and leave.end > plan.start
    )


def _due(anchor: datetime, leave: list[tuple[datetime, datetime]], *, forward: bool) -> datetime:
    """The start (forward) or end (backward) of what is due, once leave covering it is
    taken off: leave 09:00-11:00 moves a 09:00 start to 11:00."""
    moved = True
    while moved:
        moved = False
        for start, end in leave:
            if start <= anchor < end and forward:
                anchor, moved = end, True
            elif start < anchor <= end and not forward:
                anchor, moved = start, True
    return anchor


def _pick(own: Sequence[datetime], plan: DayPlan, shift: Shift) -> tuple[datetime | None, ...]:
    if plan.core is not None:  # flexible: come and go when you like, first in, last out
        first_in, last_out = (own[0], own[-1]) if own else (None, None)
        middle = plan.core[0] + (plan.core[1] - plan.core[0]) / 2
    else:
        ins = [p for p in own if p <= plan.start + shift.in_after * MINUTE]
        outs = [p for p in own if p >= plan.end - shift.out_before * MINUTE]
        first_in = ins[0] if ins else None
        last_out = outs[-1] if outs else None
        middle = plan.start + (plan.end - plan.start) / 2
    if first_in is not None and first_in == last_out:  # one punch, either boundary
        if first_in <= middle:
            last_out = None
        else:
            first_in = None
    return first_in, last_out


def compute_day(
    plan: DayPlan, punches: Sequence[datetime], leaves: Iterable[Leave] = ()
) -> DayResult:
    """The result of one planned day from all of a person's punches (sorted or not, UTC,
    duplicates harmless) and their leave."""
    own = sorted({p for p in punches if plan.opens <= p < plan.closes})
    shift = plan.shift
    if shift is None:
        return _unscheduled(plan, own)
    first_in, last_out = _pick(own, plan, shift)
    leave = _leave_in(plan, leaves)
    leave_minutes = _minutes(sum((_net(s, e, plan) for s, e in leave), timedelta(0)))
    required = _minutes(_net(plan.start, plan.end, plan))
    on_leave_all_day = required > 0 and leave_minutes >= required
    due_start, due_end = plan.core if plan.core is not None else (plan.start, plan.end)
    due_start = _due(due_start, leave, forward=True)
    due_end = _due(due_end, leave, forward=False)
    late = early = 0
    if first_in is not None and due_start < due_end:
        late = _minutes(first_in - due_start)
        late = late if late > shift.late_grace else 0
    if last_out is not None and due_start < due_end:
        early = _minutes(due_end - last_out)
        early = early if early > shift.early_grace else 0
    worked = short = overtime = 0
    if first_in is not None and last_out is not None:
        worked = _floor(
            _minutes(_net(max(first_in, plan.start), min(last_out, plan.end), plan)),
            shift.rounding,
        )
        if shift.flexible:
            short = max(0, shift.min_work - worked - leave_minutes)
        if plan.day_type is DayType.HOLIDAY:
            overtime = _floor(worked, shift.overtime_unit)
        elif last_out - plan.end >= shift.overtime_after * MINUTE:
            overtime = _floor(_minutes(last_out - plan.end), shift.overtime_unit)
    expected = plan.day_type is not DayType.HOLIDAY and not on_leave_all_day
    nothing = first_in is None and last_out is None
    return DayResult(
        day=plan.day,
        day_type=plan.day_type,
        shift_id=shift.id,
        first_in=first_in,
        last_out=last_out,
        punches=len(own),
        worked=worked,
        late=late if expected else 0,
        early=early if expected else 0,
        short=short if expected else 0,
        leave=leave_minutes,
        overtime=overtime,
        absent=expected and nothing,
        missing_in=expected and first_in is None and last_out is not None,
        missing_out=expected and last_out is None and first_in is not None,
    )


def _unscheduled(plan: DayPlan, own: list[datetime]) -> DayResult:
    """A day without a shift: nothing is due; work done is overtime at the day's level."""
    if len(own) < 2:
        return DayResult(plan.day, plan.day_type, None, punches=len(own))
    worked = _minutes(own[-1] - own[0])
    return DayResult(
        day=plan.day,
        day_type=plan.day_type,
        shift_id=None,
        first_in=own[0],
        last_out=own[-1],
        punches=len(own),
        worked=worked,
        overtime=_floor(worked, UNSCHEDULED_OVERTIME_UNIT),
    )


def plan_person(
    rules: Rules, person_id: str, departments: Sequence[str], days: Iterable[date]
) -> list[DayPlan]:
    """The person's fitted plans for ``days`` (with the day before and after considered,
    so the first and last windows are fitted to their neighbours too)."""
    wanted = sorted(set(days))
    if not wanted:
        return []
    around = [wanted[0] - timedelta(days=1), *wanted, wanted[-1] + timedelta(days=1)]
    span = sorted(set(around))
    shift_of = {
        day: rules.roster.shift_for(person_id, departments, day, rules.calendar.day_type(day))
        for day in span
    }
    for day, shift_id in shift_of.items():
        if shift_id is not None and shift_id not in rules.shifts:
            raise KeyError(f"{person_id} is rostered on {day} to unknown shift {shift_id}")
    plans = _consecutive(span, rules, shift_of)
    keep = set(wanted)
    return [plan for plan in plans if plan.day in keep]


def _consecutive(span: list[date], rules: Rules, shift_of: dict[date, str | None]) -> list[DayPlan]:
    """Fit runs of consecutive dates together (a gap in ``span`` has no neighbour)."""
    plans: list[DayPlan] = []
    run: list[date] = []
    for day in span:
        if run and day - run[-1] != timedelta(days=1):
            plans += plan_days(run, rules.calendar, rules.shifts, shift_of, rules.zone)
            run = []
        run.append(day)
    if run:
        plans += plan_days(run, rules.calendar, rules.shifts, shift_of, rules.zone)
    return plans


def compute_person(
    rules: Rules,
    person_id: str,
    departments: Sequence[str],
    days: Iterable[date],
    *,
    punches: Sequence[datetime],
    leaves: Sequence[Leave] = (),
) -> list[DayResult]:
    """Every requested day of one person, in date order."""
    ordered = sorted(punches)
    results = []
    for plan in plan_person(rules, person_id, departments, days):
        lo = bisect.bisect_left(ordered, plan.opens)
        hi = bisect.bisect_left(ordered, plan.closes)
        results.append(compute_day(plan, ordered[lo:hi], leaves))
    return results


def owning_day(plans: Sequence[DayPlan], at: datetime) -> date | None:
    """The date whose window holds instant ``at`` (at most one: windows never overlap), or
    None. A punch arriving late recomputes this day only."""
    for plan in plans:
        if plan.opens <= at < plan.closes:
            return plan.day
    return None


@dataclass
class Summary:
    """Totals over days (a person's month, or a department's: the sum of its people's)."""

    scheduled_days: int = 0
    present_days: int = 0
    absent_days: int = 0
    leave_days: int = 0
    late_count: int = 0
    late_minutes: int = 0
    early_count: int = 0
    early_minutes: int = 0
    short_minutes: int = 0
    missing_punches: int = 0
    worked_minutes: int = 0
    leave_minutes: int = 0
    overtime: dict[DayType, int] = field(default_factory=lambda: dict.fromkeys(DayType, 0))

    def add(self, result: DayResult) -> None:
        """Count one day in."""
        if result.shift_id is not None and result.day_type is not DayType.HOLIDAY:
            self.scheduled_days += 1
        if result.first_in is not None or result.last_out is not None:
            self.present_days += 1
        self.absent_days += result.absent
        self.leave_days += result.status == "leave"
        self.late_count += result.late > 0
        self.late_minutes += result.late
        self.early_count += result.early > 0
        self.early_minutes += result.early
        self.short_minutes += result.short
        self.missing_punches += result.missing_in + result.missing_out
        self.worked_minutes += result.worked
        self.leave_minutes += result.leave
        self.overtime[result.overtime_level] += result.overtime

    def merge(self, other: Summary) -> None:
        """Add another summary's totals (a person's into their department's)."""
        for name, value in vars(other).items():
            if name == "overtime":
                for level, minutes in value.items():
                    self.overtime[level] += minutes
            else:
                setattr(self, name, getattr(self, name) + value)


def summarise(results: Iterable[DayResult]) -> Summary:
    """Totals of ``results``."""
    summary = Summary()
    for result in results:
        summary.add(result)
    return summary
