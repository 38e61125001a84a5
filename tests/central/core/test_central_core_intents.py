"""Card intents from edges: decided like the same operation at HQ, with the branch's facts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from central_core_support import NOW, UID_A, UID_B, accepted, card, cards_written, holder, world

from central.core.cancel import CancelCard
from central.core.cards import IssueCard, Reissue, ReportLost
from central.core.effects import Rejected
from central.core.intents import decide_intent, intent_keys, intent_request
from edge_agent.core.model import CardStatus
from protocol.messages import CardIntent

OFFLINE_AT = NOW - timedelta(hours=3)


def intent(action: str, **fields: Any) -> CardIntent:
    base: dict[str, Any] = {
        "id": "SZ-FUTIAN:1:41",
        "seq": 41,
        "site": "SZ-FUTIAN",
        "terminal": "DESK-1",
        "at": OFFLINE_AT,
        "received_at": OFFLINE_AT,
        "offline": True,
        "card_uid": UID_A,
        "operator": "cashier-li",
    }
    return CardIntent(**(base | {"action": action} | fields))


def test_an_intent_becomes_the_operation_with_the_record_id_and_the_branch_as_source() -> None:
    request = intent_request(intent("issue", person_id="P1"))
    assert isinstance(request, IssueCard)
    assert (request.request_id, request.operator, request.source) == (
        "SZ-FUTIAN:1:41",
        "cashier-li",
        "site:SZ-FUTIAN",
    )
    assert request.card_type is None  # the policy's default type, and its deposit
    assert isinstance(intent_request(intent("reissue", new_card_uid=UID_B)), Reissue)
    assert intent_request(intent("cancel")) == CancelCard(
        request_id="SZ-FUTIAN:1:41", operator="cashier-li", source="site:SZ-FUTIAN", card_uid=UID_A
    )
    assert intent_keys(intent("issue", person_id="P1")).card_uids == (UID_A,)


def test_an_offline_issue_of_a_uid_hq_bound_to_someone_else_meanwhile_is_rejected() -> None:
    state = world(holder("P1"), holder("P2", cards=(card(UID_A, "P2"),)))
    result = decide_intent(intent("issue", person_id="P1"), state, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "card_already_bound"
    assert result.request_id == "SZ-FUTIAN:1:41"


def test_an_offline_issue_of_a_free_uid_is_accepted_and_audited_as_the_branch() -> None:
    result = accepted(decide_intent(intent("issue", person_id="P1"), world(holder("P1")), NOW))
    assert cards_written(result)[UID_A].person_id == "P1"
    assert (result.audit.source, result.audit.operator, result.audit.at) == (
        "site:SZ-FUTIAN",
        "cashier-li",
        NOW,
    )


def test_a_loss_reported_at_a_branch_offline_counts_from_when_it_was_reported() -> None:
    request = intent_request(intent("report_lost"))
    assert isinstance(request, ReportLost) and request.reported_at == OFFLINE_AT
    result = accepted(
        decide_intent(intent("report_lost"), world(holder("P1", cards=(card(),))), NOW)
    )
    assert result.blacklist[0].effective_at == OFFLINE_AT


def test_an_intent_naming_another_holder_is_rejected_person_mismatch() -> None:
    state = world(holder("P2", cards=(card(UID_A, "P2"),)))
    result = decide_intent(intent("freeze", person_id="P1"), state, NOW)
    assert isinstance(result, Rejected) and result.reason_code == "person_mismatch"


@pytest.mark.parametrize(
    ("action", "status", "fields"),
    [
        ("unlost", CardStatus.LOST, {}),
        ("freeze", CardStatus.ACTIVE, {"reason": "suspicious"}),
        ("unfreeze", CardStatus.FROZEN, {}),
        ("cancel", CardStatus.ACTIVE, {"person_id": "P1"}),
        ("reissue", CardStatus.ACTIVE, {"new_card_uid": UID_B}),
    ],
)
def test_every_intent_action_is_decided(action: str, status: CardStatus, fields: Any) -> None:
    state = world(holder("P1", cards=(card(status=status),)))
    assert accepted(decide_intent(intent(action, **fields), state, NOW)).audit.action.startswith(
        "card."
    )
