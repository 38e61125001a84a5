"""The outbox: every record the site produced, numbered, kept until central's ack covers it.

Records go in one of two lanes (:data:`protocol.messages.LANES`): lane 0 carries card-state
intents and money, lane 1 the rest. Each lane is its own contiguous sequence per epoch, so
after an outage the money lane can sync first without leaving gaps central would wait on,
and a balance's ``covers`` can name one lane-0 seq.

Functions here run inside a store operation (on the writer connection, in a transaction).
``seq`` comes from a per-lane counter, ``meta`` row ``next_seq_{lane}``, written in the same
transaction as the insert, so a rolled-back operation gives its number back and the sequence
has no holes; it is never reused within an epoch, even after acked rows are pruned. On a
store's writer connection the counter is held in memory and its row written once per
transaction (:class:`~edge_agent.adapters.sqlite_store.MetaCounters`); on a plain connection
the row is read and updated per record.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from edge_agent.adapters.sqlite_store import get_meta, now_ms, set_meta
from protocol.messages import Lane, Record, record_kind

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
_COUNTER_KEYS = {0: "next_seq_0", 1: "next_seq_1"}


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


def lane_of(kind: str) -> Lane:
    """The lane records of ``kind`` travel in."""
    return 0 if kind in MONEY_KINDS else 1


def append(
    conn: sqlite3.Connection, site: str, epoch: int, lane: Lane, make: Callable[[int, str], R]
) -> R:
    """Number a new record in ``lane`` and write it: ``make(seq, record_id)`` builds it.

    Raises ValueError (rolling the operation back) if the record belongs in the other lane.
    """
    counter = _COUNTER_KEYS[lane]
    counters = getattr(conn, "counters", None)
    seq = counters.take(counter) if counters is not None else int(get_meta(conn, counter) or 1)
    record = make(seq, f"{site}.{epoch}.{lane}.{seq}")
    kind = record_kind(record)
    if lane_of(kind) != lane:
        raise ValueError(f"{kind} records go in lane {lane_of(kind)}, not {lane}")
    conn.execute(
        "INSERT INTO outbox_rows (lane, seq, epoch, id, kind, payload, created_ms) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (lane, seq, epoch, record.id, kind, _encoder.encode(record), now_ms()),
    )
    if counters is None:
        set_meta(conn, counter, seq + 1)
    return record


def mark_acked(conn: sqlite3.Connection, epoch: int, lane: Lane, acked_seq: int) -> int:
    """Mark every record of ``lane`` in ``epoch`` up to ``acked_seq`` acked; returns how many
    changed. Only central's application-level ack may call this — never a PUBACK (brief,
    invariant 3). An ack for another epoch changes nothing.

    Acked is the lane's watermark (``meta`` row ``acked_seq_{lane}``): one row written
    however many records the ack covers. It never moves back, and never past the lane's
    last record, so an ack naming seqs not yet written cannot cover them in advance.
    """
    before = acked_watermark(conn, lane)
    if acked_seq <= before:
        return 0
    last = conn.execute(
        "SELECT seq FROM outbox_rows WHERE lane = ? AND epoch = ? ORDER BY seq DESC LIMIT 1",
        (lane, epoch),
    ).fetchone()
    if last is None:
        return 0
    upto = min(acked_seq, int(last[0]))
    if upto <= before:
        return 0
    set_meta(conn, f"acked_seq_{lane}", upto)
    covered: int = conn.execute(
        "SELECT count(*) FROM outbox_rows WHERE lane = ? AND seq > ? AND seq <= ?",
        (lane, before, upto),
    ).fetchone()[0]
    return covered


def acked_watermark(conn: sqlite3.Connection, lane: Lane) -> int:
    """The highest seq of ``lane`` central has acknowledged."""
    return int(get_meta(conn, f"acked_seq_{lane}") or 0)


def unacked(
    conn: sqlite3.Connection, lane: Lane, *, after_seq: int = 0, limit: int = 500
) -> list[OutboxRow]:
    """Unacked records of ``lane`` in seq order, starting after ``after_seq``."""
    rows = conn.execute(
        "SELECT seq, epoch, id, kind, lane, payload, created_ms FROM outbox_rows "
        "WHERE lane = ? AND seq > ? ORDER BY seq LIMIT ?",
        (lane, max(after_seq, acked_watermark(conn, lane)), limit),
    ).fetchall()
    return [OutboxRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], False) for r in rows]


#: A lane's unacked records are a range of the primary key (lane, seq) past its watermark,
#: however long the acked history kept before it. Both statements read the watermarks
#: themselves, so each is one consistent read on the reader connection.
DEPTH_SQL = (
    "SELECT (SELECT count(*) FROM outbox_rows WHERE lane = 0 AND seq >"
    " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_seq_0'), 0))"
    " + (SELECT count(*) FROM outbox_rows WHERE lane = 1 AND seq >"
    " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_seq_1'), 0))"
)
#: The oldest unacked record of each lane is its lowest unacked seq: two index lookups.
OLDEST_SQL = (
    "SELECT min(created_ms) FROM ("
    " SELECT (SELECT created_ms FROM outbox_rows WHERE lane = 0 AND seq >"
    " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_seq_0'), 0)"
    " ORDER BY seq LIMIT 1) AS created_ms UNION ALL"
    " SELECT (SELECT created_ms FROM outbox_rows WHERE lane = 1 AND seq >"
    " coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'acked_seq_1'), 0)"
    " ORDER BY seq LIMIT 1))"
)


def depth(conn: sqlite3.Connection) -> tuple[int, int | None]:
    """(unacked records, creation time in ms of the oldest one or None)."""
    count = conn.execute(DEPTH_SQL).fetchone()[0]
    oldest = conn.execute(OLDEST_SQL).fetchone()[0]
    return int(count), None if oldest is None else int(oldest)


def prune_acked(conn: sqlite3.Connection, older_than_ms: int) -> int:
    """Delete acked records created before ``older_than_ms`` (local history retention)."""
    pruned = 0
    for lane in (0, 1):
        pruned += conn.execute(
            "DELETE FROM outbox_rows WHERE lane = ? AND seq <= ? AND created_ms < ?",
            (lane, acked_watermark(conn, lane), older_than_ms),
        ).rowcount
    return pruned
