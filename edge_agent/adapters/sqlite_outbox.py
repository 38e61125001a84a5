"""The outbox: every record the site produced, numbered, kept until central's ack covers it.

Functions here run inside a store operation (on the writer connection, in a transaction).
``seq`` comes from a counter in ``meta`` updated in the same transaction as the insert, so a
rolled-back operation gives its number back and the sequence has no holes; it is never
reused within an epoch, even after acked rows are pruned.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from edge_agent.adapters.sqlite_store import get_meta, now_ms, set_meta
from protocol.messages import Record, record_kind

R = TypeVar("R", bound=Record)

#: Lane 0 goes first when syncing: card-state intents and money. Lane 1: everything else.
MONEY_KINDS = frozenset(
    {
        "card.intent",
        "pos.purchase",
        "ticket.use",
        "recharge.prepare",
        "recharge.commit",
        "recharge.abort",
        "money.refund",
        "money.correction",
    }
)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One outbox entry as read back."""

    seq: int
    epoch: int
    id: str
    kind: str
    lane: int
    payload: bytes
    created_ms: int
    acked: bool


def append(conn: sqlite3.Connection, site: str, epoch: int, make: Callable[[int, str], R]) -> R:
    """Number a new record and write it: ``make(seq, record_id)`` builds it."""
    seq = int(get_meta(conn, "next_seq") or 1)
    record = make(seq, f"{site}.{epoch}.{seq}")
    kind = record_kind(record)
    conn.execute(
        "INSERT INTO outbox (seq, epoch, id, kind, lane, payload, created_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            seq,
            epoch,
            record.id,
            kind,
            0 if kind in MONEY_KINDS else 1,
            _encoder.encode(record),
            now_ms(),
        ),
    )
    set_meta(conn, "next_seq", seq + 1)
    return record


def mark_acked(conn: sqlite3.Connection, epoch: int, acked_seq: int) -> int:
    """Mark every record of ``epoch`` up to ``acked_seq`` acked; returns how many changed.

    Only central's application-level ack may call this — never a PUBACK (brief, invariant 3).
    """
    cursor = conn.execute(
        "UPDATE outbox SET acked = 1 WHERE acked = 0 AND epoch = ? AND seq <= ?",
        (epoch, acked_seq),
    )
    current = int(get_meta(conn, "acked_seq") or 0)
    if acked_seq > current:
        set_meta(conn, "acked_seq", acked_seq)
    return cursor.rowcount


def unacked(conn: sqlite3.Connection, *, after_seq: int = 0, limit: int = 500) -> list[OutboxRow]:
    """Unacked records in seq order (both lanes), starting after ``after_seq``."""
    rows = conn.execute(
        "SELECT seq, epoch, id, kind, lane, payload, created_ms, acked FROM outbox "
        "WHERE acked = 0 AND seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    return [OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7])) for r in rows]


def depth(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(unacked records, creation time in ms of the oldest one or None)."""
    count, oldest = conn.execute(
        "SELECT count(*), min(created_ms) FROM outbox WHERE acked = 0"
    ).fetchone()
    return int(count), None if oldest is None else int(oldest)


def prune_acked(conn: sqlite3.Connection, older_than_ms: int) -> int:
    """Delete acked records created before ``older_than_ms`` (local history retention)."""
    cursor = conn.execute("DELETE FROM outbox WHERE acked = 1 AND created_ms < ?", (older_than_ms,))
    return cursor.rowcount
