"""Idempotency by request id, and results that survive a store round trip."""

from __future__ import annotations

import msgspec
import pytest
from central_core_support import NOW, UID_A, card, holder, req, world

from central.core.effects import Accepted, Rejected, rejection_audit
from central.core.idempotency import StoredResult, remember, replay, request_digest
from central.core.money import Recharge
from central.core.operations import AnyRequest, decide

RECHARGE = req(Recharge, "r-42", card_uid=UID_A, amount_fen=20000, method="bank", pay_ref="B-1")
STATE = world(holder("P1", cards=(card(),)))


def test_a_new_request_id_is_decided() -> None:
    assert replay(RECHARGE, None) is None


def test_the_same_request_again_gets_the_stored_result() -> None:
    stored = remember(RECHARGE, decide(RECHARGE, STATE, NOW))
    again = req(Recharge, "r-42", card_uid=UID_A, amount_fen=20000, method="bank", pay_ref="B-1")
    assert replay(again, stored) is stored.result


def test_a_refusal_is_replayed_too() -> None:
    refusal = decide(RECHARGE, world(), NOW)
    assert isinstance(refusal, Rejected)
    assert replay(RECHARGE, remember(RECHARGE, refusal)) == refusal


def test_the_same_id_with_other_content_is_refused_request_id_reused() -> None:
    stored = remember(RECHARGE, decide(RECHARGE, STATE, NOW))
    other = req(Recharge, "r-42", card_uid=UID_A, amount_fen=2000, method="bank", pay_ref="B-1")
    result = replay(other, stored)
    assert isinstance(result, Rejected) and result.reason_code == "request_id_reused"


def test_a_stored_result_of_another_id_is_a_caller_bug() -> None:
    stored = remember(RECHARGE, decide(RECHARGE, STATE, NOW))
    other = req(Recharge, "r-43", card_uid=UID_A, amount_fen=1, method="cash")
    with pytest.raises(ValueError, match="another request id"):
        replay(other, stored)


def test_the_digest_ignores_nothing_but_field_order() -> None:
    decoded = msgspec.json.decode(
        b'{"pay_ref":"B-1","method":"bank","amount_fen":20000,"card_uid":"04A1B2C3",'
        b'"source":"hq:web","operator":"op-zhang","request_id":"r-42","op":"money.recharge"}',
        type=AnyRequest,
    )
    assert request_digest(decoded) == request_digest(RECHARGE)
    assert request_digest(msgspec.structs.replace(RECHARGE, source="hq:cli")) != request_digest(
        RECHARGE
    )


def test_results_round_trip_through_json_for_the_store() -> None:
    stored = remember(RECHARGE, decide(RECHARGE, STATE, NOW))
    back = msgspec.json.decode(msgspec.json.encode(stored), type=StoredResult)
    assert back == stored and isinstance(back.result, Accepted)


def test_a_refusal_has_an_audit_line_naming_who_tried() -> None:
    refusal = decide(RECHARGE, world(), NOW)
    assert isinstance(refusal, Rejected)
    line = rejection_audit(
        refusal,
        operator="op-zhang",
        source="hq:web",
        action="money.recharge",
        target="card:X",
        at=NOW,
    )
    assert (line.outcome, line.reason_code, line.note) == (
        "rejected",
        "card_unknown",
        refusal.message,
    )
