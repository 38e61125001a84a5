"""Member import against central's store: the shell around :mod:`central.core.members`.

:func:`import_members` reads a CSV or XLSX file, loads what central already holds about the
persons and cards it names, plans the import (pure), and — unless it is a dry run or the
plan has errors — applies it in the same transaction: persons, accounts, cards and tickets
as master rows (each a feed change), opening balances as ledger entries keyed
``import:{batch}:{person}`` (a re-run of the batch posts nothing new), one audit line.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from central.core.members import (
    ExistingData,
    ImportPlan,
    OpeningEntry,
    default_batch_id,
    keys_named,
    plan_import,
    read_table,
)
from central.operations import (
    load_card,
    load_card_types,
    load_policy,
    post,
    put_master,
    write_audit,
)
from edge_agent.core.model import Account, Card, Person

_person = msgspec.json.Decoder(Person)
_account = msgspec.json.Decoder(Account)
_card = msgspec.json.Decoder(Card)


def import_members(
    conn: sqlite3.Connection,
    data: bytes,
    filename: str,
    *,
    operator: str,
    batch_id: str | None = None,
    dry_run: bool = False,
    timezone: str = "Asia/Shanghai",
    now: datetime | None = None,
) -> ImportPlan:
    """Plan the import of ``data`` and apply it unless ``dry_run`` or it has errors."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {timezone!r}") from None
    table = read_table(data, filename)
    plan = plan_import(
        table,
        batch_id=batch_id or default_batch_id(data),
        operator=operator,
        now=now or datetime.now(UTC),
        existing=load_existing(conn, *keys_named(table)),
        tz=zone,
    )
    if dry_run:
        return plan
    if plan.ok:
        for posting in plan.postings:
            post(conn, posting, site=None)
        for write in plan.master:
            put_master(conn, write)
    write_audit(conn, plan.audit)  # a refused import is audited too
    return plan


def load_existing(
    conn: sqlite3.Connection, person_ids: frozenset[str], uids: frozenset[str]
) -> ExistingData:
    """What central holds about ``person_ids`` and ``uids``: persons, accounts, the cards
    (and every card of those persons), opening entries, card types."""
    persons: dict[str, Person] = {}
    accounts: dict[str, Account] = {}
    cards: dict[str, Card] = {}
    openings: dict[str, tuple[OpeningEntry, ...]] = {}
    for uid in uids:
        card = load_card(conn, uid)
        if card is not None:
            cards[uid] = card
    for pid in person_ids:
        row = conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'person' AND key = ?", (pid,)
        ).fetchone()
        if row is None:
            continue
        persons[pid] = _person.decode(row[0])
        account = conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'account' AND key = ?", (pid,)
        ).fetchone()
        if account is not None:
            accounts[pid] = _account.decode(account[0])
        for (text,) in conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'card'"
            " AND json_extract(data, '$.person_id') = ?",
            (pid,),
        ).fetchall():
            card = _card.decode(text)
            cards[card.uid] = card
        entries = conn.execute(
            "SELECT record_id, cash_fen, subsidy_fen FROM ledger"
            " WHERE person_id = ? AND kind = 'opening' ORDER BY id",
            (pid,),
        ).fetchall()
        if entries:
            openings[pid] = tuple(
                OpeningEntry(entry_id=str(e), cash_fen=c, subsidy_fen=s) for e, c, s in entries
            )
    return ExistingData(
        persons=persons,
        accounts=accounts,
        cards=cards,
        openings=openings,
        card_types=frozenset(load_card_types(conn)),
        default_card_type=load_policy(conn).default_card_type,
    )
