"""Property: any sequence of operations and site purchases keeps the books whole.

Random sequences of issues, recharges, purchases (online and offline-overspending, through
:func:`central.core.ledger.entries_for` as ingest does), corrections, refunds, reissues,
cancels, losses, freezes, subsidy grants and resets, expiry sweeps, ticket sales, limit
changes, replays and reused request ids run through :class:`Books`. After every step:

- every running balance equals the sum of its ledger entries, purse by purse;
- no ledger key is posted twice; no deposit purse is ever negative;
- an HQ operation that takes cash never leaves the cash purse negative;
- an accepted cancel leaves every purse at zero, its entries adding up to what was held;
- corrections and refunds of a purchase never give back more than it cost;
- a reissue moves neither balance nor tickets: they stay with the person;
- a replayed request returns its first result and changes nothing;
- lost, frozen and replaced cards are on the blacklist, active ones are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple, TypeVar

from central_core_support import NOW, Books
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from central.core.cancel import CancelCard
from central.core.cards import (
    FreezeCard,
    IssueCard,
    Reissue,
    ReportLost,
    UnfreezeCard,
    Unlost,
)
from central.core.effects import Accepted, Rejected, Result
from central.core.money import CorrectPurchase, Recharge, RefundPurchase, SetLimits
from central.core.operations import AnyRequest
from central.core.state import LIVE, Balance, Policy
from central.core.subsidy import ExpireSubsidy, GrantSubsidy
from central.core.tickets import SellTicket
from edge_agent.core.model import Account, CardStatus, Person
from edge_agent.core.purses import Purses, available_purses, split_payment
from protocol.messages import Purchase

PEOPLE = ("P1", "P2", "P3")
UIDS = ("04000001", "04000002", "04000003", "04000004", "04000005")
PAY_REFS = (None, "PAY-1", "PAY-2", "PAY-3")
ACTIONS = (
    "issue",
    "issue",
    "recharge",
    "recharge",
    "purchase",
    "purchase",
    "purchase",
    "correct",
    "refund",
    "reissue",
    "cancel",
    "lost",
    "unlost",
    "freeze",
    "unfreeze",
    "grant",
    "expire",
    "ticket",
    "limits",
    "replay",
    "reuse",
)
T = TypeVar("T")
LIST_REASONS = {CardStatus.LOST, CardStatus.FROZEN, CardStatus.REPLACED}


class Step(NamedTuple):
    """One step of a run, drawn independently of the books: the picks are indexes taken
    modulo whatever pool exists when the step runs, so hypothesis generates and shrinks
    plain data while every step still lands on real cards, persons and purchases."""

    action: str
    hours: int
    a: int
    b: int
    c: int
    fen: int
    flag: bool


STEPS = st.builds(
    Step,
    action=st.sampled_from(ACTIONS),
    hours=st.integers(0, 24 * 10),
    a=st.integers(0, 2**16),
    b=st.integers(0, 2**16),
    c=st.integers(0, 2**16),
    fen=st.one_of(st.integers(-50, 50000), st.sampled_from([0, 1])),
    flag=st.booleans(),
)


@dataclass
class Run:
    """One run: the books, the clock, and what was asked so far."""

    books: Books
    now: datetime = NOW
    n: int = 0
    asked: list[tuple[AnyRequest, Result]] = field(default_factory=list)

    def rid(self) -> str:
        self.n += 1
        return f"r-{self.n}"

    def uid(self, k: int) -> str:
        """Mostly a UID central knows (operations on unknown cards are refused early)."""
        known = sorted(self.books.cards)
        return known[k % len(known)] if known and k % 4 else UIDS[k % len(UIDS)]

    def free_uid(self, k: int) -> str:
        """Mostly a UID that may be bound."""
        free = [u for u in UIDS if u not in self.books.cards]
        return free[k % len(free)] if free and k % 4 else UIDS[k % len(UIDS)]


def pick(pool: tuple[T, ...] | list[T], k: int) -> T:
    return pool[k % len(pool)]


def hq(cls: type, rid: str, **fields: object) -> AnyRequest:
    request: AnyRequest = cls(request_id=rid, operator="op", source="hq:web", **fields)
    return request


def next_request(run: Run, step: Step) -> AnyRequest:
    """The request a step asks for."""
    rid, uid, a, b, c = run.rid(), run.uid(step.a), step.a, step.b, step.c
    match step.action:
        case "issue":
            kind = pick(("standard", "vip", "gold"), c)
            return hq(
                IssueCard, rid, card_uid=run.free_uid(a), person_id=pick(PEOPLE, b), card_type=kind
            )
        case "recharge":
            method = pick(("cash", "bank", "online"), b)
            ref = pick(PAY_REFS, c)
            return hq(Recharge, rid, card_uid=uid, amount_fen=step.fen, method=method, pay_ref=ref)
        case "correct" | "refund":
            original_id = pick(sorted(run.books.purchases) or ["missing"], b)
            original = run.books.purchases.get(original_id)
            amount = c % ((0 if original is None else original.amount_fen) + 11) - 5
            if step.action == "correct":
                return hq(
                    CorrectPurchase,
                    rid,
                    original_id=original_id,
                    corrected_amount_fen=amount,
                    reason="typo",
                )
            return hq(RefundPurchase, rid, original_id=original_id, amount_fen=amount, reason="r")
        case "reissue":
            kind = pick((None, "standard", "vip"), c)
            return hq(Reissue, rid, card_uid=uid, new_card_uid=run.free_uid(b), card_type=kind)
        case "cancel":
            return hq(CancelCard, rid, card_uid=uid, recycle=step.flag)
        case "lost":
            return hq(ReportLost, rid, card_uid=uid)
        case "unlost":
            return hq(Unlost, rid, card_uid=uid, clear_for_reuse=step.flag)
        case "freeze":
            return hq(FreezeCard, rid, card_uid=uid)
        case "unfreeze":
            return hq(UnfreezeCard, rid, card_uid=uid)
        case "grant":
            # Up to three lines, P9 unknown, duplicates possible: the batch checks matter.
            people = tuple(pick((*PEOPLE, "P9"), b >> (2 * i)) for i in range(1 + c % 3))
            days = pick((None, -1, 1, 30), a)
            expires = None if days is None else run.now + timedelta(days=days)
            mode = "reset" if step.flag else "add"
            return hq(
                GrantSubsidy,
                rid,
                person_ids=people,
                amount_fen=step.fen,
                expires_at=expires,
                mode=mode,
            )
        case "expire":
            people = tuple(p for i, p in enumerate(PEOPLE) if b >> i & 1) or ("P1",)
            return hq(ExpireSubsidy, rid, person_ids=people)
        case "ticket":
            return hq(
                SellTicket,
                rid,
                card_uid=uid,
                ticket_id=pick(("T1", "T2", "T3"), b),
                kind="count",
                service="swim",
                price_fen=step.fen,
                uses=10,
            )
        case _:
            return hq(SetLimits, rid, card_uid=uid, txn_limit_fen=step.fen, daily_limit_fen=None)


def site_purchase(run: Run, step: Step) -> None:
    """A POS sale at a site, online or offline (spending from a stale, higher balance)."""
    uid = run.uid(step.a)
    card = run.books.cards.get(uid)
    if card is None or card.status is not CardStatus.ACTIVE:
        return
    balance = run.books.running.get(card.person_id, Balance())
    stale = step.b % 3001 if step.flag else 0
    expiry = run.books.accounts.get(card.person_id)
    view = Account(
        person_id=card.person_id,
        cash_fen=balance.cash_fen + stale,
        subsidy_fen=balance.subsidy_fen,
        subsidy_expires_at=None if expiry is None else expiry.subsidy_expires_at,
    )
    amount = step.c % 20000 + 1
    split = split_payment(amount, available_purses(view, Purses(), run.now))
    run.n += 1
    run.books.record_purchase(
        Purchase(
            id=f"SZ-FUTIAN:1:{run.n}",
            seq=run.n,
            site="SZ-FUTIAN",
            at=run.now,
            received_at=run.now,
            offline=step.flag,
            card_uid=uid,
            approved=split is not None,
            reason="ok" if split is not None else "insufficient_balance",
            amount=amount,
            cash_fen=0 if split is None else split.cash_fen,
            subsidy_fen=0 if split is None else split.subsidy_fen,
        )
    )


def replay_or_reuse(run: Run, step: Step) -> None:
    """Ask an earlier request again (same content, or other content under its id)."""
    if not run.asked:
        return
    first, result = pick(run.asked, step.a)
    before = snapshot(run.books)
    if step.action == "replay":
        assert run.books.execute(first, run.now) == result
    else:
        other = hq(Recharge, first.request_id, card_uid=UIDS[0], amount_fen=7, method="cash")
        again = run.books.execute(other, run.now)
        assert isinstance(again, Rejected) and again.reason_code == "request_id_reused"
    assert snapshot(run.books) == before


def snapshot(books: Books) -> tuple[object, ...]:
    return (
        len(books.ledger),
        dict(books.running),
        dict(books.cards),
        dict(books.tickets),
        dict(books.blacklist),
        len(books.results),
    )


def check_effects(run: Run, request: AnyRequest, result: Result, before: Books) -> None:
    """The per-operation properties of an accepted result."""
    if not isinstance(result, Accepted):
        return
    books = run.books
    for posting in result.postings:
        if posting.cash_fen < 0:
            assert books.running[posting.person_id].cash_fen >= 0, (request, posting)
    if isinstance(request, CancelCard):
        person = before.cards[request.card_uid].person_id
        held = before.running.get(person, Balance())
        assert books.running[person] == Balance()
        mine = [p for p in result.postings if p.person_id == person]
        assert {p.kind for p in mine} <= {"refund_cash", "refund_deposit", "fee", "subsidy_forfeit"}
        assert sum(p.cash_fen for p in mine) == -held.cash_fen
        assert sum(p.deposit_fen for p in mine) == -held.deposit_fen
        assert sum(p.subsidy_fen for p in mine) == -held.subsidy_fen
        assert not [c for c in books.cards.values() if c.person_id == person and c.status in LIVE]
    if isinstance(request, Reissue):
        person = before.cards[request.card_uid].person_id
        moved = Balance(
            cash_fen=sum(p.cash_fen for p in result.postings),
            deposit_fen=sum(p.deposit_fen for p in result.postings),
        )
        old = before.running.get(person, Balance())
        assert books.running[person] == old.plus(
            cash_fen=moved.cash_fen, deposit_fen=moved.deposit_fen
        )
        assert {p.kind for p in result.postings} <= {"fee", "deposit"}
        assert books.tickets == before.tickets
        assert books.cards[request.new_card_uid].person_id == person
        assert books.cards[request.card_uid].status is CardStatus.REPLACED


def check_books(books: Books) -> None:
    """The properties that hold after every step."""
    for person in {*PEOPLE, *books.running}:
        assert books.running.get(person, Balance()) == books.ledger_sum(person), person
        assert books.running.get(person, Balance()).deposit_fen >= 0
    for original in books.purchases.values():
        assert all(a.cash_fen >= 0 and a.subsidy_fen >= 0 for a in original.adjustments)
        assert 0 <= original.given_back_fen <= original.amount_fen
    for uid, card in books.cards.items():
        if card.status in LIST_REASONS:
            assert uid in books.blacklist, card
        if card.status is CardStatus.ACTIVE:
            assert uid not in books.blacklist, card


def copy(books: Books) -> Books:
    return Books(
        persons=books.persons,
        cards=dict(books.cards),
        tickets=dict(books.tickets),
        running=dict(books.running),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(STEPS, min_size=15, max_size=80),
    cancel_fee=st.sampled_from([0, 500, 3000]),
    reissue_fee=st.sampled_from([0, 0, 300]),
)
def test_any_sequence_of_operations_keeps_the_books_whole(
    steps: list[Step], cancel_fee: int, reissue_fee: int
) -> None:
    books = Books(
        persons={p: Person(id=p, name=p) for p in PEOPLE},
        policy=Policy(cancel_fee_fen=cancel_fee, reissue_fee_fen=reissue_fee),
    )
    run = Run(books=books)
    for step in steps:
        run.now += timedelta(hours=step.hours)
        if step.action == "purchase":
            site_purchase(run, step)
        elif step.action in {"replay", "reuse"}:
            replay_or_reuse(run, step)
        else:
            request = next_request(run, step)
            before = copy(books)
            result = books.execute(request, run.now)
            run.asked.append((request, result))
            event(f"{step.action}: {getattr(result, 'reason_code', 'accepted')}")
            check_effects(run, request, result, before)
        check_books(books)
