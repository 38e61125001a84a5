"""Master data at central: the only writer (brief, invariant 4), and the change feed it feeds.

Every change to master data is one row in ``changes`` with a new global ``version`` and a
*scope* ('' for every site, or one site id), written in the same transaction as the row in
``master``. A site's feed is the subsequence of changes in its scopes. Balances and
count-ticket remainders are *rendered* when published: an account's data carries its
purses (sums of the ledger) and ``covers`` — for each site, the (epoch, lane-0 seq) of the
last of that site's records the balance includes.

Functions here run inside store operations (writer connection, in a transaction).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import msgspec

from edge_agent.adapters.sqlite_store import now_ms
from edge_agent.core.model import (
    AccessGrant,
    AccessLevel,
    Account,
    Card,
    Door,
    DoorGroup,
    Holiday,
    Person,
    SitePolicy,
    TerminalConf,
    Ticket,
    TimeZone,
)
from protocol.messages import BlacklistChange, BlacklistDelta, FeedChange
from protocol.topics import check_site_id

_json = msgspec.json.Encoder()
_dict = msgspec.json.Decoder(dict[str, Any])
#: Entities that belong to one site (everything else applies at every site).
SITE_ENTITIES = frozenset(
    {"door", "door_group", "time_zone", "holiday", "access_level", "terminal", "policy"}
)


class MasterDataError(ValueError):
    """A master-data operation that cannot be done (unknown card, bad site, …)."""


def head_version(conn: sqlite3.Connection) -> int:
    """The newest change version (0 if none)."""
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM changes").fetchone()[0])


def upsert(conn: sqlite3.Connection, scope: str, entity: str, key: str, data: bytes) -> int:
    """Write an entity's new row and its change; returns the change version."""
    version = _change(conn, scope, entity, key, "upsert", data)
    conn.execute(
        "INSERT INTO master (scope, entity, key, data, version) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, entity, key) DO UPDATE SET data = excluded.data,"
        " version = excluded.version",
        (scope, entity, key, data.decode(), version),
    )
    return version


def upsert_rendered(conn: sqlite3.Connection, entity: str, key: str, data: bytes) -> int:
    """A global row written by an operation: stored as given, but published as the sites
    must see it — an account with its purses (ledger sums) and ``covers``, a count ticket
    net of its uses. Returns the change version."""
    conn.execute(
        "INSERT INTO master (scope, entity, key, data, version) VALUES ('', ?, ?, ?, 0)"
        " ON CONFLICT (scope, entity, key) DO UPDATE SET data = excluded.data",
        (entity, key, data.decode()),
    )
    if entity == "account":
        shown = render_account(conn, key)
    elif entity == "ticket":
        shown = render_ticket(conn, _dict.decode(data))
    else:
        shown = data
    version = _change(conn, "", entity, key, "upsert", shown)
    conn.execute(
        "UPDATE master SET version = ? WHERE scope = '' AND entity = ? AND key = ?",
        (version, entity, key),
    )
    return version


def delete(conn: sqlite3.Connection, scope: str, entity: str, key: str) -> int:
    """Remove an entity; returns the change version."""
    version = _change(conn, scope, entity, key, "delete", None)
    conn.execute(
        "DELETE FROM master WHERE scope = ? AND entity = ? AND key = ?", (scope, entity, key)
    )
    return version


def _change(  # noqa: PLR0917 - the columns of one change row
    conn: sqlite3.Connection, scope: str, entity: str, key: str, op: str, data: bytes | None
) -> int:
    cursor = conn.execute(
        "INSERT INTO changes (scope, entity, key, op, data, at_ms) VALUES (?, ?, ?, ?, ?, ?)",
        (scope, entity, key, op, None if data is None else data.decode(), now_ms()),
    )
    return int(cursor.lastrowid or 0)


def get(conn: sqlite3.Connection, scope: str, entity: str, key: str) -> dict[str, Any] | None:
    """The current data of an entity."""
    row = conn.execute(
        "SELECT data FROM master WHERE scope = ? AND entity = ? AND key = ?", (scope, entity, key)
    ).fetchone()
    return None if row is None else _dict.decode(row[0])


# -- sites ------------------------------------------------------------------------------------


def register_site(conn: sqlite3.Connection, site: str) -> bool:
    """Create a site (idempotent; re-adds a removed one). True if it was new."""
    check_site_id(site)
    cursor = conn.execute(
        "INSERT INTO sites (id, created_ms) VALUES (?, ?)"
        " ON CONFLICT (id) DO UPDATE SET removed = 0 WHERE sites.removed = 1",
        (site, now_ms()),
    )
    return cursor.rowcount > 0


def remove_site(conn: sqlite3.Connection, site: str) -> None:
    """Mark a site removed: its records are kept, new ones are dead-lettered."""
    conn.execute("UPDATE sites SET removed = 1 WHERE id = ?", (site,))


# -- seeding ----------------------------------------------------------------------------------


class SiteSeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Master data that belongs to one site."""

    policy: SitePolicy | None = None
    terminals: list[TerminalConf] = []
    door_groups: list[DoorGroup] = []
    doors: list[Door] = []
    time_zones: list[TimeZone] = []
    holidays: list[Holiday] = []
    access_levels: list[AccessLevel] = []


class CentralSeed(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``onecard-central seed FILE``: people, cards, opening balances, and per-site data."""

    persons: list[Person] = []
    cards: list[Card] = []
    accounts: list[Account] = []
    tickets: list[Ticket] = []
    access_grants: list[AccessGrant] = []
    sites: dict[str, SiteSeed] = {}


def apply_seed(conn: sqlite3.Connection, seed: CentralSeed, *, batch: str) -> dict[str, int]:
    """Load a seed. Opening balances become ledger entries keyed by ``batch`` + person, so
    loading the same seed (same ``batch``) twice never doubles a balance."""
    counts: dict[str, int] = {}

    def put(scope: str, entity: str, key: str, value: msgspec.Struct) -> None:
        upsert(conn, scope, entity, key, _json.encode(value))
        counts[entity] = counts.get(entity, 0) + 1

    for person in seed.persons:
        put("", "person", person.id, person)
    for card in seed.cards:
        put("", "card", card.uid, card)
    for ticket in seed.tickets:
        put("", "ticket", ticket.id, ticket)
    for grant in seed.access_grants:
        put("", "access_grant", f"{grant.person_id}:{grant.access_level_id}", grant)
    for account in seed.accounts:
        # Limits and subsidy expiry are master data; the purses are ledger sums.
        put(
            "",
            "account",
            account.person_id,
            msgspec.structs.replace(account, cash_fen=0, subsidy_fen=0, covers_seq=0),
        )
        added = conn.execute(
            "INSERT OR IGNORE INTO ledger (person_id, cash_fen, subsidy_fen, kind, record_id,"
            " at_ms) VALUES (?, ?, ?, 'opening', ?, ?)",
            (
                account.person_id,
                account.cash_fen,
                account.subsidy_fen,
                f"seed:{batch}:{account.person_id}",
                now_ms(),
            ),
        ).rowcount
        if added:
            add_to_account(conn, account.person_id, account.cash_fen, account.subsidy_fen)
        else:
            conn.execute("UPDATE accounts SET dirty = 1 WHERE person_id = ?", (account.person_id,))
    for site, data in seed.sites.items():
        register_site(conn, site)
        if data.policy is not None:
            put(site, "policy", "policy", data.policy)
        for terminal in data.terminals:
            put(site, "terminal", terminal.id, terminal)
        for group in data.door_groups:
            put(site, "door_group", group.id, group)
        for door in data.doors:
            put(site, "door", door.id, door)
        for zone in data.time_zones:
            put(site, "time_zone", zone.id, zone)
        for holiday in data.holidays:
            put(site, "holiday", holiday.day.isoformat(), holiday)
        for level in data.access_levels:
            put(site, "access_level", level.id, level)
    return counts


def add_to_account(
    conn: sqlite3.Connection, person_id: str, cash_fen: int, subsidy_fen: int
) -> None:
    """Add to a balance (only ever together with the ledger entry that explains it)."""
    conn.execute(
        "INSERT INTO accounts (person_id, cash_fen, subsidy_fen, dirty) VALUES (?, ?, ?, 1)"
        " ON CONFLICT (person_id) DO UPDATE SET cash_fen = accounts.cash_fen + excluded.cash_fen,"
        " subsidy_fen = accounts.subsidy_fen + excluded.subsidy_fen, dirty = 1",
        (person_id, cash_fen, subsidy_fen),
    )


# -- balances on the feed ---------------------------------------------------------------------


def render_account(conn: sqlite3.Connection, person_id: str) -> bytes:
    """An account as sites see it: master limits + ledger purses + ``covers``."""
    base = get(conn, "", "account", person_id) or {"person_id": person_id}
    row = conn.execute(
        "SELECT cash_fen, subsidy_fen, covers FROM accounts WHERE person_id = ?", (person_id,)
    ).fetchone()
    cash, subsidy, covers = row if row is not None else (0, 0, b"{}")
    data = {**base, "cash_fen": cash, "subsidy_fen": subsidy, "covers": _dict.decode(covers)}
    data.pop("covers_seq", None)
    return _json.encode(data)


def render_ticket(conn: sqlite3.Connection, ticket: dict[str, Any]) -> bytes:
    """A ticket as sites see it: count tickets net of every use in the ledger."""
    if ticket.get("remaining") is not None:
        used = conn.execute(
            "SELECT coalesce(sum(ticket_uses), 0) FROM ledger WHERE ticket_id = ?", (ticket["id"],)
        ).fetchone()[0]
        ticket = {**ticket, "remaining": int(ticket["remaining"]) - int(used)}
    return _json.encode(ticket)


def flush_balances(conn: sqlite3.Connection, *, limit: int = 2000) -> int:
    """Publish changed balances as feed changes (coalesced: one change per account however
    many entries it got since the last flush); returns the newest version, 0 if none."""
    people = [
        row[0]
        for row in conn.execute(
            "SELECT person_id FROM accounts WHERE dirty = 1 LIMIT ?", (limit,)
        ).fetchall()
    ]
    version = 0
    for person_id in people:
        version = _change(conn, "", "account", person_id, "upsert", render_account(conn, person_id))
        for (data,) in conn.execute(
            "SELECT data FROM master WHERE scope = '' AND entity = 'ticket'"
            " AND json_extract(data, '$.person_id') = ?",
            (person_id,),
        ).fetchall():
            ticket = _dict.decode(data)
            version = _change(
                conn, "", "ticket", ticket["id"], "upsert", render_ticket(conn, ticket)
            )
        conn.execute("UPDATE accounts SET dirty = 0 WHERE person_id = ?", (person_id,))
    return version


# -- the feed as a site sees it -------------------------------------------------------------


def changes_since(
    conn: sqlite3.Connection, *, site: str, after: int, limit: int
) -> list[tuple[int, FeedChange]]:
    """The site's changes after version ``after``, oldest first."""
    rows = conn.execute(
        "SELECT version, entity, key, op, data FROM changes"
        " WHERE version > ? AND scope IN ('', ?) ORDER BY version LIMIT ?",
        (after, site, limit),
    ).fetchall()
    out = []
    for row in rows:
        change = _feed_changes.get(row)
        if change is None:
            if len(_feed_changes) >= FEED_CACHE_MAX:
                _feed_changes.clear()
            _, entity, key, op, data = row
            data = None if data is None else _dict.decode(data)
            change = _feed_changes[row] = FeedChange(op=op, entity=entity, key=key, data=data)
        out.append((row[0], change))
    return out


#: Feed changes decoded, by their whole row: a change fanned out to 500 sites is decoded
#: once, not once per site (the row, data included, is the key: a version a rolled-back
#: transaction handed out again never finds another change's entry).
_feed_changes: dict[tuple[Any, ...], FeedChange] = {}
FEED_CACHE_MAX = 8192


def snapshot(conn: sqlite3.Connection, site: str) -> list[FeedChange]:
    """Every current row the site should hold, rendered (accounts with purses)."""
    out: list[FeedChange] = []
    rows = conn.execute(
        "SELECT entity, key, data FROM master WHERE scope IN ('', ?) ORDER BY entity, key",
        (site,),
    ).fetchall()
    for entity, key, stored in rows:
        if entity == "account":
            data = render_account(conn, key)
        elif entity == "ticket":
            data = render_ticket(conn, _dict.decode(stored))
        else:
            data = stored
        out.append(FeedChange(op="upsert", entity=entity, key=key, data=_dict.decode(data)))
    listed = {c.key for c in out if c.entity == "account"}
    for (person_id,) in conn.execute("SELECT person_id FROM accounts").fetchall():
        if person_id not in listed:
            out.append(
                FeedChange(
                    op="upsert",
                    entity="account",
                    key=person_id,
                    data=_dict.decode(render_account(conn, person_id)),
                )
            )
    return out


# -- the blacklist ----------------------------------------------------------------------------


def blacklist_version(conn: sqlite3.Connection) -> int:
    """The head of the blacklist chain."""
    return int(conn.execute("SELECT coalesce(max(version), 0) FROM blacklist_log").fetchone()[0])


def change_blacklist(
    conn: sqlite3.Connection, changes: list[BlacklistChange], *, at: datetime
) -> BlacklistDelta:
    """Append a delta to the chain and apply it to the current list."""
    prev = blacklist_version(conn)
    delta = BlacklistDelta(version=prev + 1, prev_version=prev, at=at, changes=changes)
    conn.execute(
        "INSERT INTO blacklist_log (version, prev_version, at_ms, delta) VALUES (?, ?, ?, ?)",
        (delta.version, prev, int(at.timestamp() * 1000), _json.encode(delta).decode()),
    )
    for change in changes:
        if change.op == "add":
            conn.execute(
                "INSERT INTO blacklist (uid, reason, effective_ms, version) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET reason = excluded.reason,"
                " effective_ms = excluded.effective_ms, version = excluded.version",
                (
                    change.card_uid,
                    change.reason,
                    int(change.effective_at.timestamp() * 1000),
                    delta.version,
                ),
            )
        else:
            conn.execute("DELETE FROM blacklist WHERE uid = ?", (change.card_uid,))
    return delta


def blacklist_since(conn: sqlite3.Connection, after: int, *, limit: int) -> list[BlacklistDelta]:
    """Deltas after version ``after``, oldest first (a reconnecting site's catch-up)."""
    rows = conn.execute(
        "SELECT delta FROM blacklist_log WHERE version > ? ORDER BY version LIMIT ?",
        (after, limit),
    ).fetchall()
    return [msgspec.json.decode(row[0], type=BlacklistDelta) for row in rows]


def report_lost(conn: sqlite3.Connection, uid: str, *, at: datetime) -> BlacklistDelta:
    """挂失: the card's status becomes lost and it joins the blacklist from ``at``."""
    card = get(conn, "", "card", uid)
    if card is None:
        raise MasterDataError(f"no card {uid}")
    upsert(conn, "", "card", uid, _json.encode({**card, "status": "lost"}))
    return change_blacklist(
        conn, [BlacklistChange(op="add", card_uid=uid, reason="lost", effective_at=at)], at=at
    )
