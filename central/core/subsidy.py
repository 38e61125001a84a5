"""Subsidy (补贴): batch grants, expiry, monthly reset, and late spending across a reset.

Design (where the issue leaves room):

- A batch grants one amount to a list of persons. The list is checked as a whole: an
  unknown person or a duplicate line refuses the batch (a payroll file with a wrong line
  is fixed and sent again, not half-applied). A person whose account is closed (销户) is
  **skipped and listed** in the result — never silently granted or dropped.
- An account has one subsidy expiry (``Account.subsidy_expires_at``; the edges refuse to
  spend subsidy from that instant). Unspent subsidy never just vanishes: it leaves the
  ledger by an explicit ``subsidy_expire`` entry —
  * ``mode="reset"`` (monthly reset, 月清): the whole remainder expires at the batch's time,
    then the new grant — the month's uncollected subsidy is on record, per person;
  * ``mode="add"``: the grant adds to the remainder, and the expiry becomes the later of
    the two; a remainder already past its expiry is first expired, so a new grant never
    revives it;
  * :func:`expire_subsidy`: a sweep (run by a scheduler) that expires remainders past
    their expiry, for accounts that got no new grant.
- A debt (negative subsidy, from offline spending merged late) is never expired or
  forgiven: only a positive remainder expires.
- **Late spending across an expiry.** An offline site may spend subsidy before an expiry
  and report it after; the expiry then took money that had in fact been spent.
  :func:`restore_for_late_spend` gives it back with a ``subsidy_restore`` entry that
  references the expiry entry (capped at what that expiry took), so the books end as if
  the purchase had arrived in time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from msgspec import Struct

from central.core.effects import Accepted, MasterWrite, Posting, PutAccount, Rejected, Skipped
from central.core.request import Request, audit, entry_id, reject, utc
from central.core.state import Holder, State
from edge_agent.core.model import Account
from protocol.messages import MAX_FEN, Name, UtcTime

Result = Accepted | Rejected


class GrantSubsidy(Request, frozen=True, kw_only=True, tag="subsidy.grant"):
    """Grant ``amount_fen`` to each of ``person_ids``, usable until ``expires_at``
    (None: no expiry). The request id is the batch id."""

    person_ids: tuple[Name, ...]
    amount_fen: int
    expires_at: UtcTime | None = None
    mode: Literal["add", "reset"] = "add"


class ExpireSubsidy(Request, frozen=True, kw_only=True, tag="subsidy.expire"):
    """Expire the remainders of ``person_ids`` that are past their expiry."""

    person_ids: tuple[Name, ...]


class ExpiryFact(Struct, frozen=True, kw_only=True):
    """A ``subsidy_expire`` (or ``subsidy_forfeit``) entry as the ledger holds it, and what
    ``subsidy_restore`` entries have given back of it so far."""

    entry_id: str
    person_id: str
    at: datetime
    expired_fen: int
    restored_fen: int = 0


def _check_batch(request: GrantSubsidy | ExpireSubsidy, state: State) -> Rejected | None:
    ids = request.person_ids
    if not ids:
        return reject(request, "batch_invalid", "the batch names nobody")
    if len(set(ids)) != len(ids):
        twice = sorted({p for p in ids if ids.count(p) > 1})
        return reject(request, "batch_invalid", f"listed more than once: {', '.join(twice[:5])}")
    unknown = [p for p in ids if p not in state.holders]
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        return reject(request, "person_unknown", f"no person {', '.join(unknown[:5])}{more}")
    return None


def _expired(account: Account | None, now: datetime) -> bool:
    return (
        account is not None
        and account.subsidy_expires_at is not None
        and (account.subsidy_expires_at <= now)
    )


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    """The later of two expiries, where None means never."""
    if a is None or b is None:
        return None
    return max(a, b)


def _with_expiry(holder: Holder, expires_at: datetime | None) -> Account:
    base = holder.master_account()
    return Account(
        person_id=base.person_id,
        subsidy_expires_at=None if expires_at is None else utc(expires_at),
        txn_limit_fen=base.txn_limit_fen,
        daily_limit_fen=base.daily_limit_fen,
    )


def grant_subsidy(request: GrantSubsidy, state: State, now: datetime) -> Result:
    """A subsidy batch. Refused: ``amount_invalid``, ``batch_invalid`` (empty, duplicates),
    ``expiry_invalid`` (not after now), ``person_unknown``. Closed accounts are skipped."""
    if not 0 < request.amount_fen <= MAX_FEN:
        return reject(request, "amount_invalid", f"a grant is 1..{MAX_FEN} fen")
    refused = _check_batch(request, state)
    if refused is not None:
        return refused
    if request.expires_at is not None and request.expires_at <= now:
        return reject(request, "expiry_invalid", "the subsidy would expire before it is granted")
    at = utc(now)
    postings: list[Posting] = []
    master: list[MasterWrite] = []
    skipped: list[Skipped] = []
    expired_total = 0
    for person_id in request.person_ids:
        holder = state.holders[person_id]
        if holder.closed:
            skipped.append(Skipped(person_id=person_id, reason="account_closed"))
            continue
        key = entry_id(request, person_id)
        remainder = holder.balance.subsidy_fen
        old = holder.account
        expire = remainder > 0 and (request.mode == "reset" or _expired(old, now))
        if expire:
            expired_total += remainder
            postings.append(
                Posting(
                    entry_id=key,
                    person_id=person_id,
                    kind="subsidy_expire",
                    at=at,
                    subsidy_fen=-remainder,
                    ref=request.request_id,
                )
            )
        postings.append(
            Posting(
                entry_id=key,
                person_id=person_id,
                kind="subsidy_grant",
                at=at,
                subsidy_fen=request.amount_fen,
                ref=request.request_id,
            )
        )
        carried = remainder > 0 and not expire and old is not None
        expiry = (
            _later(old.subsidy_expires_at, request.expires_at)
            if carried and old is not None
            else request.expires_at
        )
        if old is None or old.subsidy_expires_at != expiry:
            master.append(PutAccount(account=_with_expiry(holder, expiry)))
    granted = len(request.person_ids) - len(skipped)
    return Accepted(
        request_id=request.request_id,
        master=tuple(master),
        postings=tuple(postings),
        skipped=tuple(skipped),
        audit=audit(
            request,
            f"batch:{request.request_id}",
            now,
            {"persons": len(request.person_ids)},
            {
                "mode": request.mode,
                "granted": granted,
                "granted_fen": granted * request.amount_fen,
                "expired_fen": expired_total,
                "skipped": len(skipped),
                "expires_at": None
                if request.expires_at is None
                else utc(request.expires_at).isoformat(),
            },
        ),
    )


def expire_subsidy(request: ExpireSubsidy, state: State, now: datetime) -> Result:
    """Expire every listed remainder past its expiry with a ``subsidy_expire`` entry; the
    others are listed as skipped (``not_expired``, ``nothing_to_expire``). Refused:
    ``batch_invalid``, ``person_unknown``."""
    refused = _check_batch(request, state)
    if refused is not None:
        return refused
    postings: list[Posting] = []
    skipped: list[Skipped] = []
    for person_id in request.person_ids:
        holder = state.holders[person_id]
        remainder = holder.balance.subsidy_fen
        if not _expired(holder.account, now):
            skipped.append(Skipped(person_id=person_id, reason="not_expired"))
        elif remainder <= 0:
            skipped.append(Skipped(person_id=person_id, reason="nothing_to_expire"))
        else:
            postings.append(
                Posting(
                    entry_id=entry_id(request, person_id),
                    person_id=person_id,
                    kind="subsidy_expire",
                    at=utc(now),
                    subsidy_fen=-remainder,
                    ref=request.request_id,
                )
            )
    return Accepted(
        request_id=request.request_id,
        postings=tuple(postings),
        skipped=tuple(skipped),
        audit=audit(
            request,
            f"batch:{request.request_id}",
            now,
            {"persons": len(request.person_ids)},
            {"expired": len(postings), "expired_fen": -sum(p.subsidy_fen for p in postings)},
        ),
    )


def restore_for_late_spend(
    expiry: ExpiryFact, *, record_id: str, spent_at: datetime, subsidy_fen: int, now: datetime
) -> Posting | None:
    """The ``subsidy_restore`` owed when site record ``record_id`` spent ``subsidy_fen`` of
    subsidy at ``spent_at`` — before ``expiry`` (the first expiry of that person after the
    spend) — but reached central after it. None if nothing is owed.

    Never gives back more than the expiry took (minus earlier restores). Its ledger key is
    ``restore:{record_id}``, so the same late record restores once.
    """
    if subsidy_fen <= 0 or spent_at >= expiry.at:
        return None
    amount = min(subsidy_fen, expiry.expired_fen - expiry.restored_fen)
    if amount <= 0:
        return None
    return Posting(
        entry_id=f"restore:{record_id}",
        person_id=expiry.person_id,
        kind="subsidy_restore",
        at=utc(now),
        subsidy_fen=amount,
        ref=expiry.entry_id,
    )
