"""Attendance rules as values: shifts, the calendar, rosters, and each day's plan.

Everything HR configures lives here, as frozen values with no I/O; the computation over
punches is :mod:`central.core.attendance`.

- A :class:`Shift` is fixed (start and end, late/early judged against them) or flexible (a
  band to work in, a core time to be present for, a minimum of hours). A shift whose end is
  not after its start ends the next day (a night shift).
- Check-in and check-out are valid within windows around the start and end; every planned
  day owns the instants from its window's opening to its closing, and the windows of two
  consecutive days never overlap (where they would, they meet half way between one day's
  end and the next day's start). So every punch belongs to at most one day, and a punch
  that arrives late (an offline site, a terminal's buffer) changes that day only.
- The :class:`Calendar` says what kind of day a date is: a workday, a rest day (weekend),
  or a statutory holiday (法定节假日), with swapped workdays (调休) that are working
  weekends; overtime is graded by it.
- A :class:`Roster` assigns shifts to persons or departments over date ranges; a person's
  own entry beats their department's, and a later-starting entry beats an earlier one.

Local dates and times are the site's; instants are UTC. A plan is made by placing the
shift's wall-clock times on the date in the zone (:func:`place`), so a night across a DST
change is an hour shorter or longer, as the people who worked it experienced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum

MINUTE = timedelta(minutes=1)


class DayType(StrEnum):
    """What kind of day a date is; overtime on it is paid at its level."""

    WORKDAY = "workday"
    REST = "rest"
    HOLIDAY = "holiday"


@dataclass(frozen=True)
class Break:
    """An unpaid break inside a shift (lunch): time worked across it is not counted.
    Local wall-clock times; a break before the shift's start is on the shift's next day."""

    start: time
    end: time


@dataclass(frozen=True)
class Shift:
    """One shift. Windows and allowances are minutes.

    Fixed (``core`` is None): late = check-in after ``start`` by more than ``late_grace``,
    early = check-out before ``end`` by more than ``early_grace``; worked time runs from the
    later of check-in and start to the earlier of check-out and end, less breaks.

    Flexible (``core`` = (core start, core end)): work anywhere between ``start`` and
    ``end``; late/early are judged against the core time, and a day shorter than
    ``min_work`` minutes is *short* by the difference.
    """

    id: str
    start: time
    end: time
    in_before: int = 120
    in_after: int = 240
    out_before: int = 240
    out_after: int = 360
    late_grace: int = 0
    early_grace: int = 0
    breaks: tuple[Break, ...] = ()
    core: tuple[time, time] | None = None
    min_work: int = 0
    #: Weekday overtime counts once check-out is at least this long after ``end``.
    overtime_after: int = 30
    #: Overtime is counted in whole units (minutes), rounded down.
    overtime_unit: int = 30
    #: Worked time is counted in whole units (minutes), rounded down.
    rounding: int = 1

    def __post_init__(self) -> None:
        for name in (
            "in_before",
            "in_after",
            "out_before",
            "out_after",
            "late_grace",
            "early_grace",
            "min_work",
            "overtime_after",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"shift {self.id}: {name} must not be negative")
        if self.overtime_unit < 1 or self.rounding < 1:
            raise ValueError(f"shift {self.id}: rounding units must be at least one minute")
        if self.core is not None and self.min_work <= 0:
            raise ValueError(f"shift {self.id}: a flexible shift needs min_work minutes")

    @property
    def flexible(self) -> bool:
        """True for a flexible shift (it has a core time)."""
        return self.core is not None

    @property
    def crosses_midnight(self) -> bool:
        """True if the shift ends on the next day."""
        return self.end <= self.start


def place(day: date, at: time, zone: tzinfo, *, after: datetime | None = None) -> datetime:
    """The UTC instant of wall-clock ``at`` on ``day`` in ``zone`` — or on the next day, if
    that instant would not be after ``after`` (how a night shift's end, or a break after
    midnight, lands on the following date). A wall time skipped by DST is read with the
    offset before the change (02:30 on a spring-forward night is 03:30 summer time); a
    repeated one is its first occurrence."""
    placed = datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
    if after is not None and placed <= after:
        placed = datetime.combine(day + timedelta(days=1), at, tzinfo=zone).astimezone(UTC)
    return placed


@dataclass(frozen=True)
class Calendar:
    """Workdays by weekday (Monday = 0), statutory holidays, and swapped workdays (调休:
    dates that are worked although their weekday is not)."""

    workdays: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    holidays: frozenset[date] = frozenset()
    swapped_workdays: frozenset[date] = frozenset()

    def day_type(self, day: date) -> DayType:
        """Holiday beats swapped workday beats the weekday's rule."""
        if day in self.holidays:
            return DayType.HOLIDAY
        if day in self.swapped_workdays or day.weekday() in self.workdays:
            return DayType.WORKDAY
        return DayType.REST


@dataclass(frozen=True)
class RosterEntry:
    """``shift_id`` (None: no shift, a day off) for a person or a department, from
    ``start`` to ``end`` inclusive (None: open-ended), on the given weekdays (None: every
    day the calendar makes a workday)."""

    shift_id: str | None
    start: date
    end: date | None = None
    person_id: str | None = None
    department: str | None = None
    weekdays: frozenset[int] | None = None

    def __post_init__(self) -> None:
        if (self.person_id is None) == (self.department is None):
            raise ValueError("a roster entry names a person or a department, not both")
        if self.end is not None and self.end < self.start:
            raise ValueError("a roster entry cannot end before it starts")

    def covers(self, day: date, day_type: DayType) -> bool:
        """True if this entry applies on ``day``."""
        if day < self.start or (self.end is not None and day > self.end):
            return False
        if self.weekdays is None:
            return day_type is DayType.WORKDAY
        return day.weekday() in self.weekdays


@dataclass(frozen=True)
class Roster:
    """Who works which shift when. See :meth:`shift_for`."""

    entries: tuple[RosterEntry, ...] = ()

    def shift_for(
        self, person_id: str, departments: Iterable[str], day: date, day_type: DayType
    ) -> str | None:
        """The shift id planned for the person on ``day``, or None.

        The person's own entries beat their departments'; among entries of the same rank,
        the one that starts latest wins (a new roster replaces the old from its date). A
        department list is the person's department and its ancestors, nearest first; a
        nearer department beats a farther one.
        """
        ranks = {dept: i + 1 for i, dept in enumerate(departments)}
        best: tuple[int, date] | None = None
        chosen: str | None = None
        for entry in self.entries:
            if entry.person_id is not None:
                if entry.person_id != person_id:
                    continue
                rank = 0
            else:
                if entry.department not in ranks:
                    continue
                rank = ranks[entry.department]
            if not entry.covers(day, day_type):
                continue
            key = (-rank, entry.start)
            if best is None or key > best:
                best, chosen = key, entry.shift_id
        return chosen


@dataclass(frozen=True)
class DayPlan:
    """One person's planned day: its date and type, its shift (None: not scheduled), and
    the instants that shape it, all UTC.

    ``opens``/``closes`` bound the punches this day owns. Unscheduled days own their local
    calendar day, so work on a rest day without a roster entry is still seen (and counted
    as overtime at the day's level).
    """

    day: date
    day_type: DayType
    shift: Shift | None
    start: datetime
    end: datetime
    opens: datetime
    closes: datetime
    breaks: tuple[tuple[datetime, datetime], ...] = ()
    core: tuple[datetime, datetime] | None = None

    @property
    def scheduled(self) -> bool:
        """True if a shift is planned."""
        return self.shift is not None


def plan_day(day: date, day_type: DayType, shift: Shift | None, zone: tzinfo) -> DayPlan:
    """The day's instants, before its windows are fitted to its neighbours'."""
    if shift is None:
        start = place(day, time(0), zone)
        end = place(day + timedelta(days=1), time(0), zone)
        return DayPlan(day, day_type, None, start, end, start, end)
    start = place(day, shift.start, zone)
    end = place(day, shift.end, zone, after=start)
    breaks = []
    for brk in shift.breaks:
        b_start = place(day, brk.start, zone, after=start - MINUTE)
        b_end = place(day, brk.end, zone, after=b_start)
        breaks.append((b_start, b_end))
    core = None
    if shift.core is not None:
        c_start = place(day, shift.core[0], zone, after=start - MINUTE)
        core = (c_start, place(day, shift.core[1], zone, after=c_start))
    return DayPlan(
        day,
        day_type,
        shift,
        start,
        end,
        opens=start - shift.in_before * MINUTE,
        closes=end + shift.out_after * MINUTE,
        breaks=tuple(breaks),
        core=core,
    )


def plan_days(
    days: Iterable[date],
    calendar: Calendar,
    shifts: Mapping[str, Shift],
    shift_of: Mapping[date, str | None],
    zone: tzinfo,
) -> list[DayPlan]:
    """Plans for consecutive ``days`` with their windows fitted: where one day's window
    would run into the next day's, both stop half way between the first day's end and the
    next day's start, so no instant belongs to two days. An unscheduled day yields to a
    scheduled neighbour (a night shift's check-out at 06:10 belongs to the night shift,
    not to the free day after it)."""
    plans = []
    for day in sorted(days):
        shift_id = shift_of.get(day)
        shift = shifts[shift_id] if shift_id is not None else None
        plans.append(plan_day(day, calendar.day_type(day), shift, zone))
    fitted = list(plans)
    for i in range(len(fitted) - 1):
        first, second = fitted[i], fitted[i + 1]
        if first.closes <= second.opens:
            continue
        if first.scheduled and not second.scheduled:
            cut = first.closes
        elif second.scheduled and not first.scheduled:
            cut = second.opens
        else:  # half way between the shifts, never inside either
            cut = first.end + (second.start - first.end) / 2
            cut = max(min(cut, second.start), first.end)
        fitted[i] = _with_window(first, first.opens, cut)
        fitted[i + 1] = _with_window(second, cut, second.closes)
    return fitted


def _with_window(plan: DayPlan, opens: datetime, closes: datetime) -> DayPlan:
    return DayPlan(
        plan.day,
        plan.day_type,
        plan.shift,
        plan.start,
        plan.end,
        opens,
        closes,
        plan.breaks,
        plan.core,
    )


@dataclass(frozen=True)
class Leave:
    """Approved leave (请假) or an excused absence, UTC: time inside it is neither late,
    early nor absent."""

    start: datetime
    end: datetime
    kind: str = "leave"
    note: str = ""

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("leave times must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("leave must end after it starts")


@dataclass(frozen=True)
class Rules:
    """Everything attendance needs besides punches: shifts by id, the calendar, the roster
    and the zone the days are counted in."""

    shifts: Mapping[str, Shift]
    calendar: Calendar = field(default_factory=Calendar)
    roster: Roster = field(default_factory=Roster)
    zone: tzinfo = UTC
