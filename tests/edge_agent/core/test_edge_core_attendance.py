"""Attendance decisions: a valid card's punch is always taken; repeats are flagged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from edge_agent.core.attendance import PunchFacts, decide_punch, is_duplicate_punch
from edge_agent.core.checks import CardFacts
from edge_agent.core.model import Card, CardStatus, Person, SitePolicy
from edge_agent.core.reasons import Reason

POLICY = SitePolicy(site="SZ-FUTIAN", timezone="Asia/Shanghai", punch_dedupe_s=60)
NOW = datetime(2026, 3, 3, 8, 59, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)


def facts(
    *,
    last_at: datetime | None = None,
    last: str | None = None,
    card: Card | None = None,
    blacklisted: bool = False,
) -> PunchFacts:
    return PunchFacts(
        card=CardFacts(
            uid="04A1B2C3",
            card=card or Card(uid="04A1B2C3", person_id="P1"),
            person=Person(id="P1", name="张三"),
            blacklisted=blacklisted,
        ),
        last_punch_at=last_at,
        last_punch=last,  # type: ignore[arg-type]
    )


def test_a_valid_card_punches_and_sees_its_name_and_the_local_time() -> None:
    decision = decide_punch(facts(), POLICY, NOW)
    assert decision.ok and decision.reason is Reason.OK and not decision.duplicate
    assert decision.person_id == "P1"
    assert decision.display_zh == "打卡成功\n张三 08:59"
    assert decision.display_en == "Punch recorded\n张三 08:59"


def test_a_second_punch_within_the_window_is_accepted_but_flagged_duplicate() -> None:
    first = NOW - timedelta(seconds=59)
    decision = decide_punch(facts(last_at=first), POLICY, NOW)
    assert decision.ok and decision.duplicate
    assert decision.reason is Reason.DUPLICATE_PUNCH
    # the display shows the punch that counts, not this one
    assert decision.display_zh == "已打卡\n08:58"


def test_a_punch_once_the_window_has_passed_counts_again() -> None:
    decision = decide_punch(facts(last_at=NOW - timedelta(seconds=60)), POLICY, NOW)
    assert decision.ok and not decision.duplicate and decision.reason is Reason.OK


def test_a_punch_with_the_other_key_is_a_correction_not_a_duplicate() -> None:
    just_now = NOW - timedelta(seconds=5)
    assert not decide_punch(facts(last_at=just_now, last="in"), POLICY, NOW, "out").duplicate
    assert decide_punch(facts(last_at=just_now, last="in"), POLICY, NOW, "in").duplicate
    assert decide_punch(facts(last_at=just_now, last="in"), POLICY, NOW).duplicate
    assert decide_punch(facts(last_at=just_now), POLICY, NOW, "out").duplicate


def test_a_clock_stepped_back_a_little_does_not_count_a_repeat() -> None:
    assert is_duplicate_punch(facts(last_at=NOW + timedelta(seconds=10)), None, POLICY, NOW)


@pytest.mark.parametrize(
    ("card", "blacklisted", "reason"),
    [
        (Card(uid="04A1B2C3", person_id="P1", status=CardStatus.LOST), False, Reason.LOST),
        (Card(uid="04A1B2C3", person_id="P1", status=CardStatus.FROZEN), False, Reason.FROZEN),
        (Card(uid="04A1B2C3", person_id="P1"), True, Reason.BLACKLISTED),
        (Card(uid="04A1B2C3", person_id="P1", valid_to=NOW), False, Reason.EXPIRED),
    ],
)
def test_a_card_that_fails_its_checks_is_refused(
    card: Card, blacklisted: bool, reason: Reason
) -> None:
    decision = decide_punch(facts(card=card, blacklisted=blacklisted), POLICY, NOW)
    assert not decision.ok and decision.reason is reason and not decision.duplicate
    assert decision.person_id == "P1"


def test_an_unknown_card_is_refused() -> None:
    decision = decide_punch(PunchFacts(card=CardFacts(uid="0499")), POLICY, NOW)
    assert (decision.ok, decision.reason, decision.person_id) == (False, Reason.UNKNOWN_CARD, None)


def test_a_punch_at_any_hour_is_taken() -> None:
    # No time zone applies to a clock: night shifts punch at 03:00.
    night = datetime(2026, 3, 4, 3, 0, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)
    assert decide_punch(facts(), POLICY, night).ok
