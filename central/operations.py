"""Card and money operations against central's store: the shell around :mod:`central.core`.

:func:`execute` runs one request — from the API, the CLI, an import, or a branch's card
intent — inside **one store operation** (one transaction):

1. a request id already answered gets its first answer back (and changes nothing); the
   same id with other content is refused ``request_id_reused``;
2. the :class:`~central.core.state.State` the request names is loaded;
3. :func:`central.core.operations.decide` accepts or rejects it (pure);
4. an acceptance's effects are applied together: master rows (each a feed change, accounts
   and tickets rendered with their ledger sums), ledger entries (balances move with them),
   one blacklist delta, the audit line; a refusal is audited too;
5. the result is stored under the request id.

Every function here runs on the writer connection inside a transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from central import master
from central.core.effects import (
    Accepted,
    AuditEntry,
    MasterWrite,
    Posting,
    Rejected,
    Scalar,
    rejection_audit,
)
from central.core.idempotency import StoredResult, remember, replay, request_digest
from central.core.intents import decide_intent, intent_request
from central.core.operations import AnyRequest, StateKeys, decide, state_keys
from central.core.request import Request, op_name
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
from central.core.subsidy import (
    ExpireSubsidy,
    ExpiryFact,
    GrantSubsidy,
    restore_for_late_spend,
)
from central.core.tickets import SellTicket
from edge_agent.adapters.sqlite_store import now_ms
from edge_agent.core.model import Account, Card, Person, Ticket
from protocol.messages import CardIntent, Purchase, decode_record

Result = Accepted | Rejected

_json = msgspec.json.Encoder()
_result_decoder = msgspec.json.Decoder(Accepted | Rejected)
_card = msgspec.json.Decoder(Card)
_person = msgspec.json.Decoder(Person)
_account = msgspec.json.Decoder(Account)
_ticket = msgspec.json.Decoder(Ticket)
_policy = msgspec.json.Decoder(Policy)
_card_types = msgspec.json.Decoder(list[CardType])

#: The card types a new HQ starts with (no deposit); ``settings set`` replaces them.
DEFAULT_CARD_TYPES = (CardType(name="standard", deposit_fen=0),)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What :func:`execute` did: the result, and whether it was a stored one replayed."""

    result: Result
    replayed: bool = False
    blacklist_version: int | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, for the audit log (the request itself carries operator and source)."""

    role: str | None = None
    ip: str | None = None


# -- settings ---------------------------------------------------------------------------------


def load_policy(conn: sqlite3.Connection) -> Policy:
    """HQ's money policy (defaults until set)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'policy'").fetchone()
    return Policy() if row is None else _policy.decode(row[0])


def load_card_types(conn: sqlite3.Connection) -> dict[str, CardType]:
    """Card types by name (a single deposit-free ``standard`` until set)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'card_types'").fetchone()
    types = DEFAULT_CARD_TYPES if row is None else _card_types.decode(row[0])
    return {t.name: t for t in types}


def save_policy(conn: sqlite3.Connection, policy: Policy) -> None:
    """Replace the money policy."""
    _set(conn, "policy", _json.encode(policy))


def save_card_types(conn: sqlite3.Connection, types: Iterable[CardType]) -> None:
    """Replace the card types."""
    _set(conn, "card_types", _json.encode(sorted(types, key=_name)))


def change_settings(
    conn: sqlite3.Connection,
    *,
    policy: Policy | None,
    card_types: list[CardType] | None,
    operator: str,
    source: str,
    role: str | None = None,
    ip: str | None = None,
) -> None:
    """Replace the policy and/or card types, with an audit line of before and after;
    ValueError (nothing changed) for a negative amount or a card type without a name."""
    _check_settings(policy, card_types)
    before: dict[str, Scalar] = {
        "policy": _json.encode(load_policy(conn)).decode(),
        "card_types": _json.encode(sorted(load_card_types(conn).values(), key=_name)).decode(),
    }
    if policy is not None:
        save_policy(conn, policy)
    if card_types is not None:
        save_card_types(conn, card_types)
    after: dict[str, Scalar] = {
        "policy": _json.encode(load_policy(conn)).decode(),
        "card_types": _json.encode(sorted(load_card_types(conn).values(), key=_name)).decode(),
    }
    at = datetime.now(UTC)
    write_audit(
        conn,
        AuditEntry(
            request_id=f"settings:{_ms(at)}",
            operator=operator,
            source=source,
            action="settings.change",
            target="settings",
            at=at,
            before=before,
            after=after,
        ),
        role=role,
        ip=ip,
    )


def merged_policy(conn: sqlite3.Connection, changes: dict[str, Any]) -> Policy:
    """The current policy with ``changes`` (field → value) applied; ValueError for an
    unknown field or a bad value."""
    current = msgspec.to_builtins(load_policy(conn))
    unknown = set(changes) - set(current)
    if unknown:
        raise ValueError(f"unknown policy field(s): {', '.join(sorted(unknown))}")
    try:
        return msgspec.convert({**current, **changes}, Policy)
    except msgspec.ValidationError as exc:
        raise ValueError(f"policy: {exc}") from None


#: Largest amount or count a setting may hold (2**53 - 1: exact in every JSON reader).
MAX_SETTING = 2**53 - 1


def _check_settings(policy: Policy | None, card_types: list[CardType] | None) -> None:
    if policy is not None:
        for name in ("cancel_fee_fen", "reissue_fee_fen", "recharge_cap_fen", "clock_skew_s"):
            value = getattr(policy, name)
            if not 0 <= value <= MAX_SETTING:
                raise ValueError(f"policy: {name} must be from 0 to {MAX_SETTING}")
        if policy.recharge_cap_fen < 1:
            raise ValueError("policy: recharge_cap_fen must be at least 1")
        if not policy.default_card_type.strip():
            raise ValueError("policy: default_card_type must not be empty")
    for card_type in card_types or ():
        if not card_type.name.strip() or not card_type.name.isprintable():
            raise ValueError(f"card type name {card_type.name!r} must be printable, not blank")
        if not 0 <= card_type.deposit_fen <= MAX_SETTING:
            raise ValueError(f"card type {card_type.name}: deposit_fen must be 0 to {MAX_SETTING}")
    if card_types is not None and len({t.name for t in card_types}) != len(card_types):
        raise ValueError("card type names must be unique")


def _name(card_type: CardType) -> str:
    return card_type.name


def _set(conn: sqlite3.Connection, key: str, value: bytes) -> None:
    conn.execute(
        "INSERT INTO settings (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value.decode()),
    )


# -- running a request ------------------------------------------------------------------------


def execute(
    conn: sqlite3.Connection,
    request: AnyRequest,
    *,
    now: datetime | None = None,
    caller: Caller | None = None,
) -> Outcome:
    """Answer ``request`` exactly once (see the module docstring)."""
    at = now or datetime.now(UTC)
    stored = stored_result(conn, request.request_id)
    again = replay(request, stored)
    if stored is not None and again is not None:
        if again is stored.result:
            return Outcome(result=again, replayed=True)
        if isinstance(again, Rejected):  # the id was used for another request: audit it
            _audit(conn, _refusal(request, again, at), caller)
        return Outcome(result=again)
    state = load_state(conn, state_keys(request))
    return _conclude(conn, request, decide(request, state, at), at, caller)


def execute_intent(conn: sqlite3.Connection, intent: CardIntent, *, now: datetime) -> Outcome:
    """A branch's card intent (its record id is the request id): decided like the same
    operation at HQ, once, whatever order and however often the record arrives."""
    request = intent_request(intent)
    stored = stored_result(conn, request.request_id)
    again = replay(request, stored)
    if again is not None:
        return Outcome(result=again, replayed=True)
    state = load_state(conn, state_keys(request))
    return _conclude(conn, request, decide_intent(intent, state, now), now, None)


def _conclude(
    conn: sqlite3.Connection,
    request: Request,
    result: Result,
    at: datetime,
    caller: Caller | None,
) -> Outcome:
    version = None
    if isinstance(result, Accepted):
        version = apply_accepted(conn, result, at=at, site=_site_of(request.source))
        _audit(conn, result.audit, caller)
    else:
        _audit(conn, _refusal(request, result, at), caller)
    conn.execute(
        "INSERT INTO op_results (request_id, op, digest, result, at_ms) VALUES (?, ?, ?, ?, ?)",
        (
            request.request_id,
            op_name(request),
            request_digest(request),
            _json.encode(remember(request, result).result).decode(),
            _ms(at),
        ),
    )
    return Outcome(result=result, blacklist_version=version)


def stored_result(conn: sqlite3.Connection, request_id: str) -> StoredResult | None:
    """What was answered under ``request_id``, if anything."""
    row = conn.execute(
        "SELECT digest, result FROM op_results WHERE request_id = ?", (request_id,)
    ).fetchone()
    if row is None:
        return None
    return StoredResult(request_id=request_id, digest=row[0], result=_result_decoder.decode(row[1]))


def _refusal(request: Request, rejected: Rejected, at: datetime) -> AuditEntry:
    return rejection_audit(
        rejected,
        operator=request.operator,
        source=request.source,
        action=op_name(request),
        target=refusal_target(request),
        at=at,
    )


def refusal_target(request: Request) -> str:
    """The audit target of a refused request: what the accepted one would name."""
    if isinstance(request, GrantSubsidy | ExpireSubsidy):
        return f"batch:{request.request_id}"
    if isinstance(request, SellTicket):
        return f"ticket:{request.ticket_id}"
    original = getattr(request, "original_id", None)
    if original is not None:
        return f"purchase:{original}"
    uid = getattr(request, "card_uid", None)
    return f"card:{uid}" if uid is not None else "-"


def _site_of(source: str) -> str | None:
    return source.removeprefix("site:") if source.startswith("site:") else None


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


# -- applying effects -------------------------------------------------------------------------


def apply_accepted(
    conn: sqlite3.Connection, result: Accepted, *, at: datetime, site: str | None
) -> int | None:
    """Write every effect of ``result``; returns the new blacklist version, if any."""
    for posting in result.postings:  # first, so a rendered account shows its new purses
        post(conn, posting, site=site)
    for write in result.master:
        put_master(conn, write)
    if result.blacklist:
        return master.change_blacklist(conn, list(result.blacklist), at=at).version
    return None


def put_master(conn: sqlite3.Connection, write: MasterWrite) -> int:
    """One master row and its feed change (accounts and tickets rendered for the sites)."""
    value: msgspec.Struct = getattr(write, write.entity)
    return master.upsert_rendered(conn, write.entity, write.key, _json.encode(value))


def post(conn: sqlite3.Connection, posting: Posting, *, site: str | None) -> bool:
    """Append one ledger entry and move the balance with it. False if the entry was already
    there (its ``entry_id`` + kind is unique): an entry is never posted twice."""
    added = conn.execute(
        "INSERT OR IGNORE INTO ledger (person_id, cash_fen, subsidy_fen, deposit_fen, ticket_id,"
        " ticket_uses, kind, record_id, site, at_ms, pay_ref, ref, card_uid, method, created_ms)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            posting.person_id,
            posting.cash_fen,
            posting.subsidy_fen,
            posting.deposit_fen,
            posting.ticket_id,
            posting.ticket_uses,
            posting.kind,
            posting.entry_id,
            site,
            _ms(posting.at),
            posting.pay_ref,
            posting.ref,
            posting.card_uid,
            posting.method,
            now_ms(),
        ),
    ).rowcount
    if added:
        conn.execute(
            "INSERT INTO accounts (person_id, cash_fen, subsidy_fen, deposit_fen, dirty)"
            " VALUES (?, ?, ?, ?, 1) ON CONFLICT (person_id) DO UPDATE SET"
            " cash_fen = accounts.cash_fen + excluded.cash_fen,"
            " subsidy_fen = accounts.subsidy_fen + excluded.subsidy_fen,"
            " deposit_fen = accounts.deposit_fen + excluded.deposit_fen, dirty = 1",
            (posting.person_id, posting.cash_fen, posting.subsidy_fen, posting.deposit_fen),
        )
    return bool(added)


def _audit(conn: sqlite3.Connection, entry: AuditEntry, caller: Caller | None) -> None:
    write_audit(conn, entry, role=caller.role if caller else None, ip=caller.ip if caller else None)


def write_audit(
    conn: sqlite3.Connection, entry: AuditEntry, *, role: str | None = None, ip: str | None = None
) -> None:
    """Append one audit line."""
    conn.execute(
        "INSERT INTO audit (at_ms, request_id, operator, role, source, ip, action, target,"
        " outcome, reason_code, before, after, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " ?, ?)",
        (
            _ms(entry.at),
            entry.request_id,
            entry.operator,
            role,
            entry.source,
            ip,
            entry.action,
            entry.target,
            entry.outcome,
            entry.reason_code,
            _json.encode(entry.before).decode(),
            _json.encode(entry.after).decode(),
            entry.note,
        ),
    )


# -- loading state ----------------------------------------------------------------------------


def load_state(conn: sqlite3.Connection, keys: StateKeys) -> State:
    """The :class:`State` ``keys`` name: their cards, holders (with all their cards and
    tickets), those cards' blacklist rows, originals, payments and tickets."""
    cards = {uid: c for uid in keys.card_uids if (c := load_card(conn, uid)) is not None}
    originals = {rid: o for rid in keys.original_ids if (o := load_original(conn, rid)) is not None}
    people = dict.fromkeys(
        [*keys.person_ids, *(c.person_id for c in cards.values())]
        + [o.person_id for o in originals.values()]
    )
    holders = {pid: h for pid in people if (h := load_holder(conn, pid)) is not None}
    uids = set(cards) | {c.uid for h in holders.values() for c in h.cards}
    return State(
        cards=cards,
        holders=holders,
        blacklist=load_blacklist(conn, uids),
        originals=originals,
        payments={ref: p for ref in keys.pay_refs if (p := load_payment(conn, ref)) is not None},
        tickets={t: x for t in keys.ticket_ids if (x := _get_ticket(conn, t)) is not None},
        card_types=load_card_types(conn),
        policy=load_policy(conn),
    )


def _master_text(conn: sqlite3.Connection, entity: str, key: str) -> str | None:
    row = conn.execute(
        "SELECT data FROM master WHERE scope = '' AND entity = ? AND key = ?", (entity, key)
    ).fetchone()
    return None if row is None else str(row[0])


def load_card(conn: sqlite3.Connection, uid: str) -> Card | None:
    """The card row of ``uid``."""
    text = _master_text(conn, "card", uid)
    return None if text is None else _card.decode(text)


def _get_ticket(conn: sqlite3.Connection, ticket_id: str) -> Ticket | None:
    text = _master_text(conn, "ticket", ticket_id)
    return None if text is None else _ticket.decode(master.render_ticket(conn, _dict(text)))


def _dict(text: str) -> dict[str, Any]:
    return msgspec.json.decode(text, type=dict[str, Any])


def load_holder(conn: sqlite3.Connection, person_id: str) -> Holder | None:
    """A person with their account row, ledger balance, cards and (rendered) tickets."""
    text = _master_text(conn, "person", person_id)
    if text is None:
        return None
    account_text = _master_text(conn, "account", person_id)
    row = conn.execute(
        "SELECT cash_fen, subsidy_fen, deposit_fen FROM accounts WHERE person_id = ?",
        (person_id,),
    ).fetchone()
    cards = [
        _card.decode(data)
        for (data,) in conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'card'"
            " AND json_extract(data, '$.person_id') = ? ORDER BY key",
            (person_id,),
        ).fetchall()
    ]
    tickets = [
        _ticket.decode(master.render_ticket(conn, _dict(data)))
        for (data,) in conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'ticket'"
            " AND json_extract(data, '$.person_id') = ? ORDER BY key",
            (person_id,),
        ).fetchall()
    ]
    return Holder(
        person=_person.decode(text),
        account=None if account_text is None else _account.decode(account_text),
        balance=Balance()
        if row is None
        else Balance(cash_fen=row[0], subsidy_fen=row[1], deposit_fen=row[2]),
        cards=tuple(cards),
        tickets=tuple(tickets),
    )


def load_blacklist(conn: sqlite3.Connection, uids: Iterable[str]) -> dict[str, BlacklistEntry]:
    """The current blacklist rows of ``uids``."""
    out: dict[str, BlacklistEntry] = {}
    for uid in uids:
        row = conn.execute(
            "SELECT reason, effective_ms FROM blacklist WHERE uid = ?", (uid,)
        ).fetchone()
        if row is not None:
            out[uid] = BlacklistEntry(
                uid=uid, reason=row[0], effective_at=datetime.fromtimestamp(row[1] / 1000, UTC)
            )
    return out


def load_payment(conn: sqlite3.Connection, pay_ref: str) -> PaymentUse | None:
    """Where payment ``pay_ref`` was credited, if it was."""
    row = conn.execute(
        "SELECT person_id, cash_fen, record_id, at_ms FROM ledger WHERE pay_ref = ?", (pay_ref,)
    ).fetchone()
    if row is None:
        return None
    return PaymentUse(
        pay_ref=pay_ref,
        person_id=row[0],
        amount_fen=row[1],
        entry_id=row[2],
        at=datetime.fromtimestamp(row[3] / 1000, UTC),
    )


def load_original(conn: sqlite3.Connection, record_id: str) -> OriginalPurchase | None:
    """A site's purchase record as central holds it, with what was given back since."""
    row = conn.execute(
        "SELECT site, payload FROM records WHERE id = ? AND kind = 'pos.purchase'", (record_id,)
    ).fetchone()
    if row is None:
        return None
    record = decode_record(row[1])
    if not isinstance(record, Purchase):  # pragma: no cover - the kind column says it is
        return None
    charged = conn.execute(
        "SELECT person_id FROM ledger WHERE record_id = ? AND kind = 'purchase'", (record_id,)
    ).fetchone()
    person = charged[0] if charged else None
    if person is None and record.card_uid:
        card = load_card(conn, record.card_uid)
        person = card.person_id if card else None
    if person is None:
        return None
    adjustments = tuple(
        Adjustment(ref=str(ref), cash_fen=cash, subsidy_fen=subsidy)
        for ref, cash, subsidy in conn.execute(
            "SELECT record_id, cash_fen, subsidy_fen FROM ledger"
            " WHERE ref = ? AND kind IN ('correction', 'refund') ORDER BY id",
            (record_id,),
        ).fetchall()
    )
    return OriginalPurchase(
        record_id=record_id,
        person_id=person,
        site=row[0],
        at=record.at,
        approved=record.approved,
        amount_fen=record.amount,
        cash_fen=record.cash_fen,
        subsidy_fen=record.subsidy_fen,
        adjustments=adjustments,
    )


# -- subsidy spent before an expiry that reached central first ---------------------------------


def restore_late_subsidy(
    conn: sqlite3.Connection, spends: list[tuple[str, str, datetime, int]], *, now: datetime
) -> int:
    """Give back subsidy an expiry took although offline sales had spent it before the
    expiry: ``spends`` are (record id, person, spent at, subsidy fen spent) of site sales
    just applied. One ``subsidy_restore`` entry per late sale (key ``restore:{record}``), never
    more than the expiry took. Returns how many were posted."""
    if not spends:
        return 0
    first = min(at for _, _, at, _ in spends)
    if (
        conn.execute(
            "SELECT 1 FROM ledger WHERE site IS NULL AND at_ms > ?"
            " AND kind IN ('subsidy_expire', 'subsidy_forfeit') LIMIT 1",
            (_ms(first),),
        ).fetchone()
        is None
    ):
        return 0  # no expiry since the oldest of these sales: the common case
    posted = 0
    for record_id, person, spent_at, fen in spends:
        row = conn.execute(
            "SELECT record_id, kind, subsidy_fen, at_ms FROM ledger WHERE person_id = ?"
            " AND kind IN ('subsidy_expire', 'subsidy_forfeit') AND at_ms > ?"
            " ORDER BY at_ms LIMIT 1",
            (person, _ms(spent_at)),
        ).fetchone()
        if row is None:
            continue
        restored = conn.execute(
            "SELECT coalesce(sum(subsidy_fen), 0) FROM ledger"
            " WHERE kind = 'subsidy_restore' AND ref = ?",
            (row[0],),
        ).fetchone()[0]
        fact = ExpiryFact(
            entry_id=str(row[0]),
            person_id=person,
            at=datetime.fromtimestamp(row[3] / 1000, UTC),
            expired_fen=-int(row[2]),
            restored_fen=int(restored),
        )
        posting = restore_for_late_spend(
            fact, record_id=record_id, spent_at=spent_at, subsidy_fen=fen, now=now
        )
        if posting is not None and post(conn, posting, site=None):
            posted += 1
    return posted
