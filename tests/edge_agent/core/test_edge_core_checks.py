"""Card checks shared by every terminal kind, and the maximum offline duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from edge_agent.core.checks import CardFacts, OfflineState, card_refusal, offline_too_long
from edge_agent.core.model import Card, CardStatus, OfflinePolicy
from edge_agent.core.reasons import Reason

NOW = datetime(2026, 3, 3, 4, 0, tzinfo=UTC)


def facts(blacklisted: bool = False, **card: object) -> CardFacts:
    return CardFacts(
        uid="04A1B2C3",
        card=Card(uid="04A1B2C3", person_id="P1", **card),  # type: ignore[arg-type]
        blacklisted=blacklisted,
    )


def test_an_active_card_within_its_validity_passes() -> None:
    day = timedelta(days=1)
    assert card_refusal(facts(valid_from=NOW - day, valid_to=NOW + day), NOW) is None


def test_an_unknown_card_is_unknown_unless_its_uid_is_blacklisted() -> None:
    assert card_refusal(CardFacts(uid="04A1B2C3"), NOW) is Reason.UNKNOWN_CARD
    listed = CardFacts(uid="04A1B2C3", blacklisted=True)
    assert card_refusal(listed, NOW) is Reason.BLACKLISTED


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (CardStatus.LOST, Reason.LOST),
        (CardStatus.FROZEN, Reason.FROZEN),
        (CardStatus.CANCELLED, Reason.CANCELLED),
        (CardStatus.REPLACED, Reason.REPLACED),
    ],
)
def test_a_card_not_active_is_refused_with_its_status(status: CardStatus, reason: Reason) -> None:
    assert card_refusal(facts(status=status), NOW) is reason
    # the status explains more than the blacklist entry that usually goes with it
    assert card_refusal(facts(status=status, blacklisted=True), NOW) is reason


def test_a_status_read_as_a_plain_string_works_like_the_enum() -> None:
    assert card_refusal(facts(status="active"), NOW) is None
    assert card_refusal(facts(status="lost"), NOW) is Reason.LOST


def test_an_unknown_status_fails_closed() -> None:
    assert card_refusal(facts(status="suspended"), NOW) is Reason.NOT_ALLOWED


def test_the_blacklist_refuses_an_active_card_before_its_status_row_is_updated() -> None:
    assert card_refusal(facts(blacklisted=True), NOW) is Reason.BLACKLISTED


def test_card_validity_is_from_inclusive_to_exclusive() -> None:
    assert card_refusal(facts(valid_from=NOW + timedelta(seconds=1)), NOW) is Reason.NOT_YET_VALID
    assert card_refusal(facts(valid_from=NOW), NOW) is None
    assert card_refusal(facts(valid_to=NOW), NOW) is Reason.EXPIRED
    assert card_refusal(facts(valid_to=NOW + timedelta(seconds=1)), NOW) is None


def test_offline_too_long_is_past_max_offline_s_and_never_while_online() -> None:
    policy = OfflinePolicy(max_offline_s=3600)
    since = NOW - timedelta(hours=1)
    assert not offline_too_long(None, policy, NOW)
    assert not offline_too_long(OfflineState(since=since), policy, NOW)
    assert offline_too_long(OfflineState(since=since), policy, NOW + timedelta(seconds=1))
