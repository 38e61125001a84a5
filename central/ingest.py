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
from datetime import UTC, datetime
from typing import Any

import msgspec

from central import anomalies, attendance, doors, operations
from central.core.ledger import Entry, entries_for, moves_money
from edge_agent.adapters.sqlite_outbox import lane_of
from protocol.errors import MessageError
from protocol.messages import (
    AnyRecord,
    CardIntent,
    Correction,
    RawRecordBatch,
    RechargeCommit,
    Refund,
    decode_batch_records,
    decode_record,
    record_kind,
)

_json = msgspec.json.Encoder()
_balances = msgspec.json.Decoder(dict[str, int])
_record = msgspec.json.Decoder(AnyRecord)  # the type decode_record decodes to


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


#: Cards the holder cache remembers at most (it starts again past that).
HOLDERS_MAX = 200_000
#: Most rows one multi-row statement writes (see :func:`_insert_rows`).
MAX_ROWS_PER_STATEMENT = 256

_RECORD_COLUMNS = (
    "INSERT OR IGNORE INTO records (site, epoch, lane, seq, id, kind, payload, digest,"
    " received_ms, applied) VALUES "
)
_RECORD_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_RECORD = _RECORD_COLUMNS + _RECORD_VALUES
_LEDGER_COLUMNS = (
    "INSERT OR IGNORE INTO ledger (person_id, cash_fen, subsidy_fen, ticket_id,"
    " ticket_uses, kind, record_id, site, at_ms, pay_ref, ref, created_ms) VALUES "
)
_LEDGER_VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_LEDGER = _LEDGER_COLUMNS + _LEDGER_VALUES
#: The balance moves with its ledger entries, and ``covers`` names the record (money travels
#: in lane 0; the patch replaces this site's ``[epoch, seq]``, keeping the other sites'). Rows
#: ``(person, cash, subsidy, covers)``, ``covers`` from :func:`_covers`.
_BALANCE_COLUMNS = "INSERT INTO accounts (person_id, cash_fen, subsidy_fen, dirty, covers) VALUES "
_BALANCE_VALUES = "(?, ?, ?, 1, ?)"
_BALANCE_UPSERT = (
    " ON CONFLICT (person_id) DO UPDATE SET cash_fen = accounts.cash_fen + excluded.cash_fen,"
    " subsidy_fen = accounts.subsidy_fen + excluded.subsidy_fen, dirty = 1,"
    " covers = json_patch(accounts.covers, excluded.covers)"
)
_statements: dict[tuple[str, int], str] = {}


def _insert_rows(
    conn: sqlite3.Connection, columns: str, values: str, rows: list[tuple[Any, ...]], tail: str = ""
) -> int:
    """Write ``rows`` with multi-row ``INSERT … VALUES (…), (…)`` statements; returns the
    rows changed.

    One statement per power-of-two chunk (256, 128, …, 1 rows: a few statement shapes, all
    kept prepared) rather than one call per row: every sqlite3 call hands the GIL over,
    and a row-by-row ``executemany`` waits for it back once per row whenever the event
    loop is busy. ``tail`` follows the rows (an upsert clause).
    """
    changed = done = 0
    while done < len(rows):
        size = min(1 << ((len(rows) - done).bit_length() - 1), MAX_ROWS_PER_STATEMENT)
        sql = _statements.get((columns + tail, size))
        if sql is None:
            sql = _statements[columns + tail, size] = columns + ",".join([values] * size) + tail
        params: list[Any] = []
        for row in rows[done : done + size]:
            params.extend(row)
        changed += conn.execute(sql, params).rowcount
        done += size
    return changed


class HolderCache:
    """Card UID → the person it is bound to, kept across batches by one writer.

    Every write of master data comes with its row in ``changes`` (:mod:`central.master`), so
    the map holds until a change of a card appears: :meth:`sync` runs at the start of each
    batch, inside its transaction, and drops the map when the change log has a card change
    it has not seen (or went backwards). A transaction that fails to commit can hand its
    change versions out again, so the store calls :meth:`clear` when a commit fails.
    """

    __slots__ = ("_head", "_map")

    def __init__(self) -> None:
        self._map: dict[str, str | None] = {}
        self._head = -1

    def clear(self) -> None:
        """Forget everything (a commit failed: what was read may never have been)."""
        self._map.clear()
        self._head = -1

    def sync(self, conn: sqlite3.Connection) -> None:
        """Drop the map if a card changed since the last batch (any writer, any process)."""
        head = conn.execute("SELECT coalesce(max(version), 0) FROM changes").fetchone()[0]
        if head == self._head:
            return
        if (
            head < self._head
            or self._head < 0  # new or cleared: nothing to keep, no need to search the log
            or len(self._map) > HOLDERS_MAX
            or conn.execute(
                "SELECT 1 FROM changes WHERE version > ? AND entity = 'card' LIMIT 1",
                (self._head,),
            ).fetchone()
            is not None
        ):
            self._map.clear()
        self._head = head

    def get(self, conn: sqlite3.Connection, uid: str) -> str | None:
        """The holder of card ``uid`` (None if central does not know the card)."""
        try:
            return self._map[uid]
        except KeyError:
            person = self._map[uid] = card_holder(conn, uid)
            return person


@dataclass(slots=True)
class _Batch:
    """A batch decoded and checked once, ready to store."""

    #: One ``records`` row per record (``_INSERT_RECORD``'s parameters, ``applied = 1``).
    rows: list[tuple[Any, ...]]
    #: The valid records, by seq.
    live: dict[int, AnyRecord]
    #: Why each dead record is dead, by seq.
    dead: dict[int, str]


def ingest_batch(
    conn: sqlite3.Connection,
    site: str,
    batch: RawRecordBatch,
    *,
    topic: str,
    now_ms: int,
    holders: HolderCache | None = None,
) -> IngestResult:
    """Store and apply one batch from ``site`` (see the module docstring).

    ``holders`` keeps card holders across batches (one per writer connection; the store
    clears it when a commit fails); without it they are looked up once per batch.
    """
    row = conn.execute("SELECT removed FROM sites WHERE id = ?", (site,)).fetchone()
    if row is None or row[0]:
        raise UnknownSiteError(f"site {site} is not registered at central")
    epoch, lane = batch.epoch, batch.lane
    conn.execute(
        "INSERT OR IGNORE INTO lanes (site, epoch, lane) VALUES (?, ?, ?)", (site, epoch, lane)
    )
    acked, max_seen = conn.execute(
        "SELECT acked_seq, max_seen_seq FROM lanes WHERE site = ? AND epoch = ? AND lane = ?",
        (site, epoch, lane),
    ).fetchone()
    if holders is None:
        holders = HolderCache()
    else:
        holders.sync(conn)
    prepared = _prepare(site, batch, now_ms)
    new = duplicates = conflicts = applied = 0
    money = False
    fresh: dict[int, AnyRecord] = {}  # decoded records stored by this call, unapplied, by seq
    if batch.first_seq == acked + 1 and _store_applied(conn, prepared.rows):
        # The batch continues the watermark and every seq and id is new: stored as applied
        # in one statement, then its effects in seq order — no second pass over the rows.
        new = applied = len(prepared.rows)
        acked = batch.last_seq
        live = list(prepared.live.items())
        if lane == 0:  # records of the other lane never move money (else they are dead)
            money = apply_records(conn, site, epoch, lane, live, now_ms, holders)
        anomalies.check_records(conn, site, live, at_ms=now_ms)
        attendance.collect(conn, site, live, holders, now_ms=now_ms)
        doors.collect_events(conn, site, live)
    else:
        for values in prepared.rows:
            outcome = _store_one(conn, values, now_ms)
            if outcome == "new":
                new += 1
                if values[3] in prepared.live:
                    fresh[values[3]] = prepared.live[values[3]]
            elif outcome == "duplicate":
                duplicates += 1
                prepared.dead.pop(values[3], None)  # dead-lettered the first time
            else:
                conflicts += 1
                prepared.dead.pop(values[3], None)
    for seq, reason in prepared.dead.items():
        raw = prepared.rows[seq - batch.first_seq][6]
        dead_letter(conn, topic=topic, site=site, reason=reason, payload=bytes(raw), at_ms=now_ms)
    acked, walked, moved = _advance(conn, site, epoch, lane, acked, now_ms, fresh, holders)
    applied += walked
    money |= moved
    max_seen = max(batch.last_seq, max_seen)
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
        dead=len(prepared.dead),
        applied=applied,
        gap=gap,
        money=money,
    )


def _prepare(site: str, batch: RawRecordBatch, now_ms: int) -> _Batch:
    """Decode and check each record once: its ``records`` row, and whether it is dead."""
    epoch, lane, first = batch.epoch, batch.lane, batch.first_seq
    out = _Batch([], {}, {})
    sha256 = hashlib.sha256
    for i, (raw, item) in enumerate(zip(batch.records, _decode_records(batch), strict=True)):
        seq = first + i
        if isinstance(item, MessageError):
            reason = str(item)
        elif b"\\u0000" in bytes(raw):
            # a NUL names nothing: PostgreSQL's text cannot hold one (SQLite's can); the
            # record is dead on either store, and its lane moves on
            reason = f"records[{i}]: text must not contain a NUL character"
        else:
            kind = record_kind(item)
            if lane_of(kind) == lane:
                out.rows.append(
                    (site, epoch, lane, seq, item.id, kind, raw, sha256(raw).digest(), now_ms, 1)
                )
                out.live[seq] = item
                continue
            reason = f"records[{i}]: a {kind} record in lane {lane}"
        rid = f"dead:{site}.{epoch}.{lane}.{seq}"
        out.rows.append((site, epoch, lane, seq, rid, "dead", raw, sha256(raw).digest(), now_ms, 1))
        out.dead[seq] = reason
    return out


def _decode_records(batch: RawRecordBatch) -> list[AnyRecord] | list[AnyRecord | MessageError]:
    """:func:`~protocol.messages.decode_batch_records`, without its per-record overhead while
    every record is valid: the same decoder and checks; the first record that fails sends the
    whole batch through ``decode_batch_records``, for its exact errors."""
    first, site = batch.first_seq, batch.site
    out: list[AnyRecord] = []
    try:
        for i, raw in enumerate(batch.records):
            record: AnyRecord = _record.decode(raw)
            if record.seq != first + i or record.site != site:
                break
            out.append(record)
        else:
            return out
    except Exception:  # noqa: BLE001 - whatever it was, decode_batch_records says it exactly
        return decode_batch_records(batch)
    return decode_batch_records(batch)


def _store_applied(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> bool:
    """Insert every row as applied in one statement; False (nothing written) if any seq or
    id was already taken."""
    conn.execute("SAVEPOINT batch_rows")
    stored = _insert_rows(conn, _RECORD_COLUMNS, _RECORD_VALUES, rows)
    if stored != len(rows):
        conn.execute("ROLLBACK TO batch_rows")
    conn.execute("RELEASE batch_rows")
    return stored == len(rows)


def _store_one(conn: sqlite3.Connection, values: tuple[Any, ...], now_ms: int) -> str:
    """Store one record, unapplied: "new", "duplicate" (the same bytes again) or "conflict"."""
    site, epoch, lane, seq, rid, _, raw, digest = values[:8]
    if conn.execute(_INSERT_RECORD, (*values[:9], 0)).rowcount:
        return "new"
    existing = conn.execute(
        "SELECT digest, id FROM records WHERE site = ? AND epoch = ? AND lane = ? AND seq = ?",
        (site, epoch, lane, seq),
    ).fetchone()
    if existing is not None and existing[0] == digest:
        return "duplicate"
    if existing is None:
        # The id is already taken by another (site, epoch, lane, seq): keep the first, fill
        # this seq as dead so the stream moves on, and tell HQ.
        conflict = f"conflict:{site}.{epoch}.{lane}.{seq}"
        conn.execute(
            _INSERT_RECORD, (site, epoch, lane, seq, conflict, "dead", raw, digest, now_ms, 0)
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
    return "conflict"


def _advance(  # noqa: PLR0917 - the coordinates of one lane
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    acked: int,
    now_ms: int,
    decoded: dict[int, AnyRecord],
    holders: HolderCache,
) -> tuple[int, int, bool]:
    """Move the watermark over stored, unapplied seqs that follow it; apply them in order."""
    rows = conn.execute(
        "SELECT seq, kind FROM records"
        " WHERE site = ? AND epoch = ? AND lane = ? AND applied = 0 AND seq > ? ORDER BY seq",
        (site, epoch, lane, acked),
    ).fetchall()
    walked: list[tuple[int, AnyRecord]] = []
    applied = 0
    for seq, kind in rows:
        if seq != acked + 1:
            break  # a gap: wait for it (or ask for it) before applying anything after it
        if kind != "dead":
            walked.append((seq, decoded.get(seq) or _stored(conn, site, epoch, lane, seq)))
        acked = seq
        applied += 1
    money = False
    if applied:
        money = apply_records(conn, site, epoch, lane, walked, now_ms, holders)
        anomalies.check_records(conn, site, walked, at_ms=now_ms)
        attendance.collect(conn, site, walked, holders, now_ms=now_ms)
        doors.collect_events(conn, site, walked)
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


def apply_records(  # noqa: PLR0917 - the coordinates of one lane
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    records: list[tuple[int, AnyRecord]],
    now_ms: int,
    holders: HolderCache,
) -> bool:
    """Put the effects of ``(seq, record)``s, in seq order, in the ledger; True if a balance
    changed.

    The ledger entries go in with one statement and each account moves once (by the sum of
    its entries, ``covers`` naming its last record), its balance checked after every entry
    as if they were applied one by one. If any entry is refused (a payment already
    credited), the entries are undone and the records applied one at a time instead.
    """
    if any(isinstance(record, CardIntent) for _, record in records):
        return _apply_in_order(conn, site, epoch, lane, records, now_ms, holders)
    postings: list[tuple[int, AnyRecord, Entry]] = []
    changed = False
    for seq, record in records:
        if not moves_money(record):
            continue
        if lane != 0:  # ingest dead-letters these first; covers below assume lane 0
            raise ValueError(f"a money record in lane {lane}")
        person = holders.get(conn, record.card_uid) if record.card_uid else None
        entries = entries_for(record, person)
        if not entries:
            _unplaceable(conn, site, record, now_ms)
            continue
        changed = True
        postings.extend((seq, record, entry) for entry in entries)
    if not postings:
        return changed
    conn.execute("SAVEPOINT ledger_entries")
    added = _insert_rows(
        conn,
        _LEDGER_COLUMNS,
        _LEDGER_VALUES,
        [_ledger_row(record, entry, site, now_ms) for _, record, entry in postings],
    )
    if added != len(postings):
        conn.execute("ROLLBACK TO ledger_entries")
        conn.execute("RELEASE ledger_entries")
        for seq, record in records:
            apply_record(conn, site, epoch, lane, seq, record, now_ms, holders)
        return changed
    conn.execute("RELEASE ledger_entries")
    # Subsidy an expiry took from these sales goes back first: the balance check below must
    # see the account as it ends, not flag an overdraft the restore itself repairs.
    _restore_late_subsidy(conn, [(record, entry) for _, record, entry in postings], now_ms)
    moves: dict[str, list[int]] = {}  # person → [cash, subsidy, last seq]
    for seq, _, entry in postings:
        move = moves.setdefault(entry.person_id, [0, 0, seq])
        move[0] += entry.cash_fen
        move[1] += entry.subsidy_fen
        move[2] = seq
    found = conn.execute(
        "SELECT json_group_object(person_id, cash_fen + subsidy_fen) FROM accounts"
        " WHERE person_id IN (SELECT value FROM json_each(?))",
        (_json.encode(list(moves)).decode(),),
    ).fetchone()[0]
    balances: dict[str, int] = _balances.decode(found)
    for _, record, entry in postings:
        balance = balances.get(entry.person_id, 0) + entry.cash_fen + entry.subsidy_fen
        balances[entry.person_id] = balance
        if balance < 0:
            _overdrawn(conn, site, record, entry.person_id, balance, now_ms)
    _insert_rows(
        conn,
        _BALANCE_COLUMNS,
        _BALANCE_VALUES,
        [
            (person, cash, subsidy, _covers(site, epoch, seq))
            for person, (cash, subsidy, seq) in moves.items()
        ],
        _BALANCE_UPSERT,
    )
    return changed


def _apply_in_order(  # noqa: PLR0917 - the coordinates of one lane
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    records: list[tuple[int, AnyRecord]],
    now_ms: int,
    holders: HolderCache,
) -> bool:
    """One record at a time: a branch's card intent is decided where it stands in the
    stream (a card issued at the desk, then recharged at the kiosk)."""
    changed = False
    for seq, record in records:
        if isinstance(record, CardIntent):
            operations.execute_intent(conn, record, now=datetime.fromtimestamp(now_ms / 1000, UTC))
            holders.clear()  # the intent may have bound or moved a card
            continue
        changed |= apply_record(conn, site, epoch, lane, seq, record, now_ms, holders)
    return changed


def _restore_late_subsidy(
    conn: sqlite3.Connection, posted: list[tuple[AnyRecord, Entry]], now_ms: int
) -> None:
    spends = [
        (record.id, entry.person_id, record.at, -entry.subsidy_fen)
        for record, entry in posted
        if entry.kind == "purchase" and entry.subsidy_fen < 0
    ]
    operations.restore_late_subsidy(conn, spends, now=datetime.fromtimestamp(now_ms / 1000, UTC))


def apply_record(  # noqa: PLR0917 - the coordinates of one record
    conn: sqlite3.Connection,
    site: str,
    epoch: int,
    lane: int,
    seq: int,
    record: AnyRecord,
    now_ms: int,
    holders: HolderCache | None = None,
) -> bool:
    """Put one record's effects in the ledger; True if a balance changed."""
    if not moves_money(record):
        return False
    if lane != 0:  # ingest dead-letters these first; covers below assume lane 0
        raise ValueError(f"a money record in lane {lane}")
    person = None
    if record.card_uid:
        person = (holders or HolderCache()).get(conn, record.card_uid)
    entries = entries_for(record, person)
    if not entries:
        _unplaceable(conn, site, record, now_ms)
        return False
    pay_ref = record.pay_ref if isinstance(record, RechargeCommit) else None
    for entry in entries:
        if not conn.execute(_INSERT_LEDGER, _ledger_row(record, entry, site, now_ms)).rowcount:
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
        _restore_late_subsidy(conn, [(record, entry)], now_ms)  # first: see apply_records
        balance = conn.execute(
            _BALANCE_COLUMNS
            + _BALANCE_VALUES
            + _BALANCE_UPSERT
            + " RETURNING cash_fen + subsidy_fen",
            (entry.person_id, entry.cash_fen, entry.subsidy_fen, _covers(site, epoch, seq)),
        ).fetchone()[0]
        if balance < 0:
            _overdrawn(conn, site, record, entry.person_id, balance, now_ms)
    return True


def _covers(site: str, epoch: int, seq: int) -> str:
    """An account's ``covers`` patch: ``{site: [epoch, seq]}`` (compact JSON, as SQLite's
    ``json_object`` wrote it)."""
    return msgspec.json.encode({site: [epoch, seq]}).decode()


def _ledger_row(record: AnyRecord, entry: Entry, site: str, now_ms: int) -> tuple[object, ...]:
    """A ledger row: a site's refund or correction names the sale it adjusts (``ref``), so
    HQ's own corrections of that sale account for it; ``created_ms`` is when central
    booked it (a late offline record reopens its business day)."""
    return (
        entry.person_id,
        entry.cash_fen,
        entry.subsidy_fen,
        entry.ticket_id,
        entry.ticket_uses,
        entry.kind,
        record.id,
        site,
        int(record.at.timestamp() * 1000),
        record.pay_ref if isinstance(record, RechargeCommit) else None,
        record.original_id if isinstance(record, Refund | Correction) else None,
        now_ms,
    )


def _unplaceable(conn: sqlite3.Connection, site: str, record: AnyRecord, now_ms: int) -> None:
    anomaly(
        conn,
        "unplaceable_money",
        site=site,
        at_ms=now_ms,
        record_id=record.id,
        card_uid=record.card_uid,
        why="card not known at central",
    )


def _overdrawn(  # noqa: PLR0917 - one anomaly's facts
    conn: sqlite3.Connection,
    site: str,
    record: AnyRecord,
    person_id: str,
    balance: int,
    now_ms: int,
) -> None:
    anomalies.negative_balance(
        conn,
        site=site,
        record_id=record.id,
        person_id=person_id,
        balance_fen=balance,
        at_ms=now_ms,
    )
