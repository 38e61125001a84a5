"""Writing master data into the edge's store: one function per entity, shared by the seed
loader and the feed from central. Rows are replaced whole (the feed sends full rows)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

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
from protocol.errors import MessageError

_json = msgspec.json.Encoder()


class FeedAccount(Account, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An account as central publishes it: with ``covers`` = {site: [epoch, lane-0 seq]}."""

    covers: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)


def ms(value: datetime | None) -> int | None:
    """A datetime as Unix ms (naive values are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _person(conn: sqlite3.Connection, p: Person) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO persons (id, name, number, kind, department) VALUES (?,?,?,?,?)",
        (p.id, p.name, p.number, p.kind, p.department),
    )


def _card(conn: sqlite3.Connection, c: Card) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO cards (uid, person_id, status, valid_from_ms, valid_to_ms,"
        " card_type) VALUES (?,?,?,?,?,?)",
        (c.uid, c.person_id, str(c.status), ms(c.valid_from), ms(c.valid_to), c.card_type),
    )


def _account(conn: sqlite3.Connection, a: Account) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO accounts (person_id, cash_fen, subsidy_fen, subsidy_expires_ms,"
        " covers_seq, txn_limit_fen, daily_limit_fen) VALUES (?,?,?,?,?,?,?)",
        (a.person_id, a.cash_fen, a.subsidy_fen, ms(a.subsidy_expires_at), a.covers_seq,
         a.txn_limit_fen, a.daily_limit_fen),
    )  # fmt: skip


def _ticket(conn: sqlite3.Connection, t: Ticket) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO tickets (id, person_id, kind, service, remaining, valid_from_ms,"
        " valid_to_ms) VALUES (?,?,?,?,?,?,?)",
        (t.id, t.person_id, t.kind, t.service, t.remaining, ms(t.valid_from), ms(t.valid_to)),
    )


def _time_zone(conn: sqlite3.Connection, z: TimeZone) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO time_zones (id, data) VALUES (?, ?)", (z.id, _json.encode(z))
    )


def _holiday(conn: sqlite3.Connection, h: Holiday) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO holidays (day, name) VALUES (?, ?)", (h.day.isoformat(), h.name)
    )


def _door_group(conn: sqlite3.Connection, g: DoorGroup) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO door_groups (id, name, anti_passback, fail_mode) VALUES (?,?,?,?)",
        (g.id, g.name, g.anti_passback, g.fail_mode),
    )


def _door(conn: sqlite3.Connection, d: Door) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO doors (id, group_id, terminal_id, name, direction, open_ms)"
        " VALUES (?,?,?,?,?,?)",
        (d.id, d.group_id, d.terminal_id, d.name, d.direction, d.open_ms),
    )


def _access_level(conn: sqlite3.Connection, lv: AccessLevel) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO access_levels (id, door_group_id, time_zone_id, valid_from_ms,"
        " valid_to_ms) VALUES (?,?,?,?,?)",
        (lv.id, lv.door_group_id, lv.time_zone_id, ms(lv.valid_from), ms(lv.valid_to)),
    )


def _access_grant(conn: sqlite3.Connection, g: AccessGrant) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO access_grants (person_id, access_level_id, valid_from_ms,"
        " valid_to_ms) VALUES (?,?,?,?)",
        (g.person_id, g.access_level_id, ms(g.valid_from), ms(g.valid_to)),
    )


def _terminal(conn: sqlite3.Connection, t: TerminalConf) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO terminals (id, kind, key_hex, name, config) VALUES (?,?,?,?,?)",
        (t.id, t.kind, t.key_hex.strip().lower(), t.name, _json.encode(t.config)),
    )


def _policy(conn: sqlite3.Connection, p: SitePolicy) -> None:
    conn.execute(
        "INSERT INTO policy (id, data) VALUES (1, ?)"
        " ON CONFLICT (id) DO UPDATE SET data = excluded.data",
        (_json.encode(p),),
    )


WRITERS: dict[str, tuple[type[msgspec.Struct], Callable[[sqlite3.Connection, Any], None]]] = {
    "person": (Person, _person),
    "card": (Card, _card),
    "account": (Account, _account),
    "ticket": (Ticket, _ticket),
    "time_zone": (TimeZone, _time_zone),
    "holiday": (Holiday, _holiday),
    "door_group": (DoorGroup, _door_group),
    "door": (Door, _door),
    "access_level": (AccessLevel, _access_level),
    "access_grant": (AccessGrant, _access_grant),
    "terminal": (TerminalConf, _terminal),
    "policy": (SitePolicy, _policy),
}

#: (table, key column) per entity, for deletes.
_TABLES = {
    "person": ("persons", "id"),
    "card": ("cards", "uid"),
    "account": ("accounts", "person_id"),
    "ticket": ("tickets", "id"),
    "time_zone": ("time_zones", "id"),
    "holiday": ("holidays", "day"),
    "door_group": ("door_groups", "id"),
    "door": ("doors", "id"),
    "access_level": ("access_levels", "id"),
    "terminal": ("terminals", "id"),
}


def write(conn: sqlite3.Connection, entity: str, value: msgspec.Struct) -> None:
    """Insert or replace one row of ``entity``."""
    WRITERS[entity][1](conn, value)


def upsert_from_feed(
    conn: sqlite3.Connection, entity: str, data: dict[str, Any], *, site: str, epoch: int
) -> None:
    """Validate a feed row and write it. An account's ``covers`` becomes ``covers_seq``: the
    lane-0 seq of this site's records central's balance includes — only if it names this
    database's epoch (a recreated database shares nothing with the old one's numbering).

    A row that does not validate raises :class:`MessageError` (the caller's transaction rolls
    the whole feed message back: never half-applied)."""
    raw = _json.encode(data)  # JSON semantics: object keys are strings on the wire
    try:
        if entity == "account":
            account = msgspec.json.decode(raw, type=FeedAccount)
            covered = account.covers.get(site)
            seq = covered[1] if covered is not None and covered[0] == epoch else 0
            _account(conn, msgspec.structs.replace(account, covers_seq=seq))
            return
        if entity not in WRITERS:
            raise MessageError(f"feed entity {entity!r} is not kept at the edge")
        struct, writer = WRITERS[entity]
        writer(conn, msgspec.json.decode(raw, type=struct))
    except msgspec.ValidationError as exc:
        raise MessageError(f"feed {entity}: {exc}") from None


def delete_from_feed(conn: sqlite3.Connection, entity: str, key: str) -> None:
    """Remove one row of ``entity``."""
    if entity == "access_grant":
        person_id, _, level = key.partition(":")
        conn.execute(
            "DELETE FROM access_grants WHERE person_id = ? AND access_level_id = ?",
            (person_id, level),
        )
        return
    if entity == "policy":
        conn.execute("DELETE FROM policy")
        return
    if entity not in _TABLES:
        raise MessageError(f"feed entity {entity!r} is not kept at the edge")
    table, column = _TABLES[entity]
    conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))  # noqa: S608 - fixed names


def clear_master(conn: sqlite3.Connection) -> None:
    """Delete every master-data row (before applying a snapshot)."""
    for table, _ in _TABLES.values():
        conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed names
    conn.execute("DELETE FROM access_grants")
    conn.execute("DELETE FROM policy")
