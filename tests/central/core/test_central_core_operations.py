"""The entry point: requests decoded from JSON at the boundary, what each asks the caller
to load, and the holder's derived facts."""

from __future__ import annotations

import msgspec
import pytest
from central_core_support import UID_A, UID_B, card, holder, req

from central.core.cancel import CancelCard
from central.core.cards import IssueCard, Reissue
from central.core.money import CorrectPurchase, Recharge
from central.core.operations import AnyRequest, StateKeys, state_keys
from central.core.subsidy import GrantSubsidy
from central.core.tickets import SellTicket
from edge_agent.core.model import CardStatus


def decode(body: str) -> AnyRequest:
    return msgspec.json.decode(body.encode(), type=AnyRequest)


def test_the_op_field_picks_the_request_type() -> None:
    request = decode(
        '{"op": "money.recharge", "request_id": "r-1", "operator": "op-zhang",'
        ' "source": "site:SZ-FUTIAN", "card_uid": "04A1B2C3", "amount_fen": 20000,'
        ' "method": "bank", "pay_ref": "BK-1"}'
    )
    assert isinstance(request, Recharge) and request.amount_fen == 20000


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('"op": "card.issue", "card_uid": "04a1b2c3", "person_id": "P1"', "$.card_uid"),
        ('"op": "card.cancel", "card_uid": "04A1B2C3", "refund": true', "refund"),
        (
            '"op": "money.recharge", "card_uid": "04A1B2C3", "amount_fen": 1, "method": "iou"',
            "$.method",
        ),
        ('"op": "card.shred", "card_uid": "04A1B2C3"', "card.shred"),
    ],
)
def test_bad_requests_are_refused_at_the_boundary_naming_the_field(body: str, path: str) -> None:
    envelope = '"request_id": "r-1", "operator": "u", "source": "hq:web"'
    with pytest.raises(msgspec.ValidationError, match=path.replace("$", r"\$")):
        decode("{" + envelope + ", " + body + "}")


def test_a_source_names_hq_or_a_site() -> None:
    with pytest.raises(msgspec.ValidationError, match="source"):
        decode(
            '{"op": "card.freeze", "request_id": "r", "operator": "u", "source": "SZ-FUTIAN",'
            ' "card_uid": "04A1B2C3"}'
        )


def test_state_keys_name_what_each_request_needs() -> None:
    assert state_keys(
        req(IssueCard, card_uid=UID_A, person_id="P1", deposit_method="bank", deposit_pay_ref="B")
    ) == StateKeys(card_uids=(UID_A,), person_ids=("P1",), pay_refs=("B",))
    assert state_keys(req(Reissue, card_uid=UID_A, new_card_uid=UID_B)).card_uids == (UID_A, UID_B)
    assert state_keys(
        req(CorrectPurchase, original_id="SZ-1", corrected_amount_fen=0, reason="x")
    ) == StateKeys(original_ids=("SZ-1",))
    assert state_keys(req(GrantSubsidy, person_ids=("P1", "P2"), amount_fen=1)).person_ids == (
        "P1",
        "P2",
    )
    sale = req(
        SellTicket, card_uid=UID_A, ticket_id="T", kind="count", service="s", price_fen=1, uses=1
    )
    assert state_keys(sale) == StateKeys(card_uids=(UID_A,), ticket_ids=("T",))
    assert state_keys(req(CancelCard, card_uid=UID_A)) == StateKeys(card_uids=(UID_A,))


def test_a_person_is_closed_only_after_having_had_cards_none_live_and_nothing_held() -> None:
    assert not holder("P1").closed  # never had a card: waiting for one
    retired = (card(status=CardStatus.CANCELLED),)
    assert holder("P1", cards=retired).closed
    assert not holder("P1", cash=1, cards=retired).closed
    assert not holder("P1", cards=(*retired, card(UID_B))).closed
