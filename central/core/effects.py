"""What an operation decides: ``Accepted`` with its effects, or ``Rejected`` with a reason.

Every card and money operation (see :mod:`central.core.operations`) is a pure function
``(request, state, now) -> Result``. It never writes anything; an :class:`Accepted` lists
the effects the caller applies **atomically, in one transaction**:

- ``master``: new rows of master data (a card, an account's limits, a ticket) — central is
  the only writer of master data (brief, invariant 4), and these are its writes;
- ``postings``: new ledger entries — every balance is a sum of the ledger (invariant 5), so
  an operation that moves money says so here and nowhere else;
- ``blacklist``: changes for the next blacklist delta (one delta per operation);
- ``audit``: one line of who did what to which target, from where, before and after.

Both results encode and decode with msgspec (tagged ``outcome``), so the caller can store
them by request id and answer a retried request with the very same bytes
(:mod:`central.core.idempotency`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct

from edge_agent.core.model import Account, Card, Person, Ticket
from protocol.messages import BlacklistChange, RechargeMethod

#: Why an operation was refused. Stable strings: the API returns them and clients branch
#: on them; the message next to them is for people.
ReasonCode = Literal[
    "card_unknown",
    "card_already_bound",
    "card_retired",
    "card_not_active",
    "card_not_lost",
    "card_not_frozen",
    "card_not_present",
    "same_card",
    "person_unknown",
    "person_has_card",
    "person_mismatch",
    "card_type_unknown",
    "insufficient_balance",
    "balance_negative",
    "amount_invalid",
    "pay_ref_required",
    "pay_ref_used",
    "original_not_found",
    "original_not_approved",
    "already_corrected",
    "correction_exceeds_original",
    "refund_exceeds_original",
    "reason_required",
    "ticket_exists",
    "ticket_invalid",
    "batch_invalid",
    "expiry_invalid",
    "request_id_reused",
]

#: Ledger entry kinds written by operations (site records write ``purchase``,
#: ``ticket_use``, ``recharge``, ``refund``, ``correction``; see :mod:`central.core.ledger`).
PostingKind = Literal[
    "deposit",  # 押金 taken when a card is issued (deposit purse, never spendable)
    "recharge",  # money in at a desk or HQ (cash purse)
    "refund_cash",  # cash purse paid out when an account is cancelled
    "refund_deposit",  # deposit paid back when an account is cancelled
    "fee",  # kept by the operator: cancel fee (deposit first, then cash) or reissue fee
    "subsidy_grant",  # 补贴 granted by a batch
    "subsidy_expire",  # unspent subsidy removed at expiry or at a monthly reset
    "subsidy_restore",  # gives back what an expiry took that was in fact spent before it
    "subsidy_forfeit",  # subsidy given up when an account is cancelled
    "correction",  # 消费更正: part of a purchase given back
    "refund",  # goods returned: part of a purchase given back
    "ticket_sale",  # the price of a count or period ticket (cash purse)
    "opening",  # 期初余额: a balance carried over from the previous system by an import
]

Scalar = str | int | bool | None


class Posting(Struct, frozen=True, kw_only=True):
    """One ledger entry an operation appends: signed fen per purse.

    Purses: ``cash`` (personal, refundable, spendable), ``subsidy`` (employer money, spent
    first, may expire), ``deposit`` (押金: held against the card, **never spendable** — it is
    its own purse so no terminal can ever spend it, and it is paid back only by a cancel).

    ``entry_id`` + ``kind`` is unique in the ledger: ``op:{request_id}`` for an operation on
    one person, ``op:{request_id}:{person_id}`` for a batch. The caller stores it where the
    ledger keeps record ids, so even a lost idempotency row cannot post an entry twice.
    ``ref`` names what this entry adjusts (the original purchase record, the expiry entry a
    restore gives back to) — a correction is a new entry pointing at the old one, never an
    edit of it.
    """

    entry_id: str
    person_id: str
    kind: PostingKind
    at: datetime
    cash_fen: int = 0
    subsidy_fen: int = 0
    deposit_fen: int = 0
    ticket_id: str | None = None
    ticket_uses: int = 0
    ref: str | None = None
    card_uid: str | None = None
    method: RechargeMethod | None = None
    pay_ref: str | None = None


class PutPerson(Struct, frozen=True, kw_only=True, tag="person"):
    """Upsert of a person row (key: person id)."""

    person: Person

    @property
    def entity(self) -> str:
        """The ``master`` table's entity name."""
        return "person"

    @property
    def key(self) -> str:
        """The ``master`` table's key."""
        return self.person.id


class PutCard(Struct, frozen=True, kw_only=True, tag="card"):
    """Upsert of a card row (key: its UID)."""

    card: Card

    @property
    def entity(self) -> str:
        """The ``master`` table's entity name."""
        return "card"

    @property
    def key(self) -> str:
        """The ``master`` table's key."""
        return self.card.uid


class PutAccount(Struct, frozen=True, kw_only=True, tag="account"):
    """Upsert of an account's master row (key: person id): limits and subsidy expiry only.

    Its purse fields are always 0: purses are ledger sums, rendered when published.
    """

    account: Account

    @property
    def entity(self) -> str:
        """The ``master`` table's entity name."""
        return "account"

    @property
    def key(self) -> str:
        """The ``master`` table's key."""
        return self.account.person_id


class PutTicket(Struct, frozen=True, kw_only=True, tag="ticket"):
    """Upsert of a ticket row (key: ticket id). Count tickets carry the uses sold;
    uses taken are ledger entries (``ticket_use``) subtracted when rendered."""

    ticket: Ticket

    @property
    def entity(self) -> str:
        """The ``master`` table's entity name."""
        return "ticket"

    @property
    def key(self) -> str:
        """The ``master`` table's key."""
        return self.ticket.id


MasterWrite = PutPerson | PutCard | PutAccount | PutTicket


class AuditEntry(Struct, frozen=True, kw_only=True):
    """Who did what to which target, from where, and when; ``before`` / ``after`` summarise
    the target's state (status, purses, limits …) so the log reads without the ledger."""

    request_id: str
    operator: str
    source: str
    action: str
    target: str
    at: datetime
    outcome: Literal["accepted", "rejected"] = "accepted"
    reason_code: str | None = None
    before: dict[str, Scalar] = {}
    after: dict[str, Scalar] = {}
    note: str = ""


class Skipped(Struct, frozen=True, kw_only=True):
    """A person a batch left out, and why (never silently)."""

    person_id: str
    reason: str


class Accepted(Struct, frozen=True, kw_only=True, tag="accepted", tag_field="outcome"):
    """The operation goes through: apply every effect in one transaction."""

    request_id: str
    audit: AuditEntry
    master: tuple[MasterWrite, ...] = ()
    postings: tuple[Posting, ...] = ()
    blacklist: tuple[BlacklistChange, ...] = ()
    skipped: tuple[Skipped, ...] = ()


class Rejected(Struct, frozen=True, kw_only=True, tag="rejected", tag_field="outcome"):
    """The operation is refused; nothing changes. ``reason_code`` is for programs,
    ``message`` for the operator."""

    request_id: str
    reason_code: ReasonCode
    message: str


Result = Accepted | Rejected


def rejection_audit(
    rejected: Rejected, *, operator: str, source: str, action: str, target: str, at: datetime
) -> AuditEntry:
    """The audit line of a refused operation (refusals are audited too: who tried what)."""
    return AuditEntry(
        request_id=rejected.request_id,
        operator=operator,
        source=source,
        action=action,
        target=target,
        at=at,
        outcome="rejected",
        reason_code=rejected.reason_code,
        note=rejected.message,
    )
