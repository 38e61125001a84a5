"""Two-phase recharge, keyed by payment reference (``pay_ref``).

The state of one payment is a :class:`Recharge` value the caller stores (one row per
``pay_ref``). Each step is a pure function from that value (or its absence) to a
:class:`RechargeDecision` carrying the value to store next:

- **prepare** (before the kiosk takes money) reserves nothing. Refused for the card checks
  of :mod:`edge_agent.core.checks`, ``amount_invalid`` (``0 < amount <=
  SitePolicy.recharge_cap_fen``), ``recharge_not_allowed`` while offline unless
  ``OfflinePolicy.allow_recharge``, and ``offline_too_long``. The same ``pay_ref`` prepared
  again with the same card, amount and method is answered as the first time (ok, nothing
  new stored) — checked *before* the card, like a retransmission; with different content it
  is refused ``duplicate_payment``.
- **commit** (the money was taken) credits the cash purse exactly once. No card or offline
  check: money taken is never left uncredited (a card lost in between still has its account,
  which the replacement card inherits). Unknown ``pay_ref`` → ``unknown_payment``; aborted →
  ``already_aborted``; committed already → ``ok=True`` with reason ``already_committed`` and
  the original figures, and nothing credited, so a retrying kiosk sees success.
- **abort** (no money was taken) is idempotent: aborting again → ``ok=True``,
  ``already_aborted``; a ``pay_ref`` never seen → ok (the PREPARE was lost; nothing to undo,
  nothing stored); a committed one is refused ``already_committed`` — the credit stands.

A payment prepared and neither committed nor aborted within
``SitePolicy.recharge_prepare_timeout_s`` is a 单边账 candidate: :func:`overdue_recharges`
lists them for reconciliation against the payment statement. They stay prepared: only a
COMMIT, an ABORT or central's reconciliation finishes them.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from msgspec import Struct, structs

from edge_agent.core.checks import CardFacts, OfflineState, Outcome, card_refusal, offline_too_long
from edge_agent.core.model import Account, SitePolicy
from edge_agent.core.purses import Purses, available_purses
from edge_agent.core.reasons import Context, Reason, render
from edge_agent.core.sitetime import require_aware

RechargeMethod = Literal["cash", "bank", "online"]


class RechargeState(enum.StrEnum):
    """Where one payment is in the two phases."""

    PREPARED = "prepared"
    COMMITTED = "committed"
    ABORTED = "aborted"


class Recharge(Struct, frozen=True, kw_only=True):
    """One payment, as the caller stores it (keyed by ``pay_ref``).

    ``finished_at`` is when it was committed or aborted. The result of a commit is kept as
    ``balance_after_fen`` (cash + usable subsidy right after the credit) so a repeated commit
    answers with the original figures; ``abort_reason`` is the kiosk's reason.
    """

    pay_ref: str
    uid: str
    person_id: str
    amount_fen: int
    method: RechargeMethod
    prepared_at: datetime
    state: RechargeState = RechargeState.PREPARED
    finished_at: datetime | None = None
    balance_after_fen: int | None = None
    abort_reason: str = ""


class RechargeRequest(Struct, frozen=True, kw_only=True):
    """A RECHARGE_PREPARE: credit ``amount_fen`` to card ``uid`` under ``pay_ref``."""

    pay_ref: str
    uid: str
    amount_fen: int
    method: RechargeMethod


class PrepareFacts(Struct, frozen=True, kw_only=True):
    """The card, the payment already stored under the request's ``pay_ref`` (if any), and
    the offline state (None while online)."""

    card: CardFacts
    existing: Recharge | None = None
    offline: OfflineState | None = None


class CommitFacts(Struct, frozen=True, kw_only=True):
    """The payment stored under ``pay_ref`` (None: never prepared here) and, for the balance
    shown after the credit, the person's account and pending local deltas."""

    existing: Recharge | None = None
    account: Account | None = None
    pending: Purses = Purses()


class RechargeDecision(Outcome, frozen=True, kw_only=True):
    """The answer to one RECHARGE_* request.

    ``recharge`` is the payment's state after this step. When ``changed`` is True the caller
    stores it (insert or update by ``pay_ref``) and writes the matching ``recharge.*`` record
    in the same transaction; when False nothing new happened (a refusal or a repeat).
    ``credit_fen`` is what this step credits (non-zero only for the commit that credits).
    """

    pay_ref: str
    recharge: Recharge | None = None
    changed: bool = False
    credit_fen: int = 0
    balance_after_fen: int | None = None


def prepare_recharge(
    request: RechargeRequest, facts: PrepareFacts, policy: SitePolicy, now: datetime
) -> RechargeDecision:
    """Phase 1: record the intent to take ``request.amount_fen`` under ``request.pay_ref``.
    Reserves and credits nothing. Pure; rules in the module docstring."""
    require_aware(now)
    existing = facts.existing
    if existing is not None:
        same = (existing.uid, existing.amount_fen, existing.method) == (
            request.uid,
            request.amount_fen,
            request.method,
        )
        if not same:
            return _answer(request.pay_ref, Reason.DUPLICATE_PAYMENT, ok=False, recharge=existing)
        return _repeat(existing, "prepare")

    card = facts.card.card
    refusal = card_refusal(facts.card, now)
    if refusal is not None or card is None:
        return _answer(request.pay_ref, refusal or Reason.UNKNOWN_CARD, ok=False)
    if not 0 < request.amount_fen <= policy.recharge_cap_fen:
        return _answer(
            request.pay_ref, Reason.AMOUNT_INVALID, ok=False, limit_fen=policy.recharge_cap_fen
        )
    if facts.offline is not None and not policy.offline.allow_recharge:
        return _answer(request.pay_ref, Reason.RECHARGE_NOT_ALLOWED, ok=False)
    if offline_too_long(facts.offline, policy.offline, now):
        return _answer(request.pay_ref, Reason.OFFLINE_TOO_LONG, ok=False)
    recharge = Recharge(
        pay_ref=request.pay_ref,
        uid=request.uid,
        person_id=card.person_id,
        amount_fen=request.amount_fen,
        method=request.method,
        prepared_at=now,
    )
    return _answer(
        request.pay_ref,
        Reason.OK,
        ok=True,
        context="prepare",
        recharge=recharge,
        changed=True,
        amount_fen=request.amount_fen,
    )


def commit_recharge(pay_ref: str, facts: CommitFacts, now: datetime) -> RechargeDecision:
    """Phase 2: the money was taken — credit the prepared amount to the cash purse, exactly
    once per ``pay_ref``. Pure; rules in the module docstring."""
    require_aware(now)
    existing = facts.existing
    if existing is None:
        return _answer(pay_ref, Reason.UNKNOWN_PAYMENT, ok=False)
    if existing.state != RechargeState.PREPARED:
        return _repeat(existing, "commit")
    before = available_purses(facts.account, facts.pending, now)
    after = before.total_fen + existing.amount_fen
    committed = structs.replace(
        existing, state=RechargeState.COMMITTED, finished_at=now, balance_after_fen=after
    )
    return _answer(
        pay_ref,
        Reason.OK,
        ok=True,
        context="commit",
        recharge=committed,
        changed=True,
        credit_fen=existing.amount_fen,
        amount_fen=existing.amount_fen,
        balance_fen=after,
    )


def abort_recharge(
    pay_ref: str, existing: Recharge | None, now: datetime, reason: str = ""
) -> RechargeDecision:
    """Phase 2, the other way: no money was taken. Idempotent; a committed payment is not
    aborted (``already_committed``, ``ok=False``). Pure; rules in the module docstring."""
    require_aware(now)
    if existing is None:
        return _answer(pay_ref, Reason.OK, ok=True, context="abort")
    if existing.state != RechargeState.PREPARED:
        return _repeat(existing, "abort")
    aborted = structs.replace(
        existing, state=RechargeState.ABORTED, finished_at=now, abort_reason=reason
    )
    return _answer(pay_ref, Reason.OK, ok=True, context="abort", recharge=aborted, changed=True)


def overdue_recharges(
    recharges: Iterable[Recharge], policy: SitePolicy, now: datetime
) -> list[Recharge]:
    """The payments still prepared ``recharge_prepare_timeout_s`` or longer after their
    prepare (单边账 candidates), oldest first."""
    limit = timedelta(seconds=policy.recharge_prepare_timeout_s)
    overdue = [
        r for r in recharges if r.state == RechargeState.PREPARED and now - r.prepared_at >= limit
    ]
    return sorted(overdue, key=lambda r: (r.prepared_at, r.pay_ref))


def _repeat(existing: Recharge, step: Literal["prepare", "commit", "abort"]) -> RechargeDecision:
    """The answer to a step for a payment that is already in some state: nothing changes."""
    pay_ref = existing.pay_ref
    if existing.state == RechargeState.COMMITTED:
        # A repeated COMMIT (or PREPARE) sees success; an ABORT cannot undo the credit.
        return _answer(
            pay_ref,
            Reason.ALREADY_COMMITTED,
            ok=step != "abort",
            recharge=existing,
            amount_fen=existing.amount_fen,
            balance_fen=existing.balance_after_fen,
        )
    if existing.state == RechargeState.ABORTED:
        # Aborting again is fine; committing or re-preparing an aborted payment is not.
        return _answer(pay_ref, Reason.ALREADY_ABORTED, ok=step == "abort", recharge=existing)
    # Still prepared: only a repeated PREPARE gets here.
    return _answer(
        pay_ref,
        Reason.OK,
        ok=True,
        context="prepare",
        recharge=existing,
        amount_fen=existing.amount_fen,
    )


def _answer(
    pay_ref: str,
    reason: Reason,
    *,
    ok: bool,
    context: Context | None = None,
    recharge: Recharge | None = None,
    changed: bool = False,
    credit_fen: int = 0,
    amount_fen: int | None = None,
    balance_fen: int | None = None,
    limit_fen: int | None = None,
) -> RechargeDecision:
    display = render(
        reason, context, amount_fen=amount_fen, balance_fen=balance_fen, limit_fen=limit_fen
    )
    return RechargeDecision(
        ok=ok,
        reason=reason,
        display_zh=display.zh,
        display_en=display.en,
        pay_ref=pay_ref,
        recharge=recharge,
        changed=changed,
        credit_fen=credit_fen,
        balance_after_fen=balance_fen,
    )
