"""One site: its state and versions, its terminals (state and last tap), today's totals and
its most recent records — live over ``/live/sites/{site}`` — and, for technicians and
admins, the way to its logs.

Records are read newest first along the primary key (site, epoch, lane, seq) of the site's
current epoch, so the page costs the same on the first day and after a million records.
Today's totals count the records received since the start of the site's business day (a
binary search on seq finds the first), by the time each record says it happened; they are
what the terminals reported, for watching the day — daily clearing is the books.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from starlette.responses import Response

from central import finance
from central.core.clearing import SiteDay, business_day, day_window
from central.web import i18n, live
from central.web.overview import LAG_CAP, SiteRow, latest_health, site_row
from central.web.page import PageContext

#: Records shown, newest first.
RECENT = 30
#: Records per lane looked through for each terminal's last tap.
TAP_WINDOW = 500
#: Records per lane counted into today's totals at most.
TODAY_CAP = 200_000
#: Who sees the "tail logs" entry point.
LOG_ROLES = frozenset({"admin", "technician"})
LANES = (0, 1)
TAPS = frozenset({"door.access", "attendance.punch", "pos.purchase", "ticket.use"})


class _Seen(msgspec.Struct, frozen=True):
    """The fields of a record the page shows (any record kind decodes into it)."""

    kind: str = "dead"
    at: datetime | None = None
    terminal: str | None = None
    card_uid: str | None = None
    offline: bool = False
    granted: bool | None = None
    accepted: bool | None = None
    approved: bool | None = None
    reason: str | None = None
    amount: int | None = None
    event: str | None = None
    action: str | None = None


_seen = msgspec.json.Decoder(_Seen)


@dataclass(frozen=True, slots=True)
class RecordRow:
    """A record as the page lists it."""

    id: str
    kind: str
    at_ms: int | None
    terminal: str | None
    card_uid: str | None
    ok: bool | None
    reason: str | None
    amount_fen: int | None
    offline: bool
    note: str | None


@dataclass(frozen=True, slots=True)
class TerminalRow:
    """A terminal registered at the site, as its edge last reported it."""

    id: str
    name: str
    kind: str
    online: bool | None
    last_seen_ms: int | None
    last_tap: RecordRow | None


@dataclass(frozen=True, slots=True)
class Today:
    """What the site's terminals reported for its business day so far."""

    day: str
    zone: str
    sales_fen: int = 0
    sales: int = 0
    recharge_fen: int = 0
    recharges: int = 0
    door_granted: int = 0
    door_denied: int = 0
    punches: int = 0


@dataclass(frozen=True, slots=True)
class SiteView:
    """Everything the site page shows."""

    site: SiteRow
    epoch: int | None
    zone: str
    terminals: list[TerminalRow]
    records: list[RecordRow]
    today: Today


def site_view(conn: sqlite3.Connection, site: str, now_ms: int) -> SiteView | None:
    """The page's data (runs in a store operation); None if there is no such site."""
    row = site_row(conn, site)
    if row is None:
        return None
    config = finance.clearing_config(conn, site)
    epoch_row = conn.execute("SELECT max(epoch) FROM lanes WHERE site = ?", (site,)).fetchone()
    epoch = None if epoch_row[0] is None else int(epoch_row[0])
    recent: list[RecordRow] = []
    if epoch is not None:
        for lane in LANES:
            recent.extend(_newest(conn, site, epoch, lane, TAP_WINDOW))
    recent.sort(key=lambda r: r.at_ms or 0, reverse=True)
    return SiteView(
        site=row,
        epoch=epoch,
        zone=config.timezone,
        terminals=_terminal_rows(conn, site, recent),
        records=recent[:RECENT],
        today=_today(conn, site, epoch, config, now_ms),
    )


def fingerprint_of(site: str) -> live.Fingerprint:
    """What moves when anything the page shows does: the site's row, its lanes, the heads."""

    def mark(conn: sqlite3.Connection) -> object:
        state = conn.execute(
            "SELECT online, last_seen_ms, state, feed_version, blacklist_version, removed,"
            " outbox_depth FROM sites WHERE id = ?",
            (site,),
        ).fetchone()
        lanes = conn.execute(
            "SELECT epoch, lane, acked_seq, max_seen_seq FROM lanes WHERE site = ?"
            " ORDER BY epoch, lane",
            (site,),
        ).fetchall()
        heads = conn.execute(
            "SELECT (SELECT max(version) FROM changes), (SELECT max(version) FROM blacklist_log)"
        ).fetchone()
        return (state and tuple(state), tuple(lanes), tuple(heads))

    return mark


#: The parts of the page the live stream replaces: element id -> partial template.
LIVE_PARTS = {
    "site-state": "_site_state.html",
    "site-terminals": "_site_terminals.html",
    "site-records": "_site_records.html",
}


async def show(ctx: PageContext) -> Response:
    """GET /sites/{site}"""
    return await render(ctx, ctx.request.path_params["site"])


async def render(ctx: PageContext, site: str, **extra: Any) -> Response:
    """The site page (``extra``: e.g. the outcome of a remote door open)."""
    from central.web.doors import DOOR_ROLES  # noqa: PLC0415 - doors renders this page

    values = await _values(ctx, site, ctx.now_ms)
    if values is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("site.not_found", id=site))
    role = ctx.user.role if ctx.user else None
    doors = await ctx.web.store.run(lambda conn: _doors(conn, site))
    return ctx.render(
        "site.html",
        live_url=f"/live/sites/{site}",
        may_tail_logs=role in LOG_ROLES,
        may_open_doors=role in DOOR_ROLES,
        doors=doors,
        **values,
        **{"door_result": None, **extra},
    )


def _doors(conn: sqlite3.Connection, site: str) -> list[dict[str, Any]]:
    """The site's doors (master data), by id."""
    return [
        msgspec.json.decode(data)
        for (data,) in conn.execute(
            "SELECT data FROM master WHERE scope = ? AND entity = 'door' ORDER BY key", (site,)
        )
    ]


async def stream(ctx: PageContext) -> Response:
    """GET /live/sites/{site}: the state, terminals and records, again when they change."""
    site = ctx.request.path_params["site"]
    if await _values(ctx, site, ctx.now_ms) is None:
        return ctx.error(404, ctx.t("error.404.title"), ctx.t("site.not_found", id=site))

    async def render() -> dict[str, str]:
        values = await _values(ctx, site, int(ctx.web.config.clock() * 1000))
        return {} if values is None else live.render_parts(ctx, LIVE_PARTS, **values)

    return live.stream(ctx, fingerprint_of(site), render)


async def _values(ctx: PageContext, site: str, now_ms: int) -> dict[str, Any] | None:
    view = await ctx.web.store.run(lambda conn: site_view(conn, site, now_ms))
    if view is None:
        return None
    zone = _zone(view.zone)
    return {
        "title": site,
        "view": view,
        "now_ms": now_ms,
        "lag_cap": LAG_CAP,
        # Times at a site are shown in the site's zone (the footer says which).
        "at_site": lambda value: i18n.local_time(value, zone),
        "zone": zone.key,
    }


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _newest(
    conn: sqlite3.Connection, site: str, epoch: int, lane: int, limit: int
) -> list[RecordRow]:
    rows = conn.execute(
        "SELECT id, kind, payload FROM records WHERE site = ? AND epoch = ? AND lane = ?"
        " ORDER BY seq DESC LIMIT ?",
        (site, epoch, lane, limit),
    ).fetchall()
    return [_record_row(str(rid), str(kind), payload) for rid, kind, payload in rows]


def _record_row(rid: str, kind: str, payload: bytes) -> RecordRow:
    try:
        seen = _seen.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        seen = _Seen()
    ok = next((v for v in (seen.granted, seen.accepted, seen.approved) if v is not None), None)
    if kind == "dead":
        ok = False
    return RecordRow(
        id=rid,
        kind=kind,
        at_ms=None if seen.at is None else int(seen.at.timestamp() * 1000),
        terminal=seen.terminal,
        card_uid=seen.card_uid,
        ok=ok,
        reason=seen.reason if ok is False else None,
        amount_fen=seen.amount,
        offline=seen.offline,
        note=seen.event or seen.action,
    )


def _terminal_rows(
    conn: sqlite3.Connection, site: str, recent: list[RecordRow]
) -> list[TerminalRow]:
    reported = _reported_terminals(conn, site)
    last_tap: dict[str, RecordRow] = {}
    for record in recent:  # newest first
        if record.kind in TAPS and record.terminal and record.terminal not in last_tap:
            last_tap[record.terminal] = record
    registered = conn.execute(
        "SELECT key, json_extract(data, '$.kind'), json_extract(data, '$.name') FROM master"
        " WHERE scope = ? AND entity = 'terminal' ORDER BY key",
        (site,),
    ).fetchall()
    rows = []
    for tid, kind, name in registered:
        online, seen_ms = reported.get(tid, (None, None))
        rows.append(TerminalRow(tid, name or "", kind or "", online, seen_ms, last_tap.get(tid)))
    return rows


def _reported_terminals(conn: sqlite3.Connection, site: str) -> dict[str, tuple[bool, int | None]]:
    # The terminals in the site's last health report, else in its last birth message.
    health = latest_health(conn).get(site)
    if health is not None:
        return {tid: (online, None) for tid, (online,) in health[0].items()}
    row = conn.execute("SELECT state FROM sites WHERE id = ?", (site,)).fetchone()
    if row is None or not row[0]:
        return {}
    try:
        state = msgspec.json.decode(row[0], type=_Birth)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}
    return {
        t.id: (t.online, None if t.last_seen is None else int(t.last_seen.timestamp() * 1000))
        for t in state.terminals
    }


class _Terminal(msgspec.Struct, frozen=True):
    id: str
    online: bool = False
    last_seen: datetime | None = None


class _Birth(msgspec.Struct, frozen=True):
    terminals: list[_Terminal] = []


def _today(
    conn: sqlite3.Connection,
    site: str,
    epoch: int | None,
    config: SiteDay,
    now_ms: int,
) -> Today:
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    day = business_day(now, config.timezone, config.cutoff_hour)
    start, end = day_window(day, config.timezone, config.cutoff_hour)
    counts: dict[str, int] = {}
    if epoch is not None:
        for lane in LANES:
            first = _first_seq_received_since(
                conn, site, epoch, lane, int(start.timestamp() * 1000)
            )
            rows = conn.execute(
                "SELECT payload FROM records WHERE site = ? AND epoch = ? AND lane = ?"
                " AND seq >= ? ORDER BY seq LIMIT ?",
                (site, epoch, lane, first, TODAY_CAP),
            )
            for (payload,) in rows:
                _count(counts, payload, start, end)
    return Today(day=day.isoformat(), zone=config.timezone, **counts)


def _count(counts: dict[str, int], payload: bytes, start: datetime, end: datetime) -> None:
    try:
        seen = _seen.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return
    if seen.at is None or not start <= seen.at < end:
        return

    def add(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    if seen.kind == "pos.purchase" and seen.approved:
        add("sales")
        add("sales_fen", seen.amount or 0)
    elif seen.kind == "recharge.commit":
        add("recharges")
        add("recharge_fen", seen.amount or 0)
    elif seen.kind == "door.access":
        add("door_granted" if seen.granted else "door_denied")
    elif seen.kind == "attendance.punch" and seen.accepted:
        add("punches")


def _first_seq_received_since(
    conn: sqlite3.Connection, site: str, epoch: int, lane: int, since_ms: int
) -> int:
    """The lowest seq of the lane received at or after ``since_ms`` (records arrive in seq
    order, give or take a resend: a binary search over the primary key)."""
    bounds = conn.execute(
        "SELECT min(seq), max(seq) FROM records WHERE site = ? AND epoch = ? AND lane = ?",
        (site, epoch, lane),
    ).fetchone()
    if bounds[0] is None:
        return 0
    lo, hi = int(bounds[0]), int(bounds[1]) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        found = conn.execute(
            "SELECT seq, received_ms FROM records WHERE site = ? AND epoch = ? AND lane = ?"
            " AND seq >= ? ORDER BY seq LIMIT 1",
            (site, epoch, lane, mid),
        ).fetchone()
        if found is None or found[1] >= since_ms:
            hi = mid
        else:
            lo = int(found[0]) + 1
    return lo
