"""Ingest a site's record batch: exactly once, in one transaction, then the new watermark.

:func:`ingest_batch` runs as one store operation (one transaction per batch):

1. each record is stored by (site, epoch, lane, seq) — a second copy of the same record is
   dropped; a copy with the same id or seq but other content is an anomaly and never
   replaces the first; a record that fails validation is kept as *dead* (its bytes and the
   reason in ``dead_letters``) so the one bad record never blocks the stream behind it;
2. the lane's watermark moves over every contiguous stored seq, and only then does each
   record's effect reach the ledger — in seq order, so a balance's ``covers`` names exactly
   which of a site's records it includes;
3. the caller publishes the returned watermark as the ack *after* the commit.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass

import msgspec

from central.core.ledger import entries_for, moves_money
from edge_agent.adapters.sqlite_outbox import lane_of
from protocol.errors import MessageError
from protocol.messages import (
    AnyRecord,
    RawRecordBatch,
    RechargeCommit,
    decode_batch_records,
    decode_record,
    record_kind,
)

_json = msgspec.json.Encoder()


class UnknownSiteError(Exception):
    """The batch came from a site central does not have (or removed)."""


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one batch did."""

    site: str
    epoch: int
    lane: int
    acked_seq: int
    new: int = 0
    duplicates: int = 0
    conflicts: int = 0
    dead: int = 0
    applied: int = 0
    gap: bool = False
    money: bool = False


def anomaly(
    conn: sqlite3.Connection,
    kind: str,
    *,
    site: str | None,
    at_ms: int,
    record_id: str | None = None,
    **detail: object,
) -> None:
    """Record an anomaly for HQ (open until someone acknowledges or resolves it)."""
    conn.execute(
        "INSERT INTO anomalies (at_ms, kind, site, record_id, detail) VALUES (?, ?, ?, ?, ?)",
        (at_ms, kind, site, record_id, _json.encode(detail).decode()),
    )


def dead_letter(
    conn: sqlite3.Connection,
    *,
    topic: str,
    site: str | None,
    reason: str,
    payload: bytes,
    at_ms: int,
) -> None:
    """Keep a payload central could not accept, with why."""
    conn.execute(
        "INSERT INTO dead_letters (at_ms, topic, site, reason, payload) VALUES (?, ?, ?, ?, ?)",
        (at_ms, topic, site, reason[:1000], payload),
    )


def ingest_batch(
    conn: sqlite3.Connection, site: str, batch: RawRecordBatch, *, topic: str, now_ms: int
) -> IngestResult:
    """Store and apply one batch from ``site`` (see the module docstring)."""
    row = conn.execute("SELECT removed FROM sites WHERE id = ?", (site,)).fetchone()
    if row is None or row[0]:
        raise UnknownSiteError(f"site {site} is not registered at central")
    epoch, lane = batch.epoch, batch.lane
    conn.execute(
        "INSERT OR IGNORE INTO lanes (site, epoch, lane) VALUES (?, ?, ?)", (site, epoch, lane)
    )
    new = duplicates = conflicts = dead = 0
    fresh: dict[int, AnyRecord] = {}  # decoded records stored by this call, by seq
    for i, item in enumerate(decode_batch_records(batch)):
        seq = batch.first_seq + i
        raw = bytes(batch.records[i])
        digest = hashlib.sha256(raw).digest()
        if isinstance(item, MessageError):
            reason = str(item)
        elif lane_of(record_kind(item)) != lane:
            reason = f"records[{i}]: a {record_kind(item)} record in lane {lane}"
        else:
            reason = ""
        kind = "dead" if reason else record_kind(item)  # type: ignore[arg-type]
        rid = f"dead:{site}.{epoch}.{lane}.{seq}" if reason else item.id  # type: ignore[union-attr]
        inserted = conn.execute(
            "INSERT OR IGNORE INTO records (site, epoch, lane, seq, id, kind, payload, digest,"
            " received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (site, epoch, lane, seq, rid, kind, raw, digest, now_ms),
        ).rowcount
        if inserted:
            new += 1
            if not reason:
                fresh[seq] = item  # type: ignore[assignment]
            if reason:
                dead += 1
                dead_letter(conn, topic=topic, site=site, reason=reason, payload=raw, at_ms=now_ms)
            continue
        existing = conn.execute(
            "SELECT digest, id FROM records WHERE site = ? AND epoch = ? AND lane = ? AND seq = ?",
            (site, epoch, lane, seq),
        ).fetchone()
        if existing is not None and existing[0] == digest:
            duplicates += 1
            continue
        conflicts += 1
        if existing is None:
            # The id is already taken by another (site, epoch, lane, seq): keep the first,
            # fill this seq as dead so the stream moves on, and tell HQ.
            conn.execute(
                "INSERT INTO records (site, epoch, lane, seq, id, kind, payload, digest,"
                " received_ms) VALUES (?, ?, ?, ?, ?, 'dead', ?, ?, ?)",
                (
                    site,
                    epoch,
                    lane,
                    seq,
                    f"conflict:{site}.{epoch}.{lane}.{seq}",
                    raw,
                    digest,
                    now_ms,
                ),
            )
        anomaly(
            conn,
            "duplicate_conflict",
            site=site,
            at_ms=now_ms,
            record_id=rid,
            epoch=epoch,
            lane=lane,
            seq=seq,
        )
    acked, applied, money = _advance(conn, site, epoch, lane, now_ms, fresh)
    max_seen = max(
        batch.last_seq,
        conn.execute(
            "SELECT max_seen_seq FROM lanes WHERE site = ? AND epoch = ? AND lane = ?",
            (site, epoch, lane),
        ).fetchone()[0],
    )
    gap = max_seen > acked
    conn.execute(
        "UPDATE lanes SET acked_seq = ?, max_seen_seq = ?,"
        " gap_since_ms = CASE WHEN ? THEN coalesce(gap_since_ms, ?) ELSE NULL END"
        " WHERE site = ? AND epoch = ? AND lane = ?",
        (acked, max_seen, gap, now_ms, site, epoch, lane),
    )
    return IngestResult(
        site=site,
        epoch=epoch,
        lane=lane,
        acked_seq=acked,
        new=new,
        duplicates=duplicates,
        conflicts=conflicts,
        dead=dead,
        applied=applied,
        gap=gap,
        money=money,
    )


def _advance(  # noqa: PLR0917 - the coordinates of one lane
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    now_ms: int,
    decoded: dict[int, AnyRecord],
) -> tuple[int, int, bool]:
    acked = conn.execute(
        "SELECT acked_seq FROM lanes WHERE site = ? AND epoch = ? AND lane = ?",
        (site, epoch, lane),
    ).fetchone()[0]
    rows = conn.execute(
        "SELECT seq, kind FROM records"
        " WHERE site = ? AND epoch = ? AND lane = ? AND applied = 0 AND seq > ? ORDER BY seq",
        (site, epoch, lane, acked),
    ).fetchall()
    applied = 0
    money = False
    holders: dict[str, str | None] = {}  # card → person, for this walk
    for seq, kind in rows:
        if seq != acked + 1:
            break  # a gap: wait for it (or ask for it) before applying anything after it
        if kind != "dead":
            record = decoded.get(seq) or _stored(conn, site, epoch, lane, seq)
            money |= apply_record(conn, site, epoch, lane, seq, record, now_ms, holders)
        acked = seq
        applied += 1
    if applied:
        conn.execute(
            "UPDATE records SET applied = 1 WHERE site = ? AND epoch = ? AND lane = ?"
            " AND applied = 0 AND seq <= ?",
            (site, epoch, lane, acked),
        )
    return acked, applied, money


def _stored(conn: sqlite3.Connection, site: str, epoch: int, lane: int, seq: int) -> AnyRecord:
    """A record stored by an earlier batch (it waited behind a gap)."""
    payload = conn.execute(
        "SELECT payload FROM records WHERE site = ? AND epoch = ? AND lane = ? AND seq = ?",
        (site, epoch, lane, seq),
    ).fetchone()[0]
    return decode_record(payload)


def card_holder(conn: sqlite3.Connection, uid: str) -> str | None:
    """The person a card UID is bound to."""
    row = conn.execute(
        "SELECT json_extract(data, '$.person_id') FROM master"
        " WHERE scope = '' AND entity = 'card' AND key = ?",
        (uid,),
    ).fetchone()
    return None if row is None else str(row[0])


def apply_record(  # noqa: PLR0917 - the coordinates of one record
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    seq: int,
    record: AnyRecord,
    now_ms: int,
    holders: dict[str, str | None] | None = None,
) -> bool:
    """Put one record's effects in the ledger; True if a balance changed."""
    if not moves_money(record):
        return False
    if lane != 0:  # ingest dead-letters these first; covers below assume lane 0
        raise ValueError(f"a money record in lane {lane}")
    person = None
    if record.card_uid:
        cache = {} if holders is None else holders
        if record.card_uid not in cache:
            cache[record.card_uid] = card_holder(conn, record.card_uid)
        person = cache[record.card_uid]
    entries = entries_for(record, person)
    if not entries:
        anomaly(
            conn,
            "unplaceable_money",
            site=site,
            at_ms=now_ms,
            record_id=record.id,
            card_uid=record.card_uid,
            why="card not known at central",
        )
        return False
    at_ms = int(record.at.timestamp() * 1000)
    pay_ref = record.pay_ref if isinstance(record, RechargeCommit) else None
    for entry in entries:
        added = conn.execute(
            "INSERT OR IGNORE INTO ledger (person_id, cash_fen, subsidy_fen, ticket_id,"
            " ticket_uses, kind, record_id, site, at_ms, pay_ref)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.person_id,
                entry.cash_fen,
                entry.subsidy_fen,
                entry.ticket_id,
                entry.ticket_uses,
                entry.kind,
                record.id,
                site,
                at_ms,
                pay_ref,
            ),
        ).rowcount
        if not added:
            if pay_ref is not None:
                # Another record already credited this payment (a kiosk whose database was
                # recreated, a second site): credit once, tell HQ.
                anomaly(
                    conn,
                    "duplicate_payment",
                    site=site,
                    at_ms=now_ms,
                    record_id=record.id,
                    pay_ref=pay_ref,
                )
            continue
        # One statement: the balance moves with its ledger entry, ``covers`` names the
        # record (money travels in lane 0), and the new balance comes back for the check.
        balance = conn.execute(
            "INSERT INTO accounts (person_id, cash_fen, subsidy_fen, dirty, covers)"
            " VALUES (?, ?, ?, 1, json_object(?, json_array(?, ?)))"
            " ON CONFLICT (person_id) DO UPDATE SET cash_fen = cash_fen + excluded.cash_fen,"
            " subsidy_fen = subsidy_fen + excluded.subsidy_fen, dirty = 1,"
            " covers = json_set(covers, ?, json_array(?, ?))"
            " RETURNING cash_fen + subsidy_fen",
            (
                entry.person_id,
                entry.cash_fen,
                entry.subsidy_fen,
                site,
                epoch,
                seq,
                f'$."{site}"',
                epoch,
                seq,
            ),
        ).fetchone()[0]
        if balance < 0:
            anomaly(
                conn,
                "negative_balance",
                site=site,
                at_ms=now_ms,
                record_id=record.id,
                person_id=entry.person_id,
                balance_fen=balance,
            )
    return True


def add_to_account(
    conn: sqlite3.Connection, person_id: str, cash_fen: int, subsidy_fen: int
) -> None:
    """Add to a balance (only ever together with the ledger entry that explains it)."""
    conn.execute(
        "INSERT INTO accounts (person_id, cash_fen, subsidy_fen, dirty) VALUES (?, ?, ?, 1)"
        " ON CONFLICT (person_id) DO UPDATE SET cash_fen = cash_fen + excluded.cash_fen,"
        " subsidy_fen = subsidy_fen + excluded.subsidy_fen, dirty = 1",
        (person_id, cash_fen, subsidy_fen),
    )
