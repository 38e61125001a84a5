"""Builders for central core operation tests, and ``Books``: an in-memory shell.

``Books`` does what central's store does around :func:`central.core.operations.decide` —
load the state a request names, replay a stored result or decide, apply the effects, keep
running balances the way the ``accounts`` table does — so property tests can check the
ledger invariant without I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from msgspec.structs import replace

from central.core.effects import Accepted, AuditEntry, Posting, PutAccount, PutCard, Result
from central.core.idempotency import StoredResult, remember, replay
from central.core.ledger import entries_for
from central.core.operations import AnyRequest, decide, state_keys
from central.core.request import Request
from central.core.state import (
    Adjustment,
    Balance,
    BlacklistEntry,
    CardType,
    Holder,
    OriginalPurchase,
    PaymentUse,
    Policy,
    State,
)
from edge_agent.core.model import Account, Card, CardStatus, Person, Ticket
from protocol.messages import Purchase

R = TypeVar("R", bound=Request)

#: Wednesday 14:00 in Shanghai.
NOW = datetime(2026, 3, 4, 6, 0, tzinfo=UTC)
UID_A, UID_B, UID_C = "04A1B2C3", "04B2C3D4", "04C3D4E5"
STANDARD = CardType(name="standard", deposit_fen=2000)
VIP = CardType(name="vip", deposit_fen=5000)
TYPES = {"standard": STANDARD, "vip": VIP}


def req(cls: type[R], request_id: str = "r-1", **fields: Any) -> R:
    """A request from an HQ operator on the web dashboard."""
    return cls(request_id=request_id, operator="op-zhang", source="hq:web", **fields)


def card(
    uid: str = UID_A,
    person_id: str = "P1",
    status: CardStatus = CardStatus.ACTIVE,
    card_type: str = "standard",
) -> Card:
    """A card row."""
    return Card(uid=uid, person_id=person_id, status=status, card_type=card_type)


def holder(
    person_id: str = "P1",
    *,
    cash: int = 0,
    subsidy: int = 0,
    deposit: int = 0,
    cards: tuple[Card, ...] = (),
    tickets: tuple[Ticket, ...] = (),
    account: Account | None = None,
    no_account: bool = False,
) -> Holder:
    """A person with purses and cards (and an account row unless ``no_account``)."""
    return Holder(
        person=Person(id=person_id, name=f"name-{person_id}"),
        account=None if no_account else account or Account(person_id=person_id),
        balance=Balance(cash_fen=cash, subsidy_fen=subsidy, deposit_fen=deposit),
        cards=cards,
        tickets=tickets,
    )


def world(
    *holders: Holder,
    cards: tuple[Card, ...] = (),
    blacklist: tuple[BlacklistEntry, ...] = (),
    originals: tuple[OriginalPurchase, ...] = (),
    payments: tuple[PaymentUse, ...] = (),
    tickets: tuple[Ticket, ...] = (),
    policy: Policy | None = None,
) -> State:
    """A state holding ``holders`` and all their cards (plus ``cards``)."""
    every = [c for h in holders for c in h.cards] + list(cards)
    return State(
        cards={c.uid: c for c in every},
        holders={h.person.id: h for h in holders},
        blacklist={b.uid: b for b in blacklist},
        originals={o.record_id: o for o in originals},
        payments={p.pay_ref: p for p in payments},
        tickets={t.id: t for t in tickets},
        card_types=TYPES,
        policy=policy or Policy(),
    )


def listed(uid: str, reason: str = "lost", at: datetime = NOW) -> BlacklistEntry:
    """A blacklist row."""
    return BlacklistEntry(uid=uid, reason=reason, effective_at=at)


def purchase(
    record_id: str = "SZ-1-7", *, amount: int = 3800, cash: int = 3000, subsidy: int = 800
) -> OriginalPurchase:
    """An approved purchase by P1."""
    return OriginalPurchase(
        record_id=record_id,
        person_id="P1",
        site="SZ-FUTIAN",
        at=NOW,
        approved=True,
        amount_fen=amount,
        cash_fen=cash,
        subsidy_fen=subsidy,
    )


def accepted(result: Result) -> Accepted:
    """``result``, asserted accepted."""
    assert isinstance(result, Accepted), result
    return result


def posted(result: Result) -> dict[str, Posting]:
    """The postings of an accepted result by kind."""
    return {p.kind: p for p in accepted(result).postings}


def cards_written(result: Result) -> dict[str, Card]:
    """The card rows an accepted result writes, by UID."""
    return {w.card.uid: w.card for w in accepted(result).master if isinstance(w, PutCard)}


# -- the in-memory shell --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """A ledger row as the store keeps it."""

    entry_id: str
    kind: str
    person_id: str
    cash_fen: int = 0
    subsidy_fen: int = 0
    deposit_fen: int = 0


@dataclass
class Books:
    """Master data, the ledger, running balances, the blacklist, audit and stored results."""

    persons: dict[str, Person]
    policy: Policy = field(default_factory=Policy)
    cards: dict[str, Card] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    tickets: dict[str, Ticket] = field(default_factory=dict)
    ledger: list[Row] = field(default_factory=list)
    running: dict[str, Balance] = field(default_factory=dict)
    blacklist: dict[str, BlacklistEntry] = field(default_factory=dict)
    purchases: dict[str, OriginalPurchase] = field(default_factory=dict)
    payments: dict[str, PaymentUse] = field(default_factory=dict)
    results: dict[str, StoredResult] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)

    def holder(self, person_id: str) -> Holder:
        """A person as :class:`State` holds them."""
        return Holder(
            person=self.persons[person_id],
            account=self.accounts.get(person_id),
            balance=self.running.get(person_id, Balance()),
            cards=tuple(c for c in self.cards.values() if c.person_id == person_id),
            tickets=tuple(t for t in self.tickets.values() if t.person_id == person_id),
        )

    def state_for(self, request: AnyRequest) -> State:
        """What the store would load for ``request``."""
        keys = state_keys(request)
        people = set(keys.person_ids) & set(self.persons)
        people |= {self.cards[u].person_id for u in keys.card_uids if u in self.cards}
        people |= {self.purchases[o].person_id for o in keys.original_ids if o in self.purchases}
        holders = {p: self.holder(p) for p in sorted(people)}
        cards = {u: self.cards[u] for u in keys.card_uids if u in self.cards}
        for h in holders.values():
            cards |= {c.uid: c for c in h.cards}
        return State(
            cards=cards,
            holders=holders,
            blacklist={u: self.blacklist[u] for u in {*cards, *keys.card_uids} & {*self.blacklist}},
            originals={o: self.purchases[o] for o in keys.original_ids if o in self.purchases},
            payments={r: self.payments[r] for r in keys.pay_refs if r in self.payments},
            tickets={t: self.tickets[t] for t in keys.ticket_ids if t in self.tickets},
            card_types=TYPES,
            policy=self.policy,
        )

    def execute(self, request: AnyRequest, now: datetime) -> Result:
        """Replay or decide ``request``, apply its effects once, store its result."""
        again = replay(request, self.results.get(request.request_id))
        if again is not None:
            return again
        result = decide(request, self.state_for(request), now)
        if isinstance(result, Accepted):
            self.apply(result)
        self.results[request.request_id] = remember(request, result)
        return result

    def apply(self, result: Accepted) -> None:
        """Apply the effects of an accepted operation (one transaction in the store)."""
        for write in result.master:
            if isinstance(write, PutCard):
                self.cards[write.key] = write.card
            elif isinstance(write, PutAccount):
                self.accounts[write.key] = write.account
            else:
                self.tickets[write.key] = write.ticket
        for posting in result.postings:
            self._append(
                Row(
                    posting.entry_id,
                    posting.kind,
                    posting.person_id,
                    posting.cash_fen,
                    posting.subsidy_fen,
                    posting.deposit_fen,
                )
            )
            if posting.pay_ref is not None:
                self.payments[posting.pay_ref] = PaymentUse(
                    pay_ref=posting.pay_ref,
                    person_id=posting.person_id,
                    amount_fen=posting.cash_fen + posting.deposit_fen,
                    entry_id=posting.entry_id,
                    at=posting.at,
                )
            if posting.ref in self.purchases and posting.kind in {"correction", "refund"}:
                original = self.purchases[posting.ref]
                adjustment = Adjustment(
                    ref=posting.entry_id, cash_fen=posting.cash_fen, subsidy_fen=posting.subsidy_fen
                )
                self.purchases[posting.ref] = replace(
                    original, adjustments=(*original.adjustments, adjustment)
                )
        for change in result.blacklist:
            if change.op == "add":
                self.blacklist[change.card_uid] = BlacklistEntry(
                    uid=change.card_uid, reason=change.reason, effective_at=change.effective_at
                )
            else:
                self.blacklist.pop(change.card_uid, None)
        self.audit.append(result.audit)

    def record_purchase(self, sale: Purchase) -> None:
        """A site's purchase record reaching central (through :func:`entries_for`)."""
        holder = self.cards[sale.card_uid].person_id if sale.card_uid else None
        for entry in entries_for(sale, holder):
            self._append(
                Row(sale.id, entry.kind, entry.person_id, entry.cash_fen, entry.subsidy_fen)
            )
        if sale.approved and holder is not None:
            self.purchases[sale.id] = OriginalPurchase(
                record_id=sale.id,
                person_id=holder,
                site=sale.site,
                at=sale.at,
                approved=True,
                amount_fen=sale.amount,
                cash_fen=sale.cash_fen,
                subsidy_fen=sale.subsidy_fen,
            )

    def _append(self, row: Row) -> None:
        # The ledger's UNIQUE (record_id, kind): a second copy is a bug, not a no-op, here.
        assert all((r.entry_id, r.kind) != (row.entry_id, row.kind) for r in self.ledger), row
        self.ledger.append(row)
        self.running[row.person_id] = self.running.get(row.person_id, Balance()).plus(
            cash_fen=row.cash_fen, subsidy_fen=row.subsidy_fen, deposit_fen=row.deposit_fen
        )

    def ledger_sum(self, person_id: str) -> Balance:
        """The person's purses recomputed from the ledger alone."""
        rows = [r for r in self.ledger if r.person_id == person_id]
        return Balance(
            cash_fen=sum(r.cash_fen for r in rows),
            subsidy_fen=sum(r.subsidy_fen for r in rows),
            deposit_fen=sum(r.deposit_fen for r in rows),
        )
