"""What an operation decides from: a value the caller loads before calling it.

The caller (one store transaction) loads what a request names — see
:func:`central.core.operations.state_keys` — and builds a :class:`State`. Anything absent
from it is, to the operation, unknown: a card UID missing from ``cards`` is
``card_unknown``, an original missing from ``originals`` is ``original_not_found``.
"""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct

from edge_agent.core.model import Account, Card, CardStatus, Person, Ticket

#: Statuses of a card that still belongs to its holder (it may come back to ``active``).
LIVE = frozenset({CardStatus.ACTIVE, CardStatus.LOST, CardStatus.FROZEN})


class Balance(Struct, frozen=True, kw_only=True):
    """Fen per purse: the sums of a person's ledger entries (never stored on their own)."""

    cash_fen: int = 0
    subsidy_fen: int = 0
    deposit_fen: int = 0

    @property
    def is_zero(self) -> bool:
        """Every purse is empty."""
        return self.cash_fen == 0 and self.subsidy_fen == 0 and self.deposit_fen == 0

    def plus(self, cash_fen: int = 0, subsidy_fen: int = 0, deposit_fen: int = 0) -> Balance:
        """This balance after a posting of those amounts."""
        return Balance(
            cash_fen=self.cash_fen + cash_fen,
            subsidy_fen=self.subsidy_fen + subsidy_fen,
            deposit_fen=self.deposit_fen + deposit_fen,
        )


class Holder(Struct, frozen=True, kw_only=True):
    """A person with everything that belongs to them rather than to a card.

    The account (purses, limits) and the tickets belong to the **person**: a card is only a
    key to them. That is why a reissue moves nothing — the new card opens the same account.

    ``account`` is the master row (limits, subsidy expiry; its purse fields are ignored);
    None if the person has none yet. ``balance`` is the ledger sums. ``cards`` is every card
    ever bound to the person (any status); ``tickets`` their tickets.
    """

    person: Person
    account: Account | None = None
    balance: Balance = Balance()
    cards: tuple[Card, ...] = ()
    tickets: tuple[Ticket, ...] = ()

    @property
    def live_cards(self) -> tuple[Card, ...]:
        """Cards still the person's (active, lost or frozen)."""
        return tuple(c for c in self.cards if c.status in LIVE)

    @property
    def closed(self) -> bool:
        """销户 done: the person had cards, none is live and every purse is empty. A person
        who never had a card (imported, waiting for one) is not closed."""
        return bool(self.cards) and not self.live_cards and self.balance.is_zero

    def master_account(self) -> Account:
        """The account master row to update (a fresh one if there is none), purses zeroed:
        master data holds limits and expiry; purses are ledger sums."""
        base = self.account or Account(person_id=self.person.id)
        return Account(
            person_id=self.person.id,
            subsidy_expires_at=base.subsidy_expires_at,
            txn_limit_fen=base.txn_limit_fen,
            daily_limit_fen=base.daily_limit_fen,
        )


class CardType(Struct, frozen=True, kw_only=True):
    """A kind of card (``Card.card_type``) and the deposit (押金) it requires."""

    name: str
    deposit_fen: int = 0


class Policy(Struct, frozen=True, kw_only=True):
    """HQ's money policy for operations (set centrally; the same at every desk)."""

    #: Kept when an account is cancelled (退卡手续费): from the deposit first, then cash;
    #: never more than the two hold, so a cancel never leaves a debt.
    cancel_fee_fen: int = 0
    #: 补卡工本费, taken from the cash purse when a card is reissued.
    reissue_fee_fen: int = 0
    #: Sanity cap on one recharge (a mistyped ¥20000 for ¥200.00 is refused).
    recharge_cap_fen: int = 1_000_000
    #: The card type of a card issued by a branch intent (intents carry no type).
    default_card_type: str = "standard"
    #: Freeze a card (→ blacklist) whose account goes below zero once offline spending at
    #: several sites is merged; it is unfrozen by hand after the holder settles.
    freeze_on_negative: bool = False
    #: A terminal whose record time is this far from the edge's receipt time (online
    #: records only) is reported as ``clock_skew``.
    clock_skew_s: int = 300


class Adjustment(Struct, frozen=True, kw_only=True):
    """Money already given back for a purchase (a correction or a refund, from HQ or from a
    site record): positive fen per purse."""

    ref: str
    cash_fen: int = 0
    subsidy_fen: int = 0


class OriginalPurchase(Struct, frozen=True, kw_only=True):
    """An approved or declined purchase as central recorded it, and what was given back
    since. ``person_id`` is who was charged (the card's holder when its record was
    applied) — the one a correction credits, whatever has happened to the card since."""

    record_id: str
    person_id: str
    site: str
    at: datetime
    approved: bool
    amount_fen: int
    cash_fen: int
    subsidy_fen: int
    adjustments: tuple[Adjustment, ...] = ()

    @property
    def given_back_fen(self) -> int:
        """Everything corrections and refunds have returned so far."""
        return sum(a.cash_fen + a.subsidy_fen for a in self.adjustments)

    @property
    def remaining_fen(self) -> int:
        """What the purchase still costs the person after every adjustment."""
        return self.amount_fen - self.given_back_fen


class PaymentUse(Struct, frozen=True, kw_only=True):
    """A payment reference already credited (by a kiosk's recharge commit or an HQ
    recharge): where, to whom, how much."""

    pay_ref: str
    person_id: str
    amount_fen: int
    entry_id: str
    at: datetime


class BlacklistEntry(Struct, frozen=True, kw_only=True):
    """A UID on the current blacklist, since when (liability) and why."""

    uid: str
    reason: str
    effective_at: datetime


class State(Struct, frozen=True, kw_only=True):
    """Everything an operation may look at, keyed by what the request names.

    - ``cards``: every card UID the request names (absent = unknown);
    - ``holders``: the holder of each of those cards, and every person the request names;
    - ``blacklist``: current blacklist rows of those UIDs;
    - ``originals``: purchases a correction or refund names;
    - ``payments``: payment references already credited;
    - ``tickets``: ticket ids the request names, if they exist (for any person);
    - ``card_types`` and ``policy``: configuration.
    """

    cards: dict[str, Card] = {}
    holders: dict[str, Holder] = {}
    blacklist: dict[str, BlacklistEntry] = {}
    originals: dict[str, OriginalPurchase] = {}
    payments: dict[str, PaymentUse] = {}
    tickets: dict[str, Ticket] = {}
    card_types: dict[str, CardType] = {}
    policy: Policy = Policy()
