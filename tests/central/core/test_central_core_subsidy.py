"""Subsidy batches: grant, monthly reset, expiry sweep, and late spending across a reset."""

from __future__ import annotations

from datetime import timedelta

import pytest
from central_core_support import NOW, accepted, card, holder, req, world
from msgspec.structs import replace

from central.core.effects import Posting, PutAccount, Rejected
from central.core.operations import decide
from central.core.subsidy import ExpireSubsidy, ExpiryFact, GrantSubsidy, restore_for_late_spend
from edge_agent.core.model import Account, CardStatus

MONTH_END = NOW + timedelta(days=27)
EXPIRED = Account(person_id="P1", subsidy_expires_at=NOW - timedelta(seconds=1))


def refused(result: object) -> str:
    assert isinstance(result, Rejected), result
    return result.reason_code


def by_person(postings: tuple[Posting, ...], kind: str) -> dict[str, int]:
    return {p.person_id: p.subsidy_fen for p in postings if p.kind == kind}


def grant(*people: str, **fields: object) -> GrantSubsidy:
    base: dict[str, object] = {"person_ids": people, "amount_fen": 30000, "expires_at": MONTH_END}
    return req(GrantSubsidy, "batch-2026-03", **(base | fields))


def test_a_grant_adds_to_each_listed_person_with_a_per_person_ledger_key() -> None:
    soon = Account(person_id="P1", subsidy_expires_at=NOW + timedelta(days=1))
    state = world(holder("P1", subsidy=500, account=soon, cards=(card(),)), holder("P2"))
    result = accepted(decide(grant("P1", "P2"), state, NOW))
    assert by_person(result.postings, "subsidy_grant") == {"P1": 30000, "P2": 30000}
    assert {p.entry_id for p in result.postings} == {"op:batch-2026-03:P1", "op:batch-2026-03:P2"}
    assert not by_person(result.postings, "subsidy_expire")
    expiries = {
        w.key: w.account.subsidy_expires_at for w in result.master if isinstance(w, PutAccount)
    }
    assert expiries == {"P1": MONTH_END, "P2": MONTH_END}
    assert result.audit.after["granted_fen"] == 60000


def test_a_reset_expires_the_unspent_remainder_explicitly_then_grants() -> None:
    state = world(holder("P1", subsidy=1234), holder("P2", subsidy=0), holder("P3", subsidy=-200))
    result = accepted(decide(grant("P1", "P2", "P3", mode="reset"), state, NOW))
    # Uncollected subsidy is on record per person; a debt is neither expired nor forgiven.
    assert by_person(result.postings, "subsidy_expire") == {"P1": -1234}
    assert by_person(result.postings, "subsidy_grant") == {"P1": 30000, "P2": 30000, "P3": 30000}
    assert result.audit.after["expired_fen"] == 1234
    kinds = [p.kind for p in result.postings if p.person_id == "P1"]
    assert kinds == ["subsidy_expire", "subsidy_grant"]


def test_adding_to_an_expired_remainder_expires_it_first_so_it_is_not_revived() -> None:
    state = world(holder("P1", subsidy=800, account=EXPIRED))
    result = accepted(decide(grant("P1"), state, NOW))
    assert by_person(result.postings, "subsidy_expire") == {"P1": -800}


def test_adding_to_a_live_remainder_keeps_the_later_expiry() -> None:
    later = MONTH_END + timedelta(days=30)
    live = Account(person_id="P1", subsidy_expires_at=later)
    state = world(holder("P1", subsidy=800, account=live))
    result = accepted(decide(grant("P1"), state, NOW))
    assert result.master == ()  # the expiry stays `later`; nothing to rewrite
    never = accepted(decide(grant("P1", expires_at=None), state, NOW))
    (write,) = never.master
    assert isinstance(write, PutAccount) and write.account.subsidy_expires_at is None


def test_a_closed_account_is_skipped_and_listed() -> None:
    closed = holder("P2", cards=(card("04B2C3D4", "P2", CardStatus.CANCELLED),))
    result = accepted(decide(grant("P1", "P2"), world(holder("P1"), closed), NOW))
    assert [(s.person_id, s.reason) for s in result.skipped] == [("P2", "account_closed")]
    assert set(by_person(result.postings, "subsidy_grant")) == {"P1"}


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"amount_fen": 0}, "amount_invalid"),
        ({"person_ids": ()}, "batch_invalid"),
        ({"person_ids": ("P1", "P1")}, "batch_invalid"),
        ({"person_ids": ("P1", "P9")}, "person_unknown"),
        ({"expires_at": NOW}, "expiry_invalid"),
    ],
)
def test_grant_refusals(fields: dict[str, object], code: str) -> None:
    assert refused(decide(grant("P1", **fields), world(holder("P1")), NOW)) == code


def test_the_sweep_expires_only_remainders_past_their_expiry() -> None:
    state = world(
        holder("P1", subsidy=800, account=EXPIRED),
        holder("P2", subsidy=500),
        holder("P3", account=Account(person_id="P3", subsidy_expires_at=NOW)),
    )
    result = accepted(decide(req(ExpireSubsidy, person_ids=("P1", "P2", "P3")), state, NOW))
    assert by_person(result.postings, "subsidy_expire") == {"P1": -800}
    assert {(s.person_id, s.reason) for s in result.skipped} == {
        ("P2", "not_expired"),
        ("P3", "nothing_to_expire"),
    }


def test_the_sweep_refuses_a_bad_list() -> None:
    state = world(holder("P1"))
    assert (
        refused(decide(req(ExpireSubsidy, person_ids=("P1", "P2")), state, NOW)) == "person_unknown"
    )
    assert refused(decide(req(ExpireSubsidy, person_ids=()), state, NOW)) == "batch_invalid"


# -- late spending across an expiry ---------------------------------------------------------

EXPIRY = ExpiryFact(entry_id="op:batch-2026-03:P1", person_id="P1", at=NOW, expired_fen=500)


def test_subsidy_spent_offline_before_a_reset_is_given_back_by_a_restore_entry() -> None:
    restore = restore_for_late_spend(
        EXPIRY, record_id="SZ-9-1", spent_at=NOW - timedelta(hours=2), subsidy_fen=300, now=NOW
    )
    assert restore is not None
    assert (restore.kind, restore.subsidy_fen, restore.ref) == (
        "subsidy_restore",
        300,
        EXPIRY.entry_id,
    )
    assert restore.entry_id == "restore:SZ-9-1"


def test_a_restore_never_gives_back_more_than_the_expiry_took() -> None:
    partly = replace(EXPIRY, restored_fen=400)
    restore = restore_for_late_spend(
        partly, record_id="SZ-9-2", spent_at=NOW - timedelta(hours=1), subsidy_fen=300, now=NOW
    )
    assert restore is not None and restore.subsidy_fen == 100
    spent = replace(EXPIRY, restored_fen=500)
    hour_ago = NOW - timedelta(hours=1)
    assert (
        restore_for_late_spend(spent, record_id="x", spent_at=hour_ago, subsidy_fen=1, now=NOW)
        is None
    )


def test_spending_after_the_expiry_or_from_cash_owes_nothing() -> None:
    after = restore_for_late_spend(EXPIRY, record_id="a", spent_at=NOW, subsidy_fen=300, now=NOW)
    cash_only = restore_for_late_spend(
        EXPIRY, record_id="b", spent_at=NOW - timedelta(hours=1), subsidy_fen=0, now=NOW
    )
    assert after is None and cash_only is None
