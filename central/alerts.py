"""Central's alerts: gathers each site's facts from the database, runs the pure rules
(:mod:`central.core.alerts`), and keeps the ``alerts`` table in step — opening an alert once
its condition has held for its detection time, resolving it (``resolved_by = 'auto'``) when
the condition clears. People acknowledge alerts (who and when are kept, and audited).

Where each fact comes from:

- *online* — the site's retained birth/death (``sites.online``);
- *terminals*, *clock skew*, *disk free* — the site's latest ``up/health`` (``site_health``,
  written by :func:`record_health`); before any health report, the birth's terminal list;
- *unsynced records* — the birth's outbox (depth, oldest age, watermarks), aged since the
  birth, until central's watermarks show that many records arrived;
- *feed / blacklist lag* — for an online site, the newest version central reported or sent
  to it (``sent_feed``; blacklist deltas are broadcast once published) against the head;
- *dead letters* — rows in ``dead_letters`` within the window.

The service evaluates every ``AlertSettings.interval_s`` and posts each opened and resolved
alert to the optional webhook (JSON, with a timeout; a failure is logged and counted, and
never holds up ingest, which runs in other tasks).
"""

from __future__ import annotations

import asyncio
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from central import master
from central.core import alerts as rules
from central.core.effects import AuditEntry
from central.operations import write_audit
from central.queries import ConflictError, NotFoundError
from protocol.messages import Health, TerminalHealth

_json = msgspec.json.Encoder()
_dict = msgspec.json.Decoder(dict[str, Any])
#: Feed lag is counted up to this many changes.
LAG_CAP = 10_000
LIST_LIMIT = 200


@dataclass(frozen=True, kw_only=True)
class AlertSettings:
    """How central raises alerts (``onecard-central serve`` options)."""

    limits: rules.Thresholds = field(default_factory=rules.Thresholds)
    #: How often the rules run.
    interval_s: float = 10.0
    #: POST each opened and resolved alert here as JSON (None: no webhook).
    webhook_url: str | None = None
    webhook_timeout_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class Changes:
    """What one evaluation did: alerts opened and resolved (as :func:`alert_list` rows)."""

    opened: list[dict[str, Any]]
    resolved: list[dict[str, Any]]


# -- health reports -----------------------------------------------------------------------------


def record_health(conn: sqlite3.Connection, site: str, health: Health, *, received_ms: int) -> None:
    """Keep a site's latest health report (the caller checked ``health.site == site``)."""
    terminals = [_terminal_health(t) for t in health.terminals]
    conn.execute(
        "INSERT INTO site_health (site, received_ms, at_ms, terminals, outbox_depth,"
        " disk_free_bytes, disk_state) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site) DO UPDATE"
        " SET received_ms = excluded.received_ms, at_ms = excluded.at_ms,"
        " terminals = excluded.terminals, outbox_depth = excluded.outbox_depth,"
        " disk_free_bytes = excluded.disk_free_bytes, disk_state = excluded.disk_state",
        (
            site,
            received_ms,
            int(health.at.timestamp() * 1000),
            _json.encode(terminals).decode(),
            health.outbox_depth,
            health.disk_free_bytes,
            health.disk_state,
        ),
    )
    conn.execute("UPDATE sites SET last_seen_ms = ? WHERE id = ?", (received_ms, site))
    if health.feed_version is not None and health.blacklist_version is not None:
        # what the edge has applied now (its birth said only what it had at connect)
        conn.execute(
            "UPDATE sites SET feed_version = ?, blacklist_version = ? WHERE id = ?",
            (health.feed_version, health.blacklist_version, site),
        )


def _terminal_health(t: TerminalHealth) -> dict[str, Any]:
    """What is kept of a terminal's health (the lag figures only for terminals that decide
    locally, so the others' rows stay as they were)."""
    out: dict[str, Any] = {"id": t.id, "kind": t.kind, "online": t.online}
    if t.lists or t.records_missing:
        out.update(
            lists_behind=t.lists_behind,
            lists_behind_s=t.lists_behind_s,
            records_missing=t.records_missing,
        )
    return out


# -- facts --------------------------------------------------------------------------------------


def site_facts(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    sent_feed: Mapping[str, int],
    limits: rules.Thresholds,
) -> tuple[list[rules.SiteFacts], int]:
    """Every registered site's facts, and HQ's own dead letters within the window."""
    since = now_ms - int(limits.dead_letter_window_s * 1000)
    dead = dict(
        conn.execute(
            "SELECT coalesce(site, ''), count(*) FROM dead_letters WHERE at_ms > ? GROUP BY 1",
            (since,),
        ).fetchall()
    )
    health = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT site, received_ms, at_ms, terminals, disk_free_bytes, disk_state"
            " FROM site_health"
        )
    }
    doors: dict[str, list[rules.DoorEventFact]] = {}
    for site_id, door, event, count, last_ms in conn.execute(
        "SELECT site, door, event, count(*), max(at_ms) FROM door_events WHERE at_ms > ?"
        " GROUP BY site, door, event ORDER BY site, door, event",
        (now_ms - int(limits.door_event_window_s * 1000),),
    ):
        doors.setdefault(site_id, []).append(rules.DoorEventFact(door, event, count, last_ms))
    blacklist_head = master.blacklist_version(conn)
    published = int(
        conn.execute(
            "SELECT coalesce(max(version), 0) FROM blacklist_log WHERE published = 1"
        ).fetchone()[0]
    )
    out = []
    rows = conn.execute(
        "SELECT id, online, last_seen_ms, state, epoch, feed_version, blacklist_version"
        " FROM sites WHERE removed = 0 ORDER BY id"
    ).fetchall()
    for sid, online, seen, state, epoch, feed, black in rows:
        birth = _birth(state)
        terminals = None
        skew = disk = disk_state = None
        if sid in health:
            received, at_ms, terms, disk, disk_state = health[sid]
            terminals = _terminals(_decode_list(terms))
            skew = (at_ms - received) / 1000
        elif birth is not None:
            terminals = _terminals(birth.get("terminals"))
        feed_known = max(int(feed), sent_feed.get(sid, 0))
        black_known = max(int(black), published) if online else int(black)
        out.append(
            rules.SiteFacts(
                site=sid,
                online=bool(online),
                ever_seen=seen is not None,
                terminals=terminals,
                unsynced_age_s=_unsynced_age(conn, sid, epoch, birth, now_ms),
                feed_behind=_feed_behind(conn, sid, feed_known) if online else 0,
                blacklist_behind=max(0, blacklist_head - black_known),
                clock_skew_s=skew,
                disk_free_bytes=disk,
                disk_state=disk_state,
                dead_letters=int(dead.get(sid, 0)),
                door_events=tuple(doors.get(sid, ())),
            )
        )
    return out, int(dead.get("", 0))


def _birth(state: bytes | str | None) -> dict[str, Any] | None:
    if not state:
        return None
    try:
        return _dict.decode(state)
    except msgspec.DecodeError:
        return None


def _decode_list(raw: str) -> list[Any]:
    value = msgspec.json.decode(raw)
    return value if isinstance(value, list) else []


def _terminals(raw: Any) -> tuple[rules.TerminalFact, ...] | None:
    if not isinstance(raw, list):
        return None
    return tuple(
        rules.TerminalFact(
            str(t["id"]),
            str(t.get("kind", "")),
            t.get("online") is True,
            lists_behind=int(t.get("lists_behind") or 0),
            lists_behind_s=t.get("lists_behind_s"),
            records_missing=int(t.get("records_missing") or 0),
        )
        for t in raw
        if isinstance(t, dict) and "id" in t
    )


def _unsynced_age(
    conn: sqlite3.Connection,
    site: str,
    epoch: int | None,
    birth: dict[str, Any] | None,
    now_ms: int,
) -> float | None:
    """The oldest record the birth said was waiting, aged since the birth — until central's
    watermarks have moved past as many records as were waiting."""
    if birth is None or epoch is None:
        return None
    depth, age = birth.get("outbox_depth") or 0, birth.get("outbox_oldest_age_s")
    if not depth or age is None:
        return None
    acked_then = sum(int(a) for a in birth.get("acked", []))
    acked_now = int(
        conn.execute(
            "SELECT coalesce(sum(acked_seq), 0) FROM lanes WHERE site = ? AND epoch = ?",
            (site, epoch),
        ).fetchone()[0]
    )
    if acked_now - acked_then >= depth:
        return None
    try:
        at = datetime.fromisoformat(str(birth["at"]))
    except (KeyError, ValueError):
        return None
    return float(age) + max(0.0, now_ms / 1000 - at.timestamp())


def _feed_behind(conn: sqlite3.Connection, site: str, version: int) -> int:
    row = conn.execute(
        "SELECT count(*) FROM (SELECT 1 FROM changes WHERE scope IN ('', ?) AND version > ?"
        " LIMIT ?)",
        (site, version, LAG_CAP),
    ).fetchone()
    return int(row[0])


# -- evaluation ---------------------------------------------------------------------------------


def evaluate(
    conn: sqlite3.Connection,
    *,
    now_ms: int,
    limits: rules.Thresholds,
    sent_feed: Mapping[str, int] | None = None,
) -> Changes:
    """Run the rules over every site and apply the plan (one transaction: the caller's)."""
    sites, hq_dead = site_facts(conn, now_ms=now_ms, sent_feed=sent_feed or {}, limits=limits)
    current = rules.conditions(sites, hq_dead_letters=hq_dead, limits=limits)
    active = dict(conn.execute("SELECT key, id FROM alerts WHERE state != 'resolved'").fetchall())
    pending = dict(conn.execute("SELECT key, since_ms FROM alert_pending").fetchall())
    decided = rules.plan(current, active=active, pending=pending, now_ms=now_ms)
    conn.execute("DELETE FROM alert_pending")
    conn.executemany(
        "INSERT INTO alert_pending (key, since_ms) VALUES (?, ?)", list(decided.pending.items())
    )
    opened_ids = []
    for cond, since in decided.open:
        cursor = conn.execute(
            "INSERT INTO alerts (key, kind, severity, site, subject, detail, since_ms, opened_ms)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                cond.key,
                cond.kind,
                cond.severity,
                cond.site,
                cond.subject,
                _json.encode(cond.detail).decode(),
                since,
                now_ms,
            ),
        )
        opened_ids.append(int(cursor.lastrowid or 0))
    resolved_ids = [int(active[key]) for key in decided.resolve]
    conn.executemany(
        "UPDATE alerts SET state = 'resolved', resolved_by = 'auto', resolved_ms = ? WHERE id = ?",
        [(now_ms, i) for i in resolved_ids],
    )
    return Changes(
        opened=[alert(conn, i) for i in opened_ids], resolved=[alert(conn, i) for i in resolved_ids]
    )


# -- reading and acknowledging --------------------------------------------------------------------

_COLUMNS = (
    "id, key, kind, severity, site, subject, detail, state, since_ms, opened_ms, acked_by,"
    " acked_ms, note, resolved_by, resolved_ms"
)
_ORDER = "CASE severity WHEN 'emergency' THEN 0 WHEN 'important' THEN 1 ELSE 2 END, opened_ms DESC"


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    names = [c.strip() for c in _COLUMNS.split(",")]
    out = dict(zip(names, row, strict=True))
    out["detail"] = _dict.decode(out["detail"])
    return out


def alert(conn: sqlite3.Connection, alert_id: int) -> dict[str, Any]:
    """One alert, or :class:`NotFoundError`."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = ?", (alert_id,)).fetchone()  # noqa: S608 - constant columns
    if row is None:
        raise NotFoundError(f"no alert {alert_id}")
    return _row(row)


def alert_list(
    conn: sqlite3.Connection,
    *,
    state: str | None = None,
    severity: str | None = None,
    active: bool = False,
    limit: int = LIST_LIMIT,
) -> list[dict[str, Any]]:
    """Alerts, most severe and newest first; ``active``: only those not resolved."""
    where, args = [], []
    if active:
        where.append("state != 'resolved'")
    if state:
        where.append("state = ?")
        args.append(state)
    if severity:
        where.append("severity = ?")
        args.append(severity)
    sql = f"SELECT {_COLUMNS} FROM alerts"  # noqa: S608 - constant columns, bound values
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = conn.execute(f"{sql} ORDER BY {_ORDER} LIMIT ?", (*args, limit)).fetchall()
    return [_row(r) for r in rows]


def active_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Alerts not resolved, per severity (every severity present, 0 if none)."""
    counts: dict[str, int] = dict.fromkeys(rules.SEVERITIES, 0)
    for severity, n in conn.execute(
        "SELECT severity, count(*) FROM alerts WHERE state != 'resolved' GROUP BY severity"
    ):
        counts[severity] = int(n)
    return counts


def acknowledge(
    conn: sqlite3.Connection,
    alert_id: int,
    *,
    operator: str,
    source: str,
    at_ms: int,
    note: str = "",
    role: str | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """Someone is on it: open → acknowledged, with who and when (and in the audit log).
    An alert already acknowledged or resolved is a :class:`ConflictError`."""
    current = alert(conn, alert_id)
    if current["state"] != "open":
        raise ConflictError(
            f"alert {alert_id} is {current['state']}; only an open alert can be acknowledged"
        )
    conn.execute(
        "UPDATE alerts SET state = 'acknowledged', acked_by = ?, acked_ms = ?, note = ?"
        " WHERE id = ?",
        (operator, at_ms, note, alert_id),
    )
    write_audit(
        conn,
        AuditEntry(
            request_id=f"alert:{alert_id}:acknowledge",
            operator=operator,
            source=source,
            action="alert.acknowledge",
            target=f"alert:{alert_id}",
            at=datetime.fromtimestamp(at_ms / 1000, UTC),
            before={"state": "open"},
            after={"state": "acknowledged"},
            note=note,
        ),
        role=role,
        ip=ip,
    )
    return alert(conn, alert_id)


# -- the webhook ----------------------------------------------------------------------------------


def webhook_payload(event: str, row: dict[str, Any]) -> bytes:
    """The JSON body posted for an ``opened`` or ``resolved`` alert."""
    body = {
        "event": event,
        "alert": {**row, "response": rules.RESPONSE.get(row["severity"], "")},
    }
    return _json.encode(body)


async def post_webhook(url: str, body: bytes, *, timeout_s: float) -> str | None:
    """POST ``body``; None on a 2xx answer, else what went wrong (never raises)."""

    def post() -> str | None:
        request = urllib.request.Request(  # noqa: S310 - the operator's configured http(s) URL
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
                status = int(reply.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(exc)
        return None if 200 <= status < 300 else f"HTTP {status}"

    try:
        async with asyncio.timeout(timeout_s + 1):
            return await asyncio.to_thread(post)
    except TimeoutError:
        return f"no answer within {timeout_s} s"
