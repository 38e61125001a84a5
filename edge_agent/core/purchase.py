"""POS purchase decisions: tickets first, then money from subsidy, then cash.

In order:

1. the card checks of :mod:`edge_agent.core.checks`;
2. ``0 < amount <= SitePolicy.purchase_cap_fen``, else ``amount_invalid`` (a ticket sale
   still carries the item's price: it says what the ticket paid for);
3. the current meal period's ``max_purchases`` (site-local, see
   :func:`~edge_agent.core.sitetime.current_meal_period`): a meal is a meal, so ticket
   uses count too → ``meal_limit``;
4. **tickets** for the terminal's ``service``, if it has one: a period ticket (期限票) valid
   now → approved, no money, nothing consumed; else a count ticket (计次票) valid now with
   uses left → approved, one use consumed (the one expiring soonest). A count ticket is
   stored value, so past the maximum offline duration it is refused ``offline_too_long``
   like money; a period ticket consumes nothing and goes on, like a door;
5. **money**: ``offline_too_long`` (fail closed) → ``txn_limit`` → ``daily_limit`` (site-local
   day) → the meal period's ``max_amount_fen`` → ``meal_limit`` → the offline caps per sale,
   per card per day and on total site exposure → ``offline_limit`` → the purses (subsidy
   first unless expired, then cash) → ``insufficient_funds``.

A ticket for the service that exists but cannot be used (used up, or outside its validity)
does not stop a sale: the price is paid from the purses instead (次票用完后按金额扣款). Only
if the purses cannot pay either is the refusal given as ``ticket_used_up`` /
``ticket_expired`` (with the balance shown) — that is what the cardholder needs to hear.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Literal

from msgspec import Struct

from edge_agent.core.checks import CardFacts, OfflineState, Outcome, card_refusal, offline_too_long
from edge_agent.core.model import Account, MealPeriod, SitePolicy, Ticket
from edge_agent.core.purses import Purses, available_purses, split_payment
from edge_agent.core.reasons import Context, Reason, render
from edge_agent.core.sitetime import current_meal_period, local_date, require_aware, within

TicketKind = Literal["count", "period"]
#: Sorts after every real end: a ticket without an end expires last.
_OPEN_END = datetime.max.replace(tzinfo=UTC)


class PurchaseRequest(Struct, frozen=True, kw_only=True):
    """What the till asks: ``amount_fen`` (priced by the edge in menu mode) and the
    terminal's configured ``service`` (None: this till takes no tickets)."""

    amount_fen: int
    service: str | None = None


class PurchaseFacts(Struct, frozen=True, kw_only=True):
    """Everything a purchase decision needs, from a few indexed queries.

    - ``account``: the person's purses as central published them (None: no account yet);
    - ``pending``: the sum of the edge's local deltas with ``seq > account.covers_seq``;
    - ``tickets``: the person's tickets (others' or other services' are ignored), each
      count ticket's ``remaining`` net of this edge's pending uses
      (:func:`~edge_agent.core.ledger.ticket_effect`);
    - ``spent_today_fen``: the account's approved money sales known here on the site-local
      day of ``now`` (:func:`~edge_agent.core.sitetime.local_day_bounds`), for
      ``Account.daily_limit_fen``;
    - ``meal_purchases`` / ``meal_spent_fen``: the card's approved sales (ticket uses
      included in the count) in the current meal period today
      (:func:`~edge_agent.core.sitetime.meal_period_bounds`);
    - ``offline``: None while online.
    """

    card: CardFacts
    account: Account | None = None
    pending: Purses = Purses()
    tickets: tuple[Ticket, ...] = ()
    spent_today_fen: int = 0
    meal_purchases: int = 0
    meal_spent_fen: int = 0
    offline: OfflineState | None = None


class PurchaseDecision(Outcome, frozen=True, kw_only=True):
    """A purchase decision.

    Approved with money: ``subsidy_fen + cash_fen == amount_fen``. Approved with a ticket:
    both 0, ``ticket_id`` / ``ticket_kind`` set (``ticket_remaining_after`` for a count
    ticket). Declined: both 0. ``balance_after_fen`` is cash + usable subsidy after the sale
    (unchanged when declined; None when the card was refused, so a lost card's balance is not
    shown). ``meal_period`` names the current period for the record.
    """

    amount_fen: int
    subsidy_fen: int = 0
    cash_fen: int = 0
    balance_after_fen: int | None = None
    person_id: str | None = None
    ticket_id: str | None = None
    ticket_kind: TicketKind | None = None
    ticket_remaining_after: int | None = None
    meal_period: str | None = None
    offline: bool = False


class TicketChoice(Struct, frozen=True, kw_only=True):
    """The ticket to use (None: none usable) and, when tickets for the service exist but
    none is usable, why (``ticket_used_up`` or ``ticket_expired``)."""

    ticket: Ticket | None = None
    unusable: Reason | None = None


def choose_ticket(
    tickets: Iterable[Ticket], person_id: str, service: str | None, now: datetime
) -> TicketChoice:
    """Pick the ticket for a sale of ``service`` at ``now``: a valid period ticket (the one
    ending last), else the valid count ticket with uses left that expires soonest (ties by
    id). Validity is ``[valid_from, valid_to)``."""
    if service is None:
        return TicketChoice()
    mine = [t for t in tickets if t.person_id == person_id and t.service == service]
    current = [t for t in mine if within(t.valid_from, t.valid_to, now)]
    passes = [t for t in current if t.kind == "period"]
    if passes:
        return TicketChoice(ticket=max(passes, key=lambda t: (_end(t), t.id)))
    counts = [t for t in current if t.kind == "count" and (t.remaining or 0) > 0]
    if counts:
        return TicketChoice(ticket=min(counts, key=lambda t: (_end(t), t.id)))
    if current:  # valid now, but count tickets without uses left
        return TicketChoice(unusable=Reason.TICKET_USED_UP)
    if mine:
        return TicketChoice(unusable=Reason.TICKET_EXPIRED)
    return TicketChoice()


def _end(ticket: Ticket) -> datetime:
    return _OPEN_END if ticket.valid_to is None else ticket.valid_to


def decide_purchase(
    request: PurchaseRequest, facts: PurchaseFacts, policy: SitePolicy, now: datetime
) -> PurchaseDecision:
    """Decide a sale at ``now`` (timezone-aware). Pure; rules and order in the module
    docstring. An approved money sale never takes more than the available purses, and
    ``subsidy_fen + cash_fen == amount_fen``."""
    require_aware(now)
    amount = request.amount_fen
    offline = facts.offline is not None
    card = facts.card.card
    refusal = card_refusal(facts.card, now)
    if refusal is not None or card is None:
        person = card.person_id if card is not None else None
        return _declined(refusal or Reason.UNKNOWN_CARD, amount, offline, person_id=person)
    person_id = card.person_id
    balance = available_purses(facts.account, facts.pending, now)
    period = current_meal_period(now, policy)
    base = _Base(
        amount=amount,
        offline=offline,
        person_id=person_id,
        balance_fen=balance.total_fen,
        meal=period.name if period is not None else None,
    )
    if not 0 < amount <= policy.purchase_cap_fen:
        return base.declined(Reason.AMOUNT_INVALID, limit_fen=policy.purchase_cap_fen)
    if period is not None and _meal_count_reached(period, facts.meal_purchases):
        return base.declined(Reason.MEAL_LIMIT, count=period.max_purchases)

    choice = choose_ticket(facts.tickets, person_id, request.service, now)
    ticket = choice.ticket
    if ticket is not None and ticket.kind == "period":
        return base.ticket(ticket, remaining=None, until=_last_day(ticket, policy))
    if ticket is not None:
        if offline_too_long(facts.offline, policy.offline, now):
            return base.declined(Reason.OFFLINE_TOO_LONG)
        return base.ticket(ticket, remaining=(ticket.remaining or 0) - 1, until=None)

    money_refusal = _money_refusal(amount, facts, period, policy, now)
    if money_refusal is not None:
        reason, limit = money_refusal
        return base.declined(reason, limit_fen=limit)
    split = split_payment(amount, balance)
    if split is None:
        return base.declined(choice.unusable or Reason.INSUFFICIENT_FUNDS)
    return base.paid(split)


def _meal_count_reached(period: MealPeriod, purchases: int) -> bool:
    return period.max_purchases is not None and purchases >= period.max_purchases


def _money_refusal(
    amount: int,
    facts: PurchaseFacts,
    period: MealPeriod | None,
    policy: SitePolicy,
    now: datetime,
) -> tuple[Reason, int | None] | None:
    """The first money rule ``amount`` breaks, with the limit to show, or None."""
    if offline_too_long(facts.offline, policy.offline, now):
        return Reason.OFFLINE_TOO_LONG, None
    txn_limit = facts.account.txn_limit_fen if facts.account is not None else None
    if txn_limit is not None and amount > txn_limit:
        return Reason.TXN_LIMIT, txn_limit
    daily_limit = facts.account.daily_limit_fen if facts.account is not None else None
    if daily_limit is not None and facts.spent_today_fen + amount > daily_limit:
        return Reason.DAILY_LIMIT, daily_limit
    meal_limit = period.max_amount_fen if period is not None else None
    if meal_limit is not None and facts.meal_spent_fen + amount > meal_limit:
        return Reason.MEAL_LIMIT, meal_limit
    if facts.offline is not None:
        caps = policy.offline
        if amount > caps.max_purchase_fen:
            return Reason.OFFLINE_LIMIT, caps.max_purchase_fen
        if facts.offline.card_today_fen + amount > caps.max_card_day_fen:
            return Reason.OFFLINE_LIMIT, caps.max_card_day_fen
        if facts.offline.site_exposure_fen + amount > caps.max_site_exposure_fen:
            # The site's total is not the cardholder's business: no figure on the display.
            return Reason.OFFLINE_LIMIT, None
    return None


def _last_day(ticket: Ticket, policy: SitePolicy) -> str | None:
    # valid_to is exclusive: a pass "to 2026-07-01T00:00 local" is valid through 06-30.
    if ticket.valid_to is None:
        return None
    return local_date(ticket.valid_to - timedelta(microseconds=1), policy.timezone).isoformat()


class _Base(Struct, frozen=True, kw_only=True):
    """The parts of a decision fixed once the card passed its checks."""

    amount: int
    offline: bool
    person_id: str
    balance_fen: int
    meal: str | None

    def declined(
        self, reason: Reason, *, limit_fen: int | None = None, count: int | None = None
    ) -> PurchaseDecision:
        display = render(
            reason, balance_fen=self.balance_fen, limit_fen=limit_fen, count=count, meal=self.meal
        )
        return self._decision(False, reason, display.zh, display.en)

    def ticket(
        self, ticket: Ticket, *, remaining: int | None, until: str | None
    ) -> PurchaseDecision:
        context: Context = "pass" if ticket.kind == "period" else "ticket"
        display = render(Reason.OK, context, remaining=remaining, until=until)
        return self._decision(
            True,
            Reason.OK,
            display.zh,
            display.en,
            ticket_id=ticket.id,
            ticket_kind=ticket.kind,
            ticket_remaining_after=remaining,
        )

    def paid(self, split: Purses) -> PurchaseDecision:
        after = self.balance_fen - split.total_fen
        display = render(Reason.OK, "sale", amount_fen=self.amount, balance_fen=after)
        return self._decision(
            True,
            Reason.OK,
            display.zh,
            display.en,
            subsidy_fen=split.subsidy_fen,
            cash_fen=split.cash_fen,
            balance_after_fen=after,
        )

    def _decision(
        self,
        ok: bool,
        reason: Reason,
        zh: str,
        en: str,
        *,
        subsidy_fen: int = 0,
        cash_fen: int = 0,
        balance_after_fen: int | None = None,
        ticket_id: str | None = None,
        ticket_kind: TicketKind | None = None,
        ticket_remaining_after: int | None = None,
    ) -> PurchaseDecision:
        return PurchaseDecision(
            ok=ok,
            reason=reason,
            display_zh=zh,
            display_en=en,
            amount_fen=self.amount,
            subsidy_fen=subsidy_fen,
            cash_fen=cash_fen,
            balance_after_fen=self.balance_fen if balance_after_fen is None else balance_after_fen,
            person_id=self.person_id,
            ticket_id=ticket_id,
            ticket_kind=ticket_kind,
            ticket_remaining_after=ticket_remaining_after,
            meal_period=self.meal,
            offline=self.offline,
        )


def _declined(
    reason: Reason, amount: int, offline: bool, *, person_id: str | None
) -> PurchaseDecision:
    display = render(reason)
    return PurchaseDecision(
        ok=False,
        reason=reason,
        display_zh=display.zh,
        display_en=display.en,
        amount_fen=amount,
        person_id=person_id,
        offline=offline,
    )
