"""Door decisions: card, rights, time zones on the site's clock, holidays, anti-passback."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import pytest

from edge_agent.core.checks import CardFacts
from edge_agent.core.door import DoorFacts, DoorRight, decide_door, time_zone_open
from edge_agent.core.model import (
    AccessGrant,
    AccessLevel,
    Card,
    CardStatus,
    Door,
    DoorGroup,
    Interval,
    Person,
    SitePolicy,
    TimeZone,
)
from edge_agent.core.reasons import Reason, fits_display

SH = "Asia/Shanghai"
POLICY = SitePolicy(site="SZ-FUTIAN", timezone=SH)
OFFICE_HOURS = [Interval(8 * 60, 18 * 60)]
#: Weekdays 08:00–18:00; weekends closed; holidays 10:00–12:00.
WORKDAYS = TimeZone(
    id="TZ-WORK",
    weekly=dict.fromkeys(range(5), OFFICE_HOURS),
    holiday=[Interval(10 * 60, 12 * 60)],
)
DOOR = Door(id="D-MAIN", group_id="G-OFFICE", terminal_id="DOOR-01", direction="in", open_ms=4000)
EXIT = Door(id="D-EXIT", group_id="G-OFFICE", terminal_id="DOOR-02", direction="out")


def local(text: str, zone: str = SH) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)


TUESDAY_9AM = local("2026-03-03T09:00")


def right(
    level_id: str = "L-STAFF",
    *,
    group: str = "G-OFFICE",
    time_zone: TimeZone | None = WORKDAYS,
    grant_from: datetime | None = None,
    grant_to: datetime | None = None,
    level_from: datetime | None = None,
    level_to: datetime | None = None,
) -> DoorRight:
    return DoorRight(
        grant=AccessGrant(
            person_id="P1", access_level_id=level_id, valid_from=grant_from, valid_to=grant_to
        ),
        level=AccessLevel(
            id=level_id,
            door_group_id=group,
            time_zone_id=time_zone.id if time_zone else "TZ-GONE",
            valid_from=level_from,
            valid_to=level_to,
        ),
        time_zone=time_zone,
    )


def facts(
    *rights: DoorRight,
    door: Door = DOOR,
    apb: Literal["none", "soft", "hard"] = "none",
    last: Literal["in", "out"] | None = None,
    holidays: frozenset[date] = frozenset(),
    card: Card | None = None,
    blacklisted: bool = False,
) -> DoorFacts:
    return DoorFacts(
        card=CardFacts(
            uid="04A1B2C3",
            card=card or Card(uid="04A1B2C3", person_id="P1"),
            person=Person(id="P1", name="张三"),
            blacklisted=blacklisted,
        ),
        door=door,
        group=DoorGroup(id="G-OFFICE", anti_passback=apb),
        rights=rights,
        holidays=holidays,
        last_direction=last,
    )


def test_a_valid_card_with_a_right_opens_the_door_for_its_open_time() -> None:
    decision = decide_door(facts(right()), POLICY, TUESDAY_9AM)
    assert decision.ok and decision.reason is Reason.OK
    assert decision.open_ms == 4000
    assert decision.access_level_id == "L-STAFF"
    assert decision.person_id == "P1" and decision.door_id == "D-MAIN"
    assert decision.direction == "in"
    assert decision.display_zh == "请通行" and decision.display_en == "Welcome"
    assert not decision.apb_violation


@pytest.mark.parametrize(
    ("card", "blacklisted", "reason"),
    [
        (Card(uid="04A1B2C3", person_id="P1", status=CardStatus.LOST), False, Reason.LOST),
        (Card(uid="04A1B2C3", person_id="P1", status=CardStatus.FROZEN), False, Reason.FROZEN),
        (
            Card(uid="04A1B2C3", person_id="P1", status=CardStatus.CANCELLED),
            False,
            Reason.CANCELLED,
        ),
        (Card(uid="04A1B2C3", person_id="P1", status=CardStatus.REPLACED), False, Reason.REPLACED),
        (Card(uid="04A1B2C3", person_id="P1"), True, Reason.BLACKLISTED),
        (
            Card(uid="04A1B2C3", person_id="P1", valid_from=TUESDAY_9AM + timedelta(days=1)),
            False,
            Reason.NOT_YET_VALID,
        ),
        (Card(uid="04A1B2C3", person_id="P1", valid_to=TUESDAY_9AM), False, Reason.EXPIRED),
    ],
)
def test_a_card_that_fails_its_checks_stays_shut_whatever_its_rights(
    card: Card, blacklisted: bool, reason: Reason
) -> None:
    decision = decide_door(facts(right(), card=card, blacklisted=blacklisted), POLICY, TUESDAY_9AM)
    assert not decision.ok and decision.reason is reason
    assert decision.open_ms is None
    assert decision.person_id == "P1"  # the record still names whose card it was


def test_an_unknown_card_stays_shut() -> None:
    unknown = DoorFacts(
        card=CardFacts(uid="0499"), door=DOOR, group=DoorGroup(id="G-OFFICE"), rights=(right(),)
    )
    decision = decide_door(unknown, POLICY, TUESDAY_9AM)
    assert (decision.ok, decision.reason, decision.person_id) == (False, Reason.UNKNOWN_CARD, None)


def test_no_right_for_this_door_group_is_no_access() -> None:
    assert decide_door(facts(), POLICY, TUESDAY_9AM).reason is Reason.NO_ACCESS
    elsewhere = right("L-LAB", group="G-LAB")
    assert decide_door(facts(elsewhere), POLICY, TUESDAY_9AM).reason is Reason.NO_ACCESS


def test_a_grant_or_level_that_ended_is_expired_access() -> None:
    for ended in (right(grant_to=TUESDAY_9AM), right(level_to=TUESDAY_9AM)):
        decision = decide_door(facts(ended), POLICY, TUESDAY_9AM)
        assert decision.reason is Reason.EXPIRED
        assert decision.display_zh == "通行权限已过期"


def test_a_grant_or_level_not_yet_started_is_not_yet_valid_access() -> None:
    later = TUESDAY_9AM + timedelta(minutes=1)
    for pending in (right(grant_from=later), right(level_from=later)):
        assert decide_door(facts(pending), POLICY, TUESDAY_9AM).reason is Reason.NOT_YET_VALID


def test_one_current_right_is_enough_even_if_another_has_ended() -> None:
    rights = (right("L-OLD", level_to=TUESDAY_9AM), right("L-NEW"))
    decision = decide_door(facts(*rights), POLICY, TUESDAY_9AM)
    assert decision.ok and decision.access_level_id == "L-NEW"


def test_outside_the_time_zone_the_door_stays_shut() -> None:
    for when in ("2026-03-03T07:59", "2026-03-03T18:00", "2026-03-07T09:00"):  # Sat 7 March
        decision = decide_door(facts(right()), POLICY, local(when))
        assert decision.reason is Reason.OUTSIDE_TIME_ZONE, when
    assert decide_door(facts(right()), POLICY, local("2026-03-03T08:00")).ok
    assert decide_door(facts(right()), POLICY, local("2026-03-03T17:59")).ok


def test_time_zones_are_evaluated_on_the_site_clock_not_utc() -> None:
    # Monday 07:30 in Shanghai is Sunday 23:30 UTC, Monday 08:30 is Monday 00:30 UTC.
    assert decide_door(facts(right()), POLICY, local("2026-03-02T07:30")).reason is (
        Reason.OUTSIDE_TIME_ZONE
    )
    assert decide_door(facts(right()), POLICY, local("2026-03-02T08:30")).ok
    # Saturday 01:00 Shanghai is Friday 17:00 UTC: by UTC that would be a weekday
    assert decide_door(facts(right()), POLICY, local("2026-03-07T01:00")).reason is (
        Reason.OUTSIDE_TIME_ZONE
    )


def test_a_time_zone_follows_the_wall_clock_across_dst() -> None:
    berlin = SitePolicy(site="DE-BERLIN", timezone="Europe/Berlin")
    winter = local("2026-03-27T08:30", "Europe/Berlin")  # 07:30 UTC
    summer = local("2026-03-30T08:30", "Europe/Berlin")  # 06:30 UTC
    assert decide_door(facts(right()), berlin, winter).ok
    assert decide_door(facts(right()), berlin, summer).ok
    # 07:30 local after the change (05:30 UTC) is still before opening time
    assert not decide_door(facts(right()), berlin, local("2026-03-30T07:30", "Europe/Berlin")).ok


def test_on_a_holiday_the_holiday_intervals_replace_the_weekday() -> None:
    holiday = frozenset({date(2026, 3, 3)})
    assert decide_door(facts(right(), holidays=holiday), POLICY, TUESDAY_9AM).reason is (
        Reason.OUTSIDE_TIME_ZONE
    )
    assert decide_door(facts(right(), holidays=holiday), POLICY, local("2026-03-03T10:30")).ok
    # a holiday on a Saturday opens a door that is shut on ordinary Saturdays
    saturday = frozenset({date(2026, 3, 7)})
    assert decide_door(facts(right(), holidays=saturday), POLICY, local("2026-03-07T11:00")).ok


def test_holidays_are_site_local_dates() -> None:
    # 10:30 on 4 March in Shanghai is still 3 March in UTC
    holiday = frozenset({date(2026, 3, 4)})
    assert decide_door(facts(right(), holidays=holiday), POLICY, local("2026-03-04T10:30")).ok
    assert not decide_door(facts(right(), holidays=holiday), POLICY, local("2026-03-04T13:00")).ok


def test_a_right_whose_time_zone_is_missing_never_opens() -> None:
    decision = decide_door(facts(right(time_zone=None)), POLICY, TUESDAY_9AM)
    assert decision.reason is Reason.OUTSIDE_TIME_ZONE


def test_the_first_right_open_now_is_named_and_the_choice_is_stable() -> None:
    always = TimeZone(id="TZ-24", weekly={d: [Interval(0, 1440)] for d in range(7)})
    rights = (right("L-B", time_zone=always), right("L-A", time_zone=WORKDAYS))
    assert decide_door(facts(*rights), POLICY, TUESDAY_9AM).access_level_id == "L-A"
    assert decide_door(facts(*reversed(rights)), POLICY, TUESDAY_9AM).access_level_id == "L-A"
    sunday = local("2026-03-08T09:00")
    assert decide_door(facts(*rights), POLICY, sunday).access_level_id == "L-B"


def test_hard_anti_passback_refuses_a_second_entry_without_an_exit() -> None:
    decision = decide_door(facts(right(), apb="hard", last="in"), POLICY, TUESDAY_9AM)
    assert not decision.ok and decision.reason is Reason.ANTI_PASSBACK
    assert decision.open_ms is None
    assert fits_display(decision.display_zh) and "出门" in decision.display_zh


def test_soft_anti_passback_opens_but_flags_the_violation() -> None:
    decision = decide_door(facts(right(), apb="soft", last="in"), POLICY, TUESDAY_9AM)
    assert decision.ok and decision.reason is Reason.OK
    assert decision.apb_violation and decision.open_ms == 4000


def test_no_anti_passback_ignores_the_last_direction() -> None:
    decision = decide_door(facts(right(), apb="none", last="in"), POLICY, TUESDAY_9AM)
    assert decision.ok and not decision.apb_violation


@pytest.mark.parametrize("apb", ["soft", "hard"])
@pytest.mark.parametrize(
    ("door", "last"),
    [(DOOR, None), (DOOR, "out"), (EXIT, "in"), (EXIT, "out"), (EXIT, None)],
)
def test_anti_passback_allows_entry_after_exit_and_never_keeps_anyone_in(
    apb: Literal["soft", "hard"], door: Door, last: Literal["in", "out"] | None
) -> None:
    decision = decide_door(facts(right(), door=door, apb=apb, last=last), POLICY, TUESDAY_9AM)
    assert decision.ok and not decision.apb_violation


def test_a_door_without_a_direction_is_outside_anti_passback() -> None:
    lobby = Door(id="D-LOBBY", group_id="G-OFFICE", terminal_id="DOOR-03")
    decision = decide_door(facts(right(), door=lobby, apb="hard", last="in"), POLICY, TUESDAY_9AM)
    assert decision.ok and decision.direction is None


def test_access_is_checked_before_anti_passback() -> None:
    decision = decide_door(facts(apb="hard", last="in"), POLICY, TUESDAY_9AM)
    assert decision.reason is Reason.NO_ACCESS


def test_time_zone_open_uses_the_weekday_of_the_local_date() -> None:
    assert time_zone_open(WORKDAYS, local("2026-03-06T17:00"), SH)  # Friday
    assert not time_zone_open(WORKDAYS, local("2026-03-07T09:00"), SH)  # Saturday
    assert not time_zone_open(TimeZone(id="TZ-NEVER"), TUESDAY_9AM, SH)


def test_a_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide_door(facts(right()), POLICY, datetime(2026, 3, 3, 9, 0))  # noqa: DTZ001
