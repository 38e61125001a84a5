"""Anomalies central raises while it ingests and watches: each one a row HQ acknowledges and
resolves (:mod:`central.queries`), raised **once** per cause, never once per record.

Kinds:

- ``duplicate_conflict``: a record id or seq seen again with other content (ingest);
- ``unplaceable_money``: money moved for a card central does not know (ingest);
- ``duplicate_payment``: a payment reference credited by a second record (ingest);
- ``negative_balance``: an account below zero once offline spending at several sites is
  merged — one open anomaly per person; with the policy's ``freeze_on_negative`` the card
  is frozen at once (a normal ``card.freeze`` operation, audited as ``onecard``);
- ``used_after_blacklist``: a card let in or charged although the edge already held the
  blacklist version that lists it (the record says which version it had);
- ``clock_skew``: a terminal's clock is off by more than the policy's ``clock_skew_s``
  (one open anomaly per terminal);
- ``seq_gap``: a site's record stream has had a hole for longer than ``GAP_ANOMALY_S``
  (records after it wait; the site was asked to resend);
- ``recharge_uncommitted`` (单边账): see :mod:`central.finance`.

Everything here runs inside a store operation.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import msgspec

from protocol.messages import AnyRecord, DoorAccess

_json = msgspec.json.Encoder()
#: A seq gap older than this is an anomaly (the resend was asked for long before).
GAP_ANOMALY_S = 600


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


def _still_open(conn: sqlite3.Connection, kind: str, field: str, value: str) -> bool:
    return (
        conn.execute(
            "SELECT 1 FROM anomalies WHERE kind = ? AND state != 'resolved'"
            " AND json_extract(detail, ?) = ? LIMIT 1",
            (kind, f"$.{field}", value),
        ).fetchone()
        is not None
    )


def negative_balance(
    conn: sqlite3.Connection,
    *,
    site: str | None,
    record_id: str | None,
    person_id: str,
    balance_fen: int,
    at_ms: int,
) -> None:
    """An account went below zero: one open anomaly per person, and the freeze if the
    policy asks for it."""
    if _still_open(conn, "negative_balance", "person_id", person_id):
        return
    from central import operations  # noqa: PLC0415 - operations → master → ingest → here
    from central.core.cards import FreezeCard  # noqa: PLC0415
    from central.core.effects import Accepted  # noqa: PLC0415

    policy = operations.load_policy(conn)
    frozen: list[str] = []
    if policy.freeze_on_negative:
        holder = operations.load_holder(conn, person_id)
        for card in holder.live_cards if holder else ():
            if card.status != "active":
                continue
            freeze = FreezeCard(
                request_id=f"auto-freeze.{record_id or person_id}.{card.uid}"[:96],
                operator="onecard",
                source="hq:auto",
                card_uid=card.uid,
                reason="balance below zero after offline spending was merged",
            )
            outcome = operations.execute(
                conn, freeze, now=datetime.fromtimestamp(at_ms / 1000, UTC)
            )
            if isinstance(outcome.result, Accepted):
                frozen.append(card.uid)
    anomaly(
        conn,
        "negative_balance",
        site=site,
        at_ms=at_ms,
        record_id=record_id,
        person_id=person_id,
        balance_fen=balance_fen,
        frozen=frozen,
    )


def check_records(
    conn: sqlite3.Connection, site: str, records: list[tuple[int, AnyRecord]], *, at_ms: int
) -> None:
    """Anomalies records show on their own: a terminal clock off, a card used although
    the site held the blacklist that lists it. One query for the batch's listed cards."""
    if not records:
        return
    from central.operations import load_policy  # noqa: PLC0415 - see negative_balance

    limit = load_policy(conn).clock_skew_s
    used: list[tuple[AnyRecord, int]] = []
    for _, record in records:
        if record.terminal and not record.offline:
            skew = (record.received_at - record.at).total_seconds()
            if abs(skew) > limit:
                _clock_skew(conn, site, record, skew, at_ms)
        version = _used_with_list(record)
        if version is not None and record.card_uid:
            used.append((record, version))
    if not used:
        return
    listed = {
        uid: (version, effective_ms, reason)
        for uid, version, effective_ms, reason in conn.execute(
            "SELECT uid, version, effective_ms, reason FROM blacklist"
            " WHERE uid IN (SELECT value FROM json_each(?))",
            (_json.encode(sorted({r.card_uid for r, _ in used})).decode(),),
        ).fetchall()
    }
    for record, version in used:
        if record.card_uid in listed:
            _used_after_blacklist(conn, site, record, version, listed[record.card_uid], at_ms)


def _clock_skew(
    conn: sqlite3.Connection, site: str, record: AnyRecord, skew: float, at_ms: int
) -> None:
    key = f"{site}/{record.terminal}"
    if not _still_open(conn, "clock_skew", "terminal", key):
        anomaly(
            conn,
            "clock_skew",
            site=site,
            at_ms=at_ms,
            record_id=record.id,
            terminal=key,
            skew_s=round(skew, 1),
        )


def _used_after_blacklist(  # noqa: PLR0917 - the record and its listing
    conn: sqlite3.Connection,
    site: str,
    record: AnyRecord,
    version: int,
    listing: tuple[int, int, str],
    at_ms: int,
) -> None:
    listed_version, effective_ms, reason = listing
    if version >= listed_version and record.at.timestamp() * 1000 >= effective_ms:
        anomaly(
            conn,
            "used_after_blacklist",
            site=site,
            at_ms=at_ms,
            record_id=record.id,
            card_uid=record.card_uid,
            reason=reason,
            listed_in=listed_version,
            edge_had=version,
        )


def _used_with_list(record: AnyRecord) -> int | None:
    """The blacklist version the edge held when it let the card through, if it did."""
    if isinstance(record, DoorAccess) and record.granted:
        return record.blacklist_version
    approved = getattr(record, "approved", False)
    version = getattr(record, "blacklist_version", None)
    return version if approved and isinstance(version, int) else None


def flag_gaps(conn: sqlite3.Connection, *, now_ms: int, after_s: int = GAP_ANOMALY_S) -> int:
    """A ``seq_gap`` anomaly for every lane stuck behind a hole for ``after_s`` (once per
    hole); returns how many were raised."""
    raised = 0
    for site, epoch, lane, acked, max_seen, since in conn.execute(
        "SELECT site, epoch, lane, acked_seq, max_seen_seq, gap_since_ms FROM lanes"
        " WHERE gap_since_ms IS NOT NULL AND gap_since_ms <= ?",
        (now_ms - after_s * 1000,),
    ).fetchall():
        key = f"{site}/{epoch}/{lane}/{since}"
        if _still_open(conn, "seq_gap", "gap", key):
            continue
        anomaly(
            conn,
            "seq_gap",
            site=site,
            at_ms=now_ms,
            gap=key,
            missing_from=acked + 1,
            waiting_up_to=max_seen,
            since_ms=since,
        )
        raised += 1
    return raised
