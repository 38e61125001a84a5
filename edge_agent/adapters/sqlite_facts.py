"""Gather the facts a decision needs from the store: a few indexed queries per request.

Every function takes the writer connection inside the operation's transaction, so the facts
include every earlier operation of the same group commit (two taps of one card in one batch
see each other's spending). They return the pure core's value types.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, date, datetime

import msgspec

from edge_agent.adapters.sqlite_master import ms
from edge_agent.core.checks import CardFacts
from edge_agent.core.door import DoorRight
from edge_agent.core.model import (
    AccessGrant,
    AccessLevel,
    Account,
    Card,
    CardStatus,
    Door,
    DoorGroup,
    Person,
    Ticket,
    TimeZone,
)
from edge_agent.core.purses import Purses
from edge_agent.core.recharge import Recharge

_tz_decoder = msgspec.json.Decoder(TimeZone)
_recharge_decoder = msgspec.json.Decoder(Recharge)


def dt(value: int | None) -> datetime | None:
    """Unix ms as a UTC datetime (None passes through)."""
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC)


def card_facts(conn: sqlite3.Connection, uid: str) -> CardFacts:
    """The card by UID with its person, and whether the UID is on the blacklist."""
    row = conn.execute(
        "SELECT c.person_id, c.status, c.valid_from_ms, c.valid_to_ms, c.card_type,"
        " p.name, p.number, p.kind, p.department,"
        " EXISTS (SELECT 1 FROM blacklist b WHERE b.uid = c.uid)"
        " FROM cards c LEFT JOIN persons p ON p.id = c.person_id WHERE c.uid = ?",
        (uid,),
    ).fetchone()
    if row is None:
        listed = conn.execute("SELECT 1 FROM blacklist WHERE uid = ?", (uid,)).fetchone()
        return CardFacts(uid=uid, blacklisted=listed is not None)
    card = Card(
        uid=uid,
        person_id=row[0],
        status=CardStatus(row[1]),
        valid_from=dt(row[2]),
        valid_to=dt(row[3]),
        card_type=row[4],
    )
    person = None
    if row[5] is not None:
        person = Person(id=row[0], name=row[5], number=row[6], kind=row[7], department=row[8])
    return CardFacts(uid=uid, card=card, person=person, blacklisted=bool(row[9]))


_CARD_PURCHASE_SQL = (
    "SELECT c.person_id, c.status, c.valid_from_ms, c.valid_to_ms, c.card_type,"
    " p.name, p.number, p.kind, p.department,"
    " EXISTS (SELECT 1 FROM blacklist b WHERE b.uid = c.uid),"
    " a.person_id, a.cash_fen, a.subsidy_fen, a.subsidy_expires_ms, a.covers_seq,"
    " a.txn_limit_fen, a.daily_limit_fen,"
    " (SELECT coalesce(sum(d.cash_fen), 0) FROM local_deltas d"
    "  WHERE d.person_id = c.person_id AND d.seq > coalesce(a.covers_seq, 0)),"
    " (SELECT coalesce(sum(d.subsidy_fen), 0) FROM local_deltas d"
    "  WHERE d.person_id = c.person_id AND d.seq > coalesce(a.covers_seq, 0)),"
    " (SELECT coalesce(sum(u.amount), 0) FROM purchases u"
    "  WHERE u.person_id = c.person_id AND u.at_ms >= ? AND u.at_ms < ?)"
    " FROM cards c LEFT JOIN persons p ON p.id = c.person_id"
    " LEFT JOIN accounts a ON a.person_id = c.person_id WHERE c.uid = ?"
)


def card_purchase_facts(
    conn: sqlite3.Connection, uid: str, day_start_ms: int, day_end_ms: int
) -> tuple[CardFacts, Account | None, Purses, int]:
    """What every sale needs, in one query: :func:`card_facts`, the holder's
    :func:`account`, :func:`pending` above its ``covers_seq`` and money spent in
    ``[day_start_ms, day_end_ms)`` (:func:`spent_between`). An unknown card has no account,
    nothing pending and nothing spent."""
    row = conn.execute(_CARD_PURCHASE_SQL, (day_start_ms, day_end_ms, uid)).fetchone()
    if row is None:
        return card_facts(conn, uid), None, Purses(), 0
    person_id = row[0]
    card = Card(
        uid=uid,
        person_id=person_id,
        status=CardStatus(row[1]),
        valid_from=dt(row[2]),
        valid_to=dt(row[3]),
        card_type=row[4],
    )
    person = None
    if row[5] is not None:
        person = Person(id=person_id, name=row[5], number=row[6], kind=row[7], department=row[8])
    account = None
    if row[10] is not None:
        account = Account(
            person_id=person_id,
            cash_fen=row[11],
            subsidy_fen=row[12],
            subsidy_expires_at=dt(row[13]),
            covers_seq=row[14],
            txn_limit_fen=row[15],
            daily_limit_fen=row[16],
        )
    return (
        CardFacts(uid=uid, card=card, person=person, blacklisted=bool(row[9])),
        account,
        Purses(cash_fen=int(row[17]), subsidy_fen=int(row[18])),
        int(row[19]),
    )


def door_for_terminal(
    conn: sqlite3.Connection, terminal_id: str, door_id: str | None
) -> tuple[Door, DoorGroup] | None:
    """The door a terminal opens (the named one if the terminal has several)."""
    sql = (
        "SELECT id, group_id, terminal_id, name, direction, open_ms FROM doors"
        " WHERE terminal_id = ?"
    )
    params: tuple[str, ...] = (terminal_id,)
    if door_id is not None:
        sql += " AND id = ?"
        params = (terminal_id, door_id)
    row = conn.execute(sql + " ORDER BY id LIMIT 1", params).fetchone()
    if row is None:
        return None
    door = Door(
        id=row[0],
        group_id=row[1],
        terminal_id=row[2],
        name=row[3],
        direction=row[4],
        open_ms=row[5],
    )
    grow = conn.execute(
        "SELECT id, name, anti_passback, fail_mode FROM door_groups WHERE id = ?", (door.group_id,)
    ).fetchone()
    group = (
        DoorGroup(id=grow[0], name=grow[1], anti_passback=grow[2], fail_mode=grow[3])
        if grow is not None
        else DoorGroup(id=door.group_id)
    )
    return door, group


def door_rights(conn: sqlite3.Connection, person_id: str, group_id: str) -> tuple[DoorRight, ...]:
    """The person's grants for a door group, each with its level and time zone."""
    rows = conn.execute(
        "SELECT g.access_level_id, g.valid_from_ms, g.valid_to_ms,"
        " l.time_zone_id, l.valid_from_ms, l.valid_to_ms, z.data"
        " FROM access_grants g JOIN access_levels l ON l.id = g.access_level_id"
        " LEFT JOIN time_zones z ON z.id = l.time_zone_id"
        " WHERE g.person_id = ? AND l.door_group_id = ?",
        (person_id, group_id),
    ).fetchall()
    return tuple(
        DoorRight(
            grant=AccessGrant(
                person_id=person_id, access_level_id=r[0], valid_from=dt(r[1]), valid_to=dt(r[2])
            ),
            level=AccessLevel(
                id=r[0],
                door_group_id=group_id,
                time_zone_id=r[3],
                valid_from=dt(r[4]),
                valid_to=dt(r[5]),
            ),
            time_zone=None if r[6] is None else _tz_decoder.decode(r[6]),
        )
        for r in rows
    )


def holidays_on(conn: sqlite3.Connection, day: date) -> frozenset[date]:
    """``{day}`` if it is a holiday at this site, else empty."""
    row = conn.execute("SELECT 1 FROM holidays WHERE day = ?", (day.isoformat(),)).fetchone()
    return frozenset({day}) if row is not None else frozenset()


def last_direction(conn: sqlite3.Connection, person_id: str, group_id: str) -> str | None:
    """Direction of the person's last granted passage in a door group (anti-passback)."""
    row = conn.execute(
        "SELECT direction FROM passages WHERE person_id = ? AND group_id = ?", (person_id, group_id)
    ).fetchone()
    return None if row is None else str(row[0])


def last_punch_at(conn: sqlite3.Connection, person_id: str) -> datetime | None:
    """When the person's last counted punch was."""
    row = conn.execute("SELECT at_ms FROM last_punch WHERE person_id = ?", (person_id,)).fetchone()
    return None if row is None else dt(row[0])


def account(conn: sqlite3.Connection, person_id: str) -> Account | None:
    """The person's purses as central last published them."""
    row = conn.execute(
        "SELECT cash_fen, subsidy_fen, subsidy_expires_ms, covers_seq, txn_limit_fen,"
        " daily_limit_fen FROM accounts WHERE person_id = ?",
        (person_id,),
    ).fetchone()
    if row is None:
        return None
    return Account(
        person_id=person_id,
        cash_fen=row[0],
        subsidy_fen=row[1],
        subsidy_expires_at=dt(row[2]),
        covers_seq=row[3],
        txn_limit_fen=row[4],
        daily_limit_fen=row[5],
    )


def pending(conn: sqlite3.Connection, person_id: str, covers_seq: int) -> Purses:
    """The edge's own money effects central's balance does not cover yet."""
    row = conn.execute(
        "SELECT coalesce(sum(cash_fen), 0), coalesce(sum(subsidy_fen), 0) FROM local_deltas"
        " WHERE person_id = ? AND seq > ?",
        (person_id, covers_seq),
    ).fetchone()
    return Purses(cash_fen=int(row[0]), subsidy_fen=int(row[1]))


def tickets(
    conn: sqlite3.Connection, person_id: str, service: str, covers_seq: int
) -> tuple[Ticket, ...]:
    """The person's tickets for ``service``, count tickets net of uses not yet covered."""
    rows = conn.execute(
        "SELECT t.id, t.kind, t.remaining, t.valid_from_ms, t.valid_to_ms,"
        " (SELECT coalesce(sum(d.ticket_uses), 0) FROM local_deltas d"
        "  WHERE d.ticket_id = t.id AND d.seq > ?)"
        " FROM tickets t WHERE t.person_id = ? AND t.service = ?",
        (covers_seq, person_id, service),
    ).fetchall()
    return tuple(
        Ticket(
            id=r[0],
            person_id=person_id,
            kind=r[1],
            service=service,
            remaining=None if r[2] is None else r[2] - r[5],
            valid_from=dt(r[3]),
            valid_to=dt(r[4]),
        )
        for r in rows
    )


def spent_between(
    conn: sqlite3.Connection,
    person_id: str,
    start: datetime,
    end: datetime,
    *,
    meals_only: bool = False,
) -> tuple[int, int]:
    """(approved sales, money spent) by the person in ``[start, end)``; with ``meals_only``,
    only canteen sales made in a meal period (ticket meals included)."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(amount), 0) FROM purchases"
        " WHERE person_id = ? AND at_ms >= ? AND at_ms < ?"
        " AND (? = 0 OR meal_period IS NOT NULL)",
        (person_id, ms(start), ms(end), int(meals_only)),
    ).fetchone()
    return int(row[0]), int(row[1])


def offline_spent(
    conn: sqlite3.Connection, since: datetime, person_id: str | None, day_start: datetime
) -> tuple[int, int]:
    """(site exposure since going offline, this person's offline spending today)."""
    site = conn.execute(
        "SELECT coalesce(sum(amount), 0) FROM purchases WHERE offline = 1 AND at_ms >= ?",
        (ms(since),),
    ).fetchone()
    card = (0,)
    if person_id is not None:
        card = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM purchases"
            " WHERE offline = 1 AND person_id = ? AND at_ms >= ?",
            (person_id, ms(day_start)),
        ).fetchone()
    return int(site[0]), int(card[0])


def recharge(conn: sqlite3.Connection, pay_ref: str) -> Recharge | None:
    """The payment stored under ``pay_ref``."""
    row = conn.execute("SELECT data FROM recharges WHERE pay_ref = ?", (pay_ref,)).fetchone()
    return None if row is None else _recharge_decoder.decode(row[0])


def blacklist_version(conn: sqlite3.Connection) -> int:
    """The site's applied blacklist version."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'blacklist_version'").fetchone()
    return 0 if row is None else int(row[0])
